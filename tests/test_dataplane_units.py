"""In-process tests of the data plane's parts: spool records and recovery, the
group-committed spool writer, AUTH throttling, routing decisions, the stats
batcher against a real Redis, and configuration parsing."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from control.contract import rediskeys
from control.contract.snapshot import IP_PAUSED
from dataplane import spool
from dataplane.__main__ import build_config, build_parser
from dataplane.bridge_auth import check_credentials
from dataplane.config import DataplaneConfig, parse_listen
from dataplane.routing import NoUsableIp, PoolGone, Routing, stamp
from dataplane.stats_batcher import StatsBatcher
from dataplane.stats_script import _APPLY_BATCH
from dataplane.trace_header import rfc5322_date
from tests.dataplane_support import make_bridge, make_pool, make_snapshot
from tests.support import free_port


def _record(message_id: str = "0" * 26, message: bytes = b"Subject: x\r\n\r\nbody\r\n") -> spool.SpoolRecord:
    return spool.SpoolRecord(
        id=message_id, received_ms=1, server_id=1, snapshot_version=3, worker="h:1:0",
        client_address="127.0.0.1", client_helo="client.example", tls=False, auth="auth",
        bridge_id=1, bridge_username="br-x", user_id=3, smtp_id=7, pool="promo-3-1-pool-7",
        ip="192.0.2.1", ip_hostname="out.example", feed_type="newsletter", zone="US-1",
        mail_from="s@example.com", rcpt_tos=("r@example.net",), mail_options=("BODY=8BITMIME",),
        smtputf8=False, message=message,
    )


# --- spool -------------------------------------------------------------------


def test_spool_record_round_trip_and_corruption():
    record = _record()
    data = b"".join(spool.encode_record(record))
    assert spool.decode_record(data) == record
    for damaged in (data[:-1], data + b"x", data[:20] + bytes([data[20] ^ 1]) + data[21:], b"nope" + data[4:]):
        with pytest.raises(spool.SpoolCorrupt):
            spool.decode_record(damaged)


def test_recover_removes_partial_writes_and_quarantines_damage(tmp_path):
    root = tmp_path / "spool"
    spool.prepare(root)
    good = _record("1" * 26)
    (root / "queue" / f"{good.id}.msg").write_bytes(b"".join(spool.encode_record(good)))
    truncated = b"".join(spool.encode_record(_record("2" * 26)))[:-10]
    (root / "queue" / f"{'2' * 26}.msg").write_bytes(truncated)
    (root / "tmp" / "123.abc.tmp").write_bytes(b"partial")
    (root / "tmp" / "456.def.tmp").write_bytes(b"partial")

    assert spool.remove_temp_files(root, 123) == 1
    report = spool.recover(root)
    assert (report.queued, report.removed_partial, report.quarantined) == (1, 1, ("2" * 26,))
    assert os.listdir(root / "tmp") == []
    assert spool.queued_ids(root) == [good.id]
    assert (root / "corrupt" / f"{'2' * 26}.msg").exists()
    assert list(spool.iter_records(root)) == [good]


async def test_spool_store_concurrent_writes_share_fsyncs(tmp_path):
    writer = spool.Spool(tmp_path / "spool")
    writer.open()
    try:
        records = [_record(writer.new_id(), f"Subject: {n}\r\n\r\n".encode()) for n in range(200)]
        await asyncio.gather(*(writer.store(r) for r in records))
    finally:
        writer.close()
    assert len({r.id for r in records}) == 200
    assert spool.queued_ids(tmp_path / "spool") == sorted(r.id for r in records)
    assert os.listdir(tmp_path / "spool" / "tmp") == []
    assert spool.find_record(tmp_path / "spool", records[7].id) == records[7]


# --- AUTH ----------------------------------------------------------------------


def test_check_credentials():
    bridge = make_bridge(1, 7, "good")
    routing = Routing(make_snapshot(1, 1, [make_pool(7, [("192.0.2.1", 1)])], [bridge]))
    assert check_credentials(routing, bridge.username.encode(), b"good") == bridge
    assert check_credentials(routing, bridge.username.encode(), b"bad") is None
    assert check_credentials(routing, b"nobody", b"good") is None
    assert check_credentials(routing, b"\xff", b"good") is None
    assert check_credentials(None, bridge.username.encode(), b"good") is None


# --- routing -------------------------------------------------------------------


def test_routing_picks_stamps_and_binds_trusted_networks():
    pool = make_pool(7, [("192.0.2.1", 1), ("192.0.2.2", 3, IP_PAUSED)], feed_type="newsletter",
                     headers=[("X-Campaign", "c")])
    wide = make_bridge(1, 7, "a", trusted=["10.0.0.0/8", "2001:db8::/32"])
    narrow = make_bridge(2, 7, "b", trusted=["10.1.0.0/16"], feed_type="transactional")
    orphan = make_bridge(3, 99, "c")
    routing = Routing(make_snapshot(1, 4, [pool], [wide, narrow, orphan]))

    route = routing.route(narrow)
    assert (route.address, route.ip_hostname, route.feed_type) == ("192.0.2.1", "out-192-0-2-1.example", "transactional")
    stamped = stamp(b"x-zone: forged\r\nSubject: s\r\n\r\nbody\r\n", route)
    assert stamped == (
        b"x-virtual-mta: promo-3-1-pool-7\r\nx-feedtype: transactional\r\nx-zone: US-1\r\n"
        b"x-serverid: 1\r\nX-Campaign: c\r\nSubject: s\r\n\r\nbody\r\n"
    )
    with pytest.raises(PoolGone):
        routing.route(orphan)
    all_paused = Routing(make_snapshot(1, 5, [replace(pool, ips=pool.ips[1:])], [wide]))
    with pytest.raises(NoUsableIp):
        all_paused.route(wide)

    assert routing.trusted_bridge("10.1.2.3") == narrow  # the longest prefix wins
    assert routing.trusted_bridge("10.2.0.1") == wide
    assert routing.trusted_bridge("::ffff:10.2.0.1") == wide
    assert routing.trusted_bridge("2001:db8::5") == wide
    assert routing.trusted_bridge("192.0.2.1") is None
    assert routing.trusted_bridge("not an address") is None

    assert routing.current_bridge(1, wide.username, wide.secret_hash) == wide
    assert routing.current_bridge(1, wide.username, "sha256$other") is None
    assert routing.current_bridge(9, wide.username, wide.secret_hash) is None


# --- stats ---------------------------------------------------------------------


async def test_stats_batcher_keeps_counts_while_redis_is_down(redis_url):
    down = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5,
                          retry=Retry(NoBackoff(), 0))
    batcher = StatsBatcher(down, server_id=1)
    batcher.count_sent(7, "192.0.2.1")
    batcher.count_sent(7, "192.0.2.1")
    batcher.count_sent(7, "192.0.2.2")
    assert await batcher.flush() is False
    assert batcher.pending == 3
    await down.aclose()

    up = aioredis.Redis.from_url(redis_url)
    try:
        batcher._script = up.register_script(_APPLY_BATCH)  # the same batcher, Redis back
        batcher.count_sent(7, "192.0.2.2")  # counted meanwhile: goes in the next segment
        unsent = batcher.journal.oldest()
        kept = unsent.path.read_bytes()
        assert await batcher.flush() is False  # the failed segment first, under its own id
        assert await batcher.flush() is True
        day, now = rediskeys.DAY, time.time()
        assert await up.hget(rediskeys.pool_stats_key(1, 7), "sent") == b"4"
        assert await up.hget(rediskeys.pool_stats_key(1, 7, day, now), "sent") == b"4"
        assert await up.hget(rediskeys.ip_stats_key(1, "192.0.2.1"), "sent") == b"2"
        assert await up.hget(rediskeys.pool_ip_stats_key(1, 7, "192.0.2.2", day, now), "sent") == b"2"
        assert 0 < await up.ttl(rediskeys.pool_stats_key(1, 7, day, now)) <= rediskeys.STATS_DAY_RETENTION_SECONDS
        assert await up.ttl(rediskeys.pool_stats_key(1, 7)) == -1  # lifetime totals do not expire

        # A retry of a segment Redis already applied (its reply was lost) counts nothing.
        unsent.path.write_bytes(kept)  # (as a crash between the apply and the delete leaves it)
        await batcher.apply_segment(unsent)
        assert await up.hget(rediskeys.pool_stats_key(1, 7), "sent") == b"4"
    finally:
        await up.aclose()


# --- configuration -------------------------------------------------------------


def _config(argv: list[str], env: dict[str, str] | None = None) -> DataplaneConfig:
    args = build_parser(env or {}).parse_args(argv)
    return build_config(args, "redis://127.0.0.1:1/0")


def test_options_from_flags_and_environment(tmp_path):
    env = {
        "POOLMTA_SERVER_ID": "3", "POOLMTA_DATA_DIR": str(tmp_path), "POOLMTA_SMTP_LISTEN": "[::1]:2600",
        "POOLMTA_WORKERS": "4", "POOLMTA_MAX_MESSAGE_SIZE": "10M", "POOLMTA_MAX_RECIPIENTS": "50",
        "POOLMTA_ALLOW_INSECURE_AUTH": "yes", "POOLMTA_INSECURE_AUTH_NETWORKS": "none",
    }
    config = _config([], env)
    assert (config.server_id, config.smtp_host, config.smtp_port, config.workers) == (3, "::1", 2600, 4)
    assert (config.max_message_size, config.max_recipients) == (10 * 1024 * 1024, 50)
    assert config.allow_insecure_auth is True and config.insecure_auth_networks == ()
    assert config.spool_dir == tmp_path / "spool" / "server-3"

    config = _config(["--server-id", "5", "--workers", "2", "--max-message-size", "1048576"], env)
    assert (config.server_id, config.workers, config.max_message_size) == (5, 2, 1048576)

    defaults = _config(["--server-id", "1"])
    assert (defaults.smtp_host, defaults.smtp_port) == ("127.0.0.1", 2525)
    assert defaults.workers == (os.cpu_count() or 1)
    assert defaults.max_message_size == 25 * 1024 * 1024 and defaults.max_recipients == 1000
    assert defaults.insecure_auth_networks == ("127.0.0.0/8", "::1/128")


@pytest.mark.parametrize("argv, message", [
    (["--server-id", "0"], "server id"),
    (["--server-id", "1", "--workers", "0"], "workers"),
    (["--server-id", "1", "--tls-cert", "c.pem"], "--tls-cert and --tls-key"),
    (["--server-id", "1", "--insecure-auth-networks", "10.0.0.0/33"], "not a network"),
    (["--server-id", "1", "--max-recipients", "0"], "recipients"),
])
def test_invalid_options_are_refused_with_a_reason(argv, message):
    with pytest.raises(ValueError, match=message):
        _config(argv)


def test_parse_listen_and_date():
    assert parse_listen("0.0.0.0:25") == ("0.0.0.0", 25)
    assert parse_listen("[2001:db8::1]:587") == ("2001:db8::1", 587)
    for bad in ("2525", "host:", ":25", "host:99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert rfc5322_date(0) == "Thu, 01 Jan 1970 00:00:00 +0000"


def test_bad_environment_values_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser({"POOLMTA_MAX_RECIPIENTS": "many"}).parse_args(["--server-id", "1"])
    assert exited.value.code == 2
    assert "max-recipients" in capsys.readouterr().err


def test_listening_socket_shares_the_port_between_workers():
    from dataplane.worker import listening_socket

    first = listening_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        second = listening_socket("127.0.0.1", port)
        second.close()
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # a process without SO_REUSEPORT cannot take it
        plain.close()
    finally:
        first.close()


def test_spool_inspect_lists_and_shows_records(tmp_path, capsys):
    from dataplane import spool_inspect

    root = tmp_path / "spool" / "server-2"
    spool.prepare(root)
    record = _record("3" * 26, b"Subject: inspected\r\n\r\nbody\r\n")
    spool.record_path(root, record.id).write_bytes(b"".join(spool.encode_record(record)))

    assert spool_inspect.main(["--data-dir", str(tmp_path), "--server-id", "2"], env={}) == 0
    listing = capsys.readouterr().out
    assert record.id in listing and "pool=promo-3-1-pool-7 ip=192.0.2.1" in listing
    assert "1 message(s) queued" in listing

    assert spool_inspect.main(["--server-id", "2", record.id], env={"POOLMTA_DATA_DIR": str(tmp_path)}) == 0
    shown = capsys.readouterr().out
    assert "bridge_username: br-x" in shown and "Subject: inspected" in shown
    assert spool_inspect.main(["--data-dir", str(tmp_path), "--server-id", "2", "f" * 26], env={}) == 1
