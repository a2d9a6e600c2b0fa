"""Failed-AUTH throttling shared by the workers of a data plane (issue 11 item 2):
a real `python -m dataplane --workers 2`, a real Redis, smtplib over real sockets.

Before, each worker counted on its own, so behind SO_REUSEPORT the limit was
workers x N: 14 failures over new connections never got the 421. Here the failures
of one client go over new connections deliberately spread over both workers (which
worker holds a connection is read from /proc), and the limit is exactly N."""

from __future__ import annotations

import base64
import os
import smtplib
import socket

import pytest
import redis

from tests.dataplane_support import make_bridge, make_pool, make_snapshot, message, publish
from tests.support import wait_until

SERVER = 1
SECRET = "correct-horse-battery-staple"
BLOCK_AFTER = 6


def _publish(redis_client) -> str:
    bridge = make_bridge(1, 7, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [("192.0.2.1", 1)])], [bridge]))
    return bridge.username


def _plain(username: str, secret: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{username}\0{secret}".encode()).decode()


def _connect(port: int, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0))
    client.ehlo()
    return client


def _socket_inode(client: smtplib.SMTP) -> str:
    """The inode of the server's end of this client's TCP connection (/proc/net/tcp)."""
    here, there = client.sock.getsockname(), client.sock.getpeername()

    def endpoint(address: tuple[str, int]) -> str:
        return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"

    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == endpoint(there) and fields[2] == endpoint(here):
                return fields[9]
    raise AssertionError(f"no server socket for the connection from {here}")


def _holder(client: smtplib.SMTP, worker_pids: dict[int, int]) -> int:
    """The index of the worker process holding this client's connection."""
    wanted = f"socket:[{_socket_inode(client)}]"
    for index, pid in worker_pids.items():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return index
            except OSError:  # closed since the listing
                continue
    raise AssertionError(f"no worker holds {wanted}")


def _connections_on_both_workers(plane, source: str, n: int) -> list[smtplib.SMTP]:
    """`n` new connections from `source`, ordered so that consecutive ones are held by
    different workers as far as the kernel's spread allows (at least one on each)."""
    by_worker: dict[int, list[smtplib.SMTP]] = {0: [], 1: []}
    pids = plane.worker_pids()
    opened = 0
    while min(len(c) for c in by_worker.values()) < n // 2 and opened < 4 * n:
        client = _connect(plane.port, source)
        by_worker[_holder(client, pids)].append(client)
        opened += 1
    assert by_worker[0] and by_worker[1], f"the kernel put {opened} connections on one worker"
    alternating = [c for pair in zip(by_worker[0], by_worker[1]) for c in pair]
    everything = alternating + [c for c in by_worker[0] + by_worker[1] if c not in alternating]
    for client in everything[n:]:
        client.close()
    return everything[:n]


def test_failures_over_new_connections_on_two_workers_get_421_at_exactly_the_limit(redis_client, redis_url,
                                                                                 start_dataplane):
    username = _publish(redis_client)
    plane = start_dataplane(redis_url, SERVER, workers=2, args=[
        "--auth-delay-after", str(BLOCK_AFTER), "--auth-block-after", str(BLOCK_AFTER)])
    assert wait_until(lambda: len(plane.worker_pids()) == 2, 30), plane.log()
    bad = _plain(username, "wrong")

    clients = _connections_on_both_workers(plane, "127.0.0.3", BLOCK_AFTER)
    codes = []
    for client in clients:  # one AUTH per connection, alternating workers
        code, reply = client.docmd("AUTH", bad)
        codes.append(code)
        client.close()
    assert codes == [535] * (BLOCK_AFTER - 1) + [421], plane.log()
    assert b"Too many failed AUTH attempts from 127.0.0.3" in reply

    # Now refused on every worker, with the right secret too, and not counted further.
    for client in _connections_on_both_workers(plane, "127.0.0.3", 2):
        code, _ = client.docmd("AUTH", _plain(username, SECRET))
        assert code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
        client.close()
    assert redis_client.zcard(f"poolmta:{{auth:{SERVER}}}:failures:127.0.0.3") == BLOCK_AFTER

    # Another client address is not affected: it fails once, then sends.
    with _connect(plane.port, "127.0.0.4") as client:
        assert client.docmd("AUTH", bad)[0] == 535
        assert client.docmd("AUTH", _plain(username, SECRET))[0] == 235
        client.sendmail("sender@example.com", ["rcpt@example.net"], message(1))


def test_a_blocked_client_may_try_again_after_the_window(redis_client, redis_url, start_dataplane):
    username = _publish(redis_client)
    plane = start_dataplane(redis_url, SERVER, workers=2, args=[
        "--auth-delay-after", "2", "--auth-block-after", "2", "--auth-fail-window", "2s"])
    bad = _plain(username, "wrong")
    with _connect(plane.port, "127.0.0.5") as client:
        assert client.docmd("AUTH", bad)[0] == 535
        assert client.docmd("AUTH", bad)[0] == 421

    def auth_again() -> int:
        with _connect(plane.port, "127.0.0.5") as client:
            code = client.docmd("AUTH", _plain(username, SECRET))[0]
            if code == 235:
                client.sendmail("sender@example.com", ["rcpt@example.net"], message(2))
            return code == 235

    # Blocked attempts are not counted, so the block ends with the window whatever they do.
    assert wait_until(auth_again, 30, 0.2), plane.log()


def test_redis_down_each_worker_still_throttles_on_its_own(fresh_redis, start_dataplane):
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        username = _publish(client)
    finally:
        client.close()
    plane = start_dataplane(fresh_redis.url, SERVER, workers=2, args=[
        "--auth-delay-after", "4", "--auth-block-after", "4"])
    fresh_redis.stop()
    bad = _plain(username, "wrong")
    with _connect(plane.port, "127.0.0.6") as client:  # one connection: one worker's count
        codes = [client.docmd("AUTH", bad)[0] for _ in range(4)]
    assert codes == [535, 535, 535, 421], plane.log()
    assert "counting failed AUTHs in this worker only" in plane.log()
