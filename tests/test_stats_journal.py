"""The stats journal (`dataplane.stats_journal`) and its replay by the stats batcher,
against the real Redis fixture: records appended and read back in order, a torn last
record (a write cut short by a kill) ignored, journals of dead workers claimed by one
worker only and replayed exactly once, private modes, and the bound."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import redis.asyncio as aioredis

from control.contract import rediskeys
from dataplane import spool, stats_journal
from dataplane.stats_batcher import StatsBatcher
from dataplane.stats_journal import COUNT, EVENT, StatsJournal, read_segment
from dataplane.stats_journal_recovery import resolve_orphans, spool_check
from tests.dataplane_support import logged_events

SERVER, POOL, IP = 5, 7, "192.0.2.1"


async def _sent(client, server: int = SERVER) -> int:
    return int(await client.hget(rediskeys.pool_stats_key(server, POOL), "sent") or 0)


def test_records_are_read_back_in_order_and_a_torn_last_record_is_ignored(tmp_path):
    journal = StatsJournal(tmp_path / "j")
    journal.open()
    assert journal.append([COUNT, "sent", 60, POOL, IP, 2])
    assert journal.append([EVENT, "m1", '{"n": 1}'])
    assert journal.append([COUNT, "delivered", 60, POOL, IP, 1])
    journal.seal()
    segment = journal.oldest()
    assert (segment.counts, segment.events) == (3, 1)
    with open(segment.path, "ab") as torn:  # a kill in the middle of the next write
        torn.write(stats_journal.encode([COUNT, "sent", 60, POOL, IP, 5])[:-3])
    records, summary = read_segment(segment.path)
    assert records.torn and summary.counts == 3
    assert records.counts == [("sent", 60, POOL, IP, 2), ("delivered", 60, POOL, IP, 1)]
    assert records.events == [("m1", '{"n": 1}')]
    # A damaged frame ends the segment too: nothing after it can be trusted.
    data = bytearray(segment.path.read_bytes())
    data[10] ^= 0xFF
    segment.path.write_bytes(bytes(data))
    assert read_segment(segment.path)[0].counts == []
    journal.acknowledge(segment)
    assert journal.empty and not segment.path.exists()
    journal.close()


def test_the_journal_is_private_and_a_clean_empty_close_leaves_nothing(tmp_path):
    journal = StatsJournal(tmp_path / "j")
    journal.open()
    journal.append([COUNT, "sent", 60, POOL, IP, 1])
    assert stat.S_IMODE(os.stat(tmp_path / "j").st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "j").iterdir()} == {0o600}
    journal.seal()
    journal.acknowledge(journal.oldest())
    journal.close()
    assert list((tmp_path / "j").iterdir()) == []


async def test_segments_apply_once_however_often_replayed(tmp_path, redis_url):
    client = aioredis.Redis.from_url(redis_url)
    batcher = StatsBatcher(client, server_id=SERVER, journal_dir=tmp_path / "j")
    try:
        await client.delete(rediskeys.pool_stats_key(SERVER, POOL))
        for _ in range(3):
            batcher.count_sent(POOL, IP)
        batcher.event("m-once", '{"outcome": "delivered"}')
        batcher.journal.seal()
        segment = batcher.journal.oldest()
        kept = segment.path.read_bytes()
        assert await batcher.flush() is True
        for _ in range(2):  # a crash between the apply and the delete, replayed twice
            segment.path.write_bytes(kept)
            await batcher.apply_segment(segment)
        assert await _sent(client) == 3
        assert len(await logged_events(client, SERVER, "m-once")) == 1
    finally:
        await batcher.close()
        await client.aclose()


_DYING_WORKER = textwrap.dedent("""
    import sys, time
    from dataplane.stats_journal import StatsJournal
    journal = StatsJournal(sys.argv[1], segment_max_items=4)
    journal.open()
    for n in range(10):
        journal.append(["c", "sent", 60, 7, "192.0.2.1", 1])
        journal.append(["e", f"orphan-{n}", '{"n": %d}' % n])
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.mark.slow
async def test_a_dead_workers_journal_is_claimed_by_one_worker_and_replayed_once(tmp_path, redis_url):
    directory = tmp_path / "j"
    dying = subprocess.Popen([sys.executable, "-c", _DYING_WORKER, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert dying.stdout.readline().strip() == "ready"
        client = aioredis.Redis.from_url(redis_url)
        one = StatsBatcher(client, server_id=SERVER, journal_dir=directory)
        two = StatsBatcher(client, server_id=SERVER, journal_dir=directory)
        try:
            await client.delete(rediskeys.pool_stats_key(SERVER, POOL))
            assert one.journal.claim_orphans() == 0  # its worker is alive: its lock is held
            os.kill(dying.pid, signal.SIGKILL)
            dying.wait()
            assert one.journal.claim_orphans() == 0  # dead, but not resolved by the supervisor yet
            resolve_orphans(directory, spool_check(tmp_path / "spool"), pid=dying.pid)
            claimed = [one.journal.claim_orphans(), two.journal.claim_orphans()]
            assert sorted(claimed) == [0, 3]  # 10 events, 4 a segment: 3 segments, to one worker only
            winner = one if claimed[0] else two
            assert (winner.pending, winner.pending_events) == (10, 10)
            while not await winner.flush():
                pass
            assert await _sent(client) == 10
            assert all([len(await logged_events(client, SERVER, f"orphan-{n}")) == 1 for n in range(10)])
            # Applied and deleted, lock file last: nothing is left to claim again.
            assert sorted(p.name.endswith(".lock") for p in directory.iterdir()) == [True, True]
            assert one.journal.claim_orphans() + two.journal.claim_orphans() == 0
        finally:
            await one.close()
            await two.close()
            await client.aclose()
    finally:
        if dying.poll() is None:
            dying.kill()
            dying.wait()
        dying.stdout.close()


async def test_a_stop_with_redis_down_leaves_the_journal_and_the_next_start_replays_it(tmp_path, redis_url, caplog):
    directory = tmp_path / "j"
    down = aioredis.Redis.from_url(f"unix://{tmp_path}/no-redis.sock")
    stopping = StatsBatcher(down, server_id=SERVER, journal_dir=directory)
    for _ in range(4):
        stopping.count_sent(POOL, IP)
    await stopping.close(timeout=0.3)
    await down.aclose()
    assert "4 stats counts, 0 events, 0 message index entries and 0 suppression-list entries left in the " \
           "stats journal" in caplog.text

    # What the supervisor does before it starts workers: the journal is closed, then claimable.
    assert resolve_orphans(directory, spool_check(tmp_path / "spool")) == 0
    client = aioredis.Redis.from_url(redis_url)
    started = StatsBatcher(client, server_id=SERVER, journal_dir=directory)
    try:
        await client.delete(rediskeys.pool_stats_key(SERVER, POOL))
        deadline = time.monotonic() + 10
        while not await started.flush() and time.monotonic() < deadline:
            pass
        assert await _sent(client) == 4
        assert started.journal.empty
    finally:
        await started.close()
        await client.aclose()


def test_past_its_bound_the_journal_refuses_and_says_so(tmp_path, caplog):
    record = [COUNT, "sent", 60, POOL, IP, 1]
    journal = StatsJournal(tmp_path / "j", max_bytes=3 * len(stats_journal.encode(record)))
    journal.open()
    assert [journal.append(record) for _ in range(5)] == [True, True, True, False, False]
    assert journal.full and "stats journal" in caplog.text and "is full" in caplog.text
    journal.seal()
    journal.acknowledge(journal.oldest())
    assert not journal.full and journal.append(record)
    journal.seal()
    journal.acknowledge(journal.oldest())
    journal.close()


def test_a_group_counts_once_its_spool_update_happened_and_crossing_a_seal(tmp_path):
    journal = StatsJournal(tmp_path / "j")
    journal.open()
    committed = journal.begin(["q", "m-stored"], [[COUNT, "sent", 60, POOL, IP, 1]])
    aborted = journal.begin(["q", "m-refused"], [[COUNT, "sent", 60, POOL, IP, 10]])
    journal.seal()  # both still open: copied into the next segment, decided there
    journal.end(committed, True)
    journal.end(aborted, False)
    journal.seal()
    first, second = journal.oldest(), list(journal._sealed)[1]
    assert read_segment(first.path)[0].counts == []  # open there: nothing applies
    assert read_segment(second.path)[0].counts == [("sent", 60, POOL, IP, 1)]
    assert journal.counts == 1
    journal.close()


def test_groups_a_dead_worker_left_open_are_decided_from_the_spool(tmp_path):
    spool_dir = tmp_path / "spool"
    spool.prepare(spool_dir)
    spool.record_path(spool_dir, "m-queued").write_bytes(b"stored before the kill")
    directory = tmp_path / "j"
    dead = StatsJournal(directory)
    dead.open()
    dead.begin(["q", "m-queued"], [[COUNT, "sent", 60, POOL, IP, 1]])  # its store landed
    dead.begin(["q", "m-lost"], [[COUNT, "sent", 60, POOL, IP, 10]])  # its store did not
    dead.begin(["r", "m-removed"], [[COUNT, "delivered", 60, POOL, IP, 100]])  # its removal landed
    dead.seal()
    dead.close()  # as a kill leaves it: groups undecided
    claimer = StatsJournal(directory)
    claimer.open()
    assert claimer.claim_orphans() == 0  # undecided: not claimable before the supervisor resolves it
    assert resolve_orphans(directory, spool_check(spool_dir)) == 3
    assert resolve_orphans(directory, spool_check(spool_dir)) == 0  # once
    assert claimer.claim_orphans() == 2
    counts = [c for s in list(claimer._sealed) for c in read_segment(s.path)[0].counts]
    assert sorted(counts) == [("delivered", 60, POOL, IP, 100), ("sent", 60, POOL, IP, 1)]
    claimer.close()
