"""Limits and abuse: oversize messages, too many recipients, MAIL before AUTH,
garbage commands, a 1 MB header line, a 1 MB command line, and a spool that
cannot be written. Each gets the right reply code, and the worker keeps serving."""

from __future__ import annotations

import os
import smtplib
import socket

from dataplane import spool
from tests.dataplane_support import (
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queued_id,
)

SERVER = 5
SECRET = "s3cret"
MAX_SIZE = 2 * 1024 * 1024


def _start(redis_client, redis_url, start_dataplane):
    pool = make_pool(51, [("192.0.2.51", 1)], server_id=SERVER)
    bridge = make_bridge(1, 51, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    plane = start_dataplane(redis_url, SERVER, args=["--max-message-size", "2M", "--max-recipients", "5"])
    return plane, bridge


def _client(plane, bridge) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", plane.port, timeout=30)
    client.login(bridge.username, SECRET)
    return client


def _still_serving(plane, bridge) -> None:
    with _client(plane, bridge) as client:
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        code, reply = client.data(message(0))
        assert code == 250, reply


def test_size_recipient_and_auth_limits(redis_client, redis_url, start_dataplane):
    plane, bridge = _start(redis_client, redis_url, start_dataplane)
    with smtplib.SMTP("127.0.0.1", plane.port, timeout=30) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == str(MAX_SIZE)
        assert client.has_extn("smtputf8") and client.has_extn("8bitmime") and client.has_extn("pipelining")
        code, reply = client.docmd("MAIL", "FROM:<sender@example.com>")  # before AUTH
        assert code == 530 and b"Authentication required" in reply
        code, _ = client.docmd("RCPT", "TO:<rcpt@example.net>")
        assert code == 503

    with _client(plane, bridge) as client:
        code, _ = client.docmd("MAIL", f"FROM:<sender@example.com> SIZE={MAX_SIZE + 1}")
        assert code == 552  # declared too big: refused up front

        client.mail("sender@example.com")
        for n in range(5):
            assert client.rcpt(f"rcpt{n}@example.net")[0] == 250
        code, reply = client.rcpt("rcpt5@example.net")
        assert code == 452 and b"at most 5" in reply
        big = message(1, body=(b"x" * 998 + b"\r\n") * (MAX_SIZE // 1000 + 10))
        code, reply = client.data(big)
        assert code == 552, reply  # read to the end, then refused

        # Far past the limit (the reader discards as it goes), and one huge line
        # starting with a dot: the same reply, and the end of data is still found.
        for body in ((b"y" * 998 + b"\r\n") * (3 * MAX_SIZE // 1000), b"." * (3 * MAX_SIZE) + b"\r\n"):
            client.mail("sender@example.com")
            client.rcpt("rcpt@example.net")
            code, reply = client.data(b"Subject: big\r\n\r\n" + body)
            assert code == 552, reply

        # The session goes on: the next message is fine.
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        code, reply = client.data(message(2))
        assert code == 250, reply
        record = plane.record(queued_id(reply))
        assert record.rcpt_tos == ("rcpt@example.net",)


def test_long_lines_and_garbage(redis_client, redis_url, start_dataplane):
    plane, bridge = _start(redis_client, redis_url, start_dataplane)
    with _client(plane, bridge) as client:
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        code, reply = client.data(message(1, extra_headers=b"X-Long: " + b"a" * 1024 * 1024 + b"\r\n"))
        assert code == 500 and b"line is longer than 998" in reply
        code, reply = client.docmd("NOOP")
        assert code == 250

        code, reply = client.docmd("X" * (1024 * 1024))
        assert code == 500 and b"too long" in reply

    with socket.create_connection(("127.0.0.1", plane.port), timeout=10) as sock:
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        for garbage in (b"\xff\xfe\x00 binary\r\n", b"HELLO THERE\r\n", b"\r\n", b"MAIL\r\n"):
            sock.sendall(garbage)
            line = replies.readline()
            assert line[:1] == b"5", (garbage, line)
        # Unknown commands are counted: the fifth closes the session, with the 421
        # RFC 5321 section 3.8 asks of a server that closes.
        for _ in range(4):
            sock.sendall(b"FOO\r\n")
            line = replies.readline()
        assert line.startswith(b"421 4.7.0 Too many unrecognized commands")
        assert replies.readline() == b""

    _still_serving(plane, bridge)


def test_spool_write_failure_answers_451_and_leaves_nothing(redis_client, redis_url, start_dataplane):
    plane, bridge = _start(redis_client, redis_url, start_dataplane)
    journal_dir = plane.spool_dir / spool.JOURNAL_DIR

    def send() -> tuple[int, bytes]:
        with _client(plane, bridge) as client:
            client.mail("sender@example.com")
            client.rcpt("rcpt@example.net")
            return client.data(message(1))

    # No segment can be created (journal/ is not a directory any more; the workers have
    # written nothing yet, so none is open).
    moved = plane.spool_dir / "journal-moved"
    os.rename(journal_dir, moved)
    journal_dir.write_bytes(b"")
    code, reply = send()
    assert code == 451 and b"nothing was queued" in reply
    journal_dir.unlink()
    os.rename(moved, journal_dir)
    assert spool.queued_ids(plane.spool_dir) == []

    code, reply = send()
    assert code == 250, reply
    assert spool.queued_ids(plane.spool_dir) == [queued_id(reply)]
