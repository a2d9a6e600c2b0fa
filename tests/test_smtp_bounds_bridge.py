"""The SMTP Bridge's limits under abuse, against a real data plane: connection caps
per client address and per server that hold across two workers (421 whichever
worker a connection lands on), the idle timeout and the lifetime of a session
before AUTH (421 4.4.2), and NUL
bytes in a message (554 5.6.0) or a command line (500 5.5.2)."""

from __future__ import annotations

import smtplib
import socket
import time


from control.contract import rediskeys
from dataplane.smtp_bridge import REPLY_NUL_IN_MESSAGE
from dataplane.smtp_wire import REPLY_NUL_IN_COMMAND
from tests.dataplane_support import make_bridge, make_pool, make_snapshot, message, publish
from tests.support import wait_until

SERVER = 33
SECRET = "s3cret"
TRUSTED = "127.0.0.9"  # a trusted network of the second Bridge


def _start(redis_client, redis_url, start_dataplane, *args: str, workers: int = 1):
    pool = make_pool(331, [("192.0.2.33", 1)], server_id=SERVER)
    bridge = make_bridge(1, 331, SECRET)
    trusting = make_bridge(2, 331, SECRET, trusted=[TRUSTED + "/32"])
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge, trusting]))
    return start_dataplane(redis_url, SERVER, workers=workers, args=list(args)), bridge


def _open(port: int, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """A connection from `source` and the server's first reply line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    with sock.makefile("rb", buffering=0) as replies:
        return sock, replies.readline()


def test_caps_per_address_and_per_server_hold_across_two_workers(redis_client, redis_url, start_dataplane):
    plane, _ = _start(redis_client, redis_url, start_dataplane, "--max-connections", "5",
                      "--max-connections-per-address", "3", workers=2)
    held = []
    try:
        for _ in range(3):
            sock, banner = _open(plane.port)
            assert banner.startswith(b"220 "), banner
            held.append(sock)
        # Both workers hold some of them (SO_REUSEPORT), yet every further one is refused.
        for _ in range(8):
            sock, reply = _open(plane.port)
            sock.close()
            assert reply.startswith(b"421 4.7.0 ") and b"Too many connections from 127.0.0.1" in reply, reply
        for _ in range(2):
            sock, banner = _open(plane.port, "127.0.0.2")
            assert banner.startswith(b"220 "), banner
            held.append(sock)
        sock, reply = _open(plane.port, "127.0.0.3")
        sock.close()
        assert reply.startswith(b"421 4.7.0 ") and b"Too many connections to this server" in reply, reply
        keys = [rediskeys.connection_counts_key(SERVER, "bridge", i) for i in range(2)]
        totals = [int(redis_client.hget(k, rediskeys.CONNECTIONS_TOTAL_FIELD) or 0) for k in keys]
        assert sum(totals) == 5, totals
        # A closed connection frees its slot, on whichever worker.
        held.pop(0).close()
        assert wait_until(lambda: _admitted(plane.port), timeout=10), "the freed slot was not given again"
    finally:
        for sock in held:
            sock.close()


def _admitted(port: int) -> bool:
    sock, banner = _open(port)
    sock.close()
    return banner.startswith(b"220 ")


def test_a_session_idle_before_auth_gets_421_and_is_closed(redis_client, redis_url, start_dataplane):
    plane, bridge = _start(redis_client, redis_url, start_dataplane, "--pre-auth-timeout", "0.5s")
    sock, banner = _open(plane.port)
    with sock:
        assert banner.startswith(b"220 ")
        replies = sock.makefile("rb")
        sock.sendall(b"EHLO client.example\r\n")
        while replies.readline().startswith(b"250-"):
            pass
        goodbye = replies.readline()  # nothing more sent: the timeout's reply
        assert goodbye.startswith(b"421 4.4.2 ") and b"without AUTH" in goodbye and b"timeout" in goodbye, goodbye
        assert replies.readline() == b""  # closed
    # Busy but never authenticating (a NOOP well within each idle timeout): closed all the same.
    sock, banner = _open(plane.port)
    with sock:
        replies = sock.makefile("rb")
        for _ in range(200):
            try:
                sock.sendall(b"NOOP\r\n")
            except OSError:  # closed while we were still sending
                break
            reply = replies.readline()
            if not reply.startswith(b"250 "):
                break
            time.sleep(0.1)
        assert reply.startswith(b"421 4.4.2 ") and b"without AUTH" in reply, reply
    # Authenticated, or from a trusted network, the session keeps aiosmtpd's longer timeout.
    with smtplib.SMTP("127.0.0.1", plane.port, timeout=30) as client, \
            smtplib.SMTP("127.0.0.1", plane.port, timeout=30, source_address=(TRUSTED, 0)) as trusted:
        client.login(bridge.username, SECRET)
        assert trusted.ehlo()[0] == 250
        time.sleep(1.0)  # twice the pre-AUTH timeout
        assert client.noop()[0] == 250
        assert trusted.noop()[0] == 250


def test_nul_bytes_are_refused_in_messages_and_command_lines(redis_client, redis_url, start_dataplane):
    plane, bridge = _start(redis_client, redis_url, start_dataplane)
    with smtplib.SMTP("127.0.0.1", plane.port, timeout=30) as client:
        client.login(bridge.username, SECRET)
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        code, reply = client.data(message(1, body=b"before\0after\r\n"))
        assert (code, reply.decode()) == (554, REPLY_NUL_IN_MESSAGE.partition(" ")[2])
        code, reply = client.docmd("NOOP\0")
        assert (code, reply.decode()) == (500, REPLY_NUL_IN_COMMAND.partition(" ")[2])
        # The session goes on: the same message without the NUL is queued.
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        assert client.data(message(1, body=b"before after\r\n"))[0] == 250
