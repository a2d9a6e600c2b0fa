"""The spool journal without processes: group commit, state changes, recovery (a
torn tail at every byte of the last record, damage in the middle), reclaim and
compaction, adoption when the worker count changes, the upgrade from the
one-file-per-message format, and a property: whatever was acknowledged and is not
final, and only that, comes back after a crash at any point of a write."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import spool
from dataplane.spool import journal
from dataplane.spool.index import load_writer
from dataplane.spool.worker_spool import COPY_BATCH
from tests.test_dataplane_units import _record

ATTEMPT = {"at_ms": 5, "rcpt": "r@example.net", "outcome": "deferred", "code": 451, "text": "later",
           "ip": "192.0.2.1", "mx": "mx.test", "attempt": 1}


def _segments(root: Path, writer: int = 0) -> list[Path]:
    return [root / spool.JOURNAL_DIR / name for _, _, name in journal.segments(root / spool.JOURNAL_DIR, writer)]


async def _stored(root: Path, count: int, **options) -> list[spool.SpoolRecord]:
    writer = spool.Spool(root, **options)
    writer.open()
    try:
        records = [_record(writer.new_id(), f"Subject: {n}\r\n\r\nbody {n}\r\n".encode()) for n in range(count)]
        for record in records:
            await writer.store(record)
    finally:
        writer.close()
    return records


async def _reopened(root: Path, **options) -> dict[str, spool.SpoolRecord]:
    reader = spool.Spool(root, **options)
    reader.open()
    try:
        ids = await reader.list_ids()
        return dict(zip(ids, await reader.read_many(ids), strict=True))
    finally:
        reader.close()


async def test_state_changes_are_appended_and_read_back_after_a_restart(tmp_path):
    writer = spool.Spool(tmp_path)
    writer.open()
    try:
        kept, done = _record(writer.new_id()), _record(writer.new_id())
        await asyncio.gather(writer.store(kept), writer.store(done))
        await writer.rewrite_attempts(kept.id, (ATTEMPT,))
        await writer.rewrite_held(kept.id, True)
        assert await writer.remove(done.id) is True
        assert await writer.remove(done.id) is False
        with pytest.raises(FileNotFoundError):
            await writer.rewrite_held(done.id, True)
        size = _segments(tmp_path)[0].stat().st_size
    finally:
        writer.close()
    # The body was written once: the state changes are small frames after it.
    assert size < 2 * len(b"".join(journal.message_frame(kept))) + 400
    expected = replace(kept, attempts=(ATTEMPT,), held=True)
    assert await _reopened(tmp_path) == {kept.id: expected}
    assert spool.queued_ids(tmp_path) == [kept.id]
    assert spool.find_record(tmp_path, kept.id) == expected


def test_one_fdatasync_covers_every_frame_submitted_while_the_previous_ran(tmp_path):
    first_round = threading.Event()
    release = threading.Event()
    settled: list[tuple] = []

    def settle(results):
        settled.extend(results)
        if not first_round.is_set():
            first_round.set()
            release.wait()  # the writer is busy: everything submitted now waits for one round

    writer = journal.SegmentWriter(tmp_path, 0, 1, settle)
    writer.submit("first", journal.final_frame("a" * 26))
    assert first_round.wait(10)
    for n in range(20):
        writer.submit(n, journal.final_frame(f"{n:026x}"))
    release.set()
    writer.close()
    assert writer.syncs == 2 and writer.frames_synced == 21
    assert [ticket for ticket, _, _ in settled] == ["first", *range(20)]
    offsets = [location.offset for _, location, _ in settled]
    assert offsets == sorted(offsets) and all(error is None for _, _, error in settled)


async def test_a_torn_tail_is_cut_at_every_byte_of_the_last_record(tmp_path):
    records = await _stored(tmp_path / "whole", 3)
    data = _segments(tmp_path / "whole")[0].read_bytes()
    last = len(b"".join(journal.message_frame(records[-1])))
    good = len(data) - last
    for cut in range(good, len(data)):
        root = tmp_path / f"cut-{cut}"
        spool.prepare(root)
        (root / spool.JOURNAL_DIR / journal.segment_name(0, 1)).write_bytes(data[:cut])
        state, next_seq, report = load_writer(root, 0)
        assert sorted(state.entries) == [r.id for r in records[:2]]
        assert report.torn_bytes == cut - good and next_seq == 2 and report.damaged == []
        assert _segments(root)[0].stat().st_size == good
    # A last record whole but damaged is a torn tail too; zeros a crash left as well.
    for tail in (data[:-1] + bytes([data[-1] ^ 1]), data[:good] + bytes(last)):
        root = tmp_path / f"tail-{len(tail)}-{tail[-1]}"
        spool.prepare(root)
        (root / spool.JOURNAL_DIR / journal.segment_name(0, 1)).write_bytes(tail)
        state, _, report = load_writer(root, 0)
        assert sorted(state.entries) == [r.id for r in records[:2]] and report.damaged == []


async def test_a_damaged_record_in_the_middle_is_quarantined_and_recovery_goes_on(tmp_path):
    records = await _stored(tmp_path, 3)
    path = _segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    first = len(b"".join(journal.message_frame(records[0])))
    data[first + 40] ^= 0xFF  # inside the second record
    path.write_bytes(bytes(data))
    found = await _reopened(tmp_path)
    assert sorted(found) == [records[0].id, records[2].id]
    assert found[records[2].id] == records[2]
    assert os.listdir(tmp_path / spool.CORRUPT_DIR) == [f"{path.name}@{first}.bad"]
    # An impossible length in the middle: the rest is copied aside and cut.
    data = bytearray(path.read_bytes())
    data[first:first + 4] = (2**32 - 1).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    state, _, report = load_writer(tmp_path, 0)
    assert list(state.entries) == [records[0].id] and report.damaged == [f"{path.name}@{first}"]
    assert path.stat().st_size == first


async def test_segments_are_reclaimed_when_every_message_in_them_is_final(tmp_path):
    writer = spool.Spool(tmp_path, segment_bytes=1)  # every round starts a segment
    writer.open()
    try:
        records = [_record(writer.new_id()) for _ in range(5)]
        for record in records:
            await writer.store(record)
        assert len(_segments(tmp_path)) == 5
        for record in records[:4]:
            await writer.remove(record.id)
        await writer.maintained()
        # The segments of the first four went (their ends live in newer ones, which stay
        # while an older segment holds the message they end).
        names = [p.name for p in _segments(tmp_path)]
        assert journal.segment_name(0, 1) not in names and journal.segment_name(0, 5) in names
        await writer.remove(records[4].id)
        await writer.maintained()
        assert len(_segments(tmp_path)) == 1  # only the one being appended to
    finally:
        writer.close()
    assert await _reopened(tmp_path) == {}


async def test_one_stuck_message_is_copied_forward_so_its_segment_can_go(tmp_path):
    writer = spool.Spool(tmp_path, segment_bytes=4096)
    writer.open()
    try:
        stuck = _record(writer.new_id())
        await writer.store(stuck)
        await writer.rewrite_attempts(stuck.id, (ATTEMPT,))
        others = [_record(writer.new_id(), b"x" * 600) for _ in range(20)]
        for record in others:
            await writer.store(record)
        for record in others:
            await writer.remove(record.id)
        await writer.maintained()
        assert journal.segment_name(0, 1) not in [p.name for p in _segments(tmp_path)]
        assert len(_segments(tmp_path)) <= 2
        assert await writer.read(stuck.id) == replace(stuck, attempts=(ATTEMPT,))
    finally:
        writer.close()
    assert await _reopened(tmp_path) == {stuck.id: replace(stuck, attempts=(ATTEMPT,))}


async def test_fewer_workers_adopt_the_messages_of_the_ones_gone(tmp_path):
    by_worker = [await _stored(tmp_path, 4, owner=index, owners=3) for index in range(3)]
    writer = spool.Spool(tmp_path, owner=2, owners=3)
    writer.open()
    try:
        await writer.rewrite_held(by_worker[2][0].id, True)
    finally:
        writer.close()
    report = spool.recover(tmp_path, owners=2)
    assert report.queued == 12 and report.adopted > 0
    assert {w for w, _, _ in journal.segments(tmp_path / spool.JOURNAL_DIR)} == {0, 1}
    found = {}
    for index in range(2):
        mine = await _reopened(tmp_path, owner=index, owners=2)
        assert {spool.owner_of(i, 2) for i in mine} <= {index}
        found.update(mine)
    assert sorted(found) == sorted(r.id for rs in by_worker for r in rs)
    assert found[by_worker[2][0].id].held is True
    assert spool.recover(tmp_path, owners=2).adopted == 0  # nothing left to move


async def test_an_interrupted_adoption_is_finished_without_a_second_copy(tmp_path):
    records = await _stored(tmp_path, 4, owner=1, owners=2)
    spool.recover(tmp_path, owners=1)
    # As a crash after the copy and before the deletion would leave it: the source again.
    source = tmp_path / spool.JOURNAL_DIR / journal.segment_name(1, 1)
    source.write_bytes(b"".join(b"".join(journal.message_frame(r)) for r in records))
    assert spool.recover(tmp_path, owners=1).adopted == 0
    assert not source.exists()
    assert sorted(await _reopened(tmp_path)) == sorted(r.id for r in records)


async def test_an_old_format_spool_is_carried_into_the_journal_and_delivered(tmp_path):
    spool.prepare(tmp_path)
    old = [replace(_record(f"{n:020x}{n:06x}"), attempts=(ATTEMPT,) if n == 1 else ()) for n in range(4)]
    for record in old:
        spool.record_path(tmp_path, record.id).write_bytes(b"".join(spool.encode_record(record)))
    assert spool.queued_ids(tmp_path) == [r.id for r in old]  # readable before the upgrade too
    assert spool.find_record(tmp_path, old[1].id) == old[1]
    report = spool.recover(tmp_path, owners=2)
    assert report.adopted == 4 and os.listdir(tmp_path / spool.QUEUE_DIR) == []
    found = {}
    for index in range(2):
        found.update(await _reopened(tmp_path, owner=index, owners=2))
    assert found == {r.id: r for r in old}


# --- the property: a crash at any point of a write --------------------------------

_OPS = st.lists(st.tuples(st.sampled_from(["store", "attempt", "hold", "release", "remove"]),
                          st.integers(0, 7)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS, cut=st.floats(0, 0.999), torn=st.sampled_from(["store", "attempt", "remove"]),
       segment_bytes=st.sampled_from([300, 2000, 1 << 20]))
def test_recovery_yields_exactly_what_was_acknowledged_and_not_final(tmp_path_factory, ops, cut, torn, segment_bytes):
    root = tmp_path_factory.mktemp("crash")
    expected = asyncio.run(_run_ops(root, ops, segment_bytes))
    # The crash: a write no one was answered for, cut anywhere, at the end of the newest segment.
    victim = next(iter(expected), "f" * 26)
    frame = b"".join({"store": journal.message_frame(_record("e" * 26)),
                      "attempt": journal.attempts_frame(victim, (ATTEMPT, ATTEMPT)),
                      "remove": journal.final_frame(victim)}[torn])
    last = (_segments(root) or [root / spool.JOURNAL_DIR / journal.segment_name(0, 1)])[-1]
    with open(last, "ab") as f:
        f.write(frame[:int(len(frame) * cut)])
    assert spool.recover(root).queued == len(expected)
    assert asyncio.run(_reopened(root, segment_bytes=segment_bytes)) == expected


async def _run_ops(root: Path, ops, segment_bytes: int) -> dict[str, spool.SpoolRecord]:
    writer = spool.Spool(root, segment_bytes=segment_bytes, compact_after=2)
    writer.open()
    model: dict[str, spool.SpoolRecord] = {}
    made: list[str] = []
    try:
        for op, n in ops:
            if op == "store" or not made:
                record = _record(writer.new_id(), b"y" * (n * 40))
                await writer.store(record)
                made.append(record.id)
                model[record.id] = record
                continue
            message_id = made[n % len(made)]
            if message_id not in model:
                continue
            if op == "remove":
                await writer.remove(message_id)
                del model[message_id]
            elif op == "attempt":
                attempts = model[message_id].attempts + (ATTEMPT,)
                await writer.rewrite_attempts(message_id, attempts)
                model[message_id] = replace(model[message_id], attempts=attempts)
            else:
                await writer.rewrite_held(message_id, op == "hold")
                model[message_id] = replace(model[message_id], held=op == "hold")
            await writer.maintained()
    finally:
        writer.close()
    return model


async def test_a_bad_end_of_an_older_segment_is_damage_not_a_torn_tail(tmp_path):
    records = await _stored(tmp_path, 3, segment_bytes=1)  # a segment each
    older = _segments(tmp_path)[1]
    data = older.read_bytes()
    older.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    state, _, report = load_writer(tmp_path, 0)
    assert sorted(state.entries) == [records[0].id, records[2].id]
    assert report.damaged == [f"{older.name}@0"] and report.torn_bytes == 0
    assert (tmp_path / spool.CORRUPT_DIR / f"{older.name}@0.bad").read_bytes() == data[:-1] + bytes([data[-1] ^ 1])


async def test_the_stats_recovery_decides_from_the_journal(tmp_path):
    from dataplane.stats_journal_recovery import spool_check

    writer = spool.Spool(tmp_path)
    writer.open()
    try:
        queued, removed = _record(writer.new_id()), _record(writer.new_id())
        await writer.store(queued)
        await writer.store(removed)
        await writer.rewrite_attempts(queued.id, (ATTEMPT,))
        await writer.remove(removed.id)
        happened = spool_check(tmp_path)
        assert happened(["q", queued.id]) and not happened(["q", "f" * 26])
        assert happened(["r", removed.id]) and not happened(["r", queued.id])
        assert happened(["a", queued.id, 1]) and not happened(["a", queued.id, 2])
    finally:
        writer.close()


async def test_a_segment_of_more_live_records_than_one_batch_is_compacted_whole(tmp_path):
    # A backlog's segment: its live records are copied forward a batch at a time
    # (never all of them in memory at once), and every one of them survives it.
    count = 4 * COPY_BATCH
    frame_bytes = sum(map(len, journal.message_frame(_record("0" * 26))))
    writer = spool.Spool(tmp_path, segment_bytes=count * frame_bytes, compact_after=2)
    writer.open()
    try:
        records = [_record(writer.new_id()) for _ in range(count + 1)]  # the last one seals the first segment
        await asyncio.gather(*(writer.store(record) for record in records))
        first = _segments(tmp_path)[0]
        gone = records[:count - 2 * COPY_BATCH + 10]  # over half: the first segment is compacted
        for record in gone:
            await writer.remove(record.id)
        await writer.maintained()
        assert first not in _segments(tmp_path)
    finally:
        writer.close()
    kept = {record.id: record for record in records[len(gone):]}
    assert await _reopened(tmp_path) == kept
