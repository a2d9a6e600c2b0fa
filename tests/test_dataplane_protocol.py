"""The wire protocol on raw sockets: the DATA reader (dot-stuffing, the end-of-data
line, bare CR / LF, any split into TCP segments), PIPELINING, SMTPUTF8 and
8BITMIME, and the SMTP smuggling defence (only CRLF "." CRLF ends a message)."""

from __future__ import annotations

import base64
import socket
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.dataplane_support import Dataplane, make_bridge, make_pool, make_snapshot, publish, queued_id

# The module's data plane is a real `python -m dataplane` process.
pytestmark = pytest.mark.slow

SERVER = 7
SECRET = "s3cret"


@pytest.fixture(scope="module")
def plane(redis_server, tmp_path_factory):
    """One worker for the whole module (hypothesis runs many examples against it).
    Uses the session Redis without flushing it: server 7 is this module's alone."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    pool = make_pool(71, [("192.0.2.71", 1)], server_id=SERVER)
    bridge = make_bridge(1, 71, SECRET)
    publish(client, make_snapshot(SERVER, 1, [pool], [bridge]))
    client.close()
    dataplane = Dataplane(tmp_path_factory.mktemp("protocol"), redis_server.url, SERVER).start()
    dataplane.username = bridge.username
    yield dataplane
    try:
        assert dataplane.stop() == 0
    finally:
        dataplane.kill()


class Wire:
    """A raw SMTP client: send bytes, read reply lines."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith(b"220 ")

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply."""
        lines = []
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def login(self, username: str) -> None:
        self.send(b"EHLO client.example\r\n")
        assert self.reply().startswith(b"250-")
        token = base64.b64encode(f"\0{username}\0{SECRET}".encode())
        self.send(b"AUTH PLAIN " + token + b"\r\n")
        assert self.reply().startswith(b"235 ")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _stuff(content: bytes) -> bytes:
    """The DATA wire form of `content` (RFC 5321 4.5.2): lines are CRLF-delimited;
    one starting with "." gets another; the message ends with CRLF "." CRLF."""
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    lines = content.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines[:-1]) + b"\r\n.\r\n"


def _transact(plane, content: bytes, cuts: list[int]) -> bytes:
    """Send `content` in segments cut at `cuts`; the stored message."""
    wire = Wire(plane.port)
    try:
        wire.login(plane.username)
        wire.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
        assert wire.reply().startswith(b"250 ")
        assert wire.reply().startswith(b"250 ")
        assert wire.reply().startswith(b"354 ")
        data = _stuff(content)
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for start, end in zip(points, points[1:]):
            wire.send(data[start:end])
            time.sleep(0.001)
        reply = wire.reply()
        assert reply.startswith(b"250 "), reply
        return plane.record(queued_id(reply)).message
    finally:
        wire.close()


# Lines without ":" and not starting with SP/HTAB: the header injection keeps them
# all, so the stored message must end with exactly the content sent.
_content = st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"x"]), max_size=40).map(b"".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_content, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
@example(content=b".\r\n", cuts=[])  # a line with a single dot
@example(content=b"\r\n", cuts=[])  # one empty line
@example(content=b"a\r\n..\r\n.", cuts=[3, 4, 5, 6, 7])
@example(content=b"\r\r\r\n.a", cuts=[1, 2, 3])
@example(content=b"a\n.\n", cuts=[])  # bare-LF "." line: content, not the end
def test_data_reader_round_trips_any_content_in_any_segments(plane, content, cuts):
    stored = _transact(plane, content, cuts)
    expected = content if content.endswith(b"\r\n") else content + b"\r\n"
    assert stored.endswith(expected)
    assert stored[: len(stored) - len(expected)].count(b"x-virtual-mta: ") == 1


def test_empty_message(plane):
    stored = _transact(plane, b"", [])
    assert stored.endswith(b"x-serverid: 7\r\n\r\n")


def test_pipelined_transactions(plane):
    wire = Wire(plane.port)
    try:
        wire.login(plane.username)
        first = b"Subject: one\r\n\r\nbody one\r\n"
        second = b"Subject: two\r\n\r\nbody two\r\n"
        envelope = b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r1@example.net>\r\nRCPT TO:<r2@example.net>\r\nDATA\r\n"
        wire.send(envelope)
        for _ in range(3):
            assert wire.reply().startswith(b"250 ")
        assert wire.reply().startswith(b"354 ")
        # The end of one message and the next transaction in one segment.
        wire.send(first + b".\r\n" + envelope)
        ids = [queued_id(wire.reply())]
        for _ in range(3):
            assert wire.reply().startswith(b"250 ")
        assert wire.reply().startswith(b"354 ")
        wire.send(second + b".\r\nQUIT\r\n")
        ids.append(queued_id(wire.reply()))
        assert wire.reply().startswith(b"221 ")
    finally:
        wire.close()
    for message_id, body in zip(ids, (first, second)):
        record = plane.record(message_id)
        assert record.message.endswith(body)
        assert record.rcpt_tos == ("r1@example.net", "r2@example.net")


def test_smtputf8_and_8bitmime(plane):
    wire = Wire(plane.port)
    try:
        wire.login(plane.username)
        sender = "üser@exämple.com".encode()
        wire.send(b"MAIL FROM:<" + sender + b"> SMTPUTF8 BODY=8BITMIME\r\n")
        assert wire.reply().startswith(b"250 ")
        wire.send("RCPT TO:<rcpt@exämple.net>\r\nDATA\r\n".encode())
        assert wire.reply().startswith(b"250 ")
        assert wire.reply().startswith(b"354 ")
        content = "Subject: ünïcödé\r\n\r\n8-bit bödy \xff\r\n".encode("utf-8")
        wire.send(content + b".\r\n")
        record = plane.record(queued_id(wire.reply()))
        assert record.message.endswith(content)
        assert record.smtputf8 is True and record.mail_from == "üser@exämple.com"
        assert record.rcpt_tos == ("rcpt@exämple.net",)
        assert set(record.mail_options) == {"SMTPUTF8", "BODY=8BITMIME"}

        # A non-ASCII address without SMTPUTF8 is refused, and invalid UTF-8 always.
        wire.send(b"MAIL FROM:<" + sender + b">\r\n")
        assert wire.reply().startswith(b"553 ")
        wire.send(b"MAIL FROM:<\xff@example.com> SMTPUTF8\r\n")
        assert wire.reply().startswith(b"553 ")
    finally:
        wire.close()


def test_bare_lf_dot_lines_do_not_end_the_message(plane):
    """SMTP smuggling: "\\n.\\r\\n" and "\\r\\n.\\n" are content, so a second message
    hidden behind them stays inside the first."""
    hidden = b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<x@example.net>\r\nDATA\r\nSubject: hidden\r\n"
    content = b"Subject: outer\r\n\r\nbody\n.\r\n" + hidden + b"\r\n.\n" + hidden
    stored = _transact(plane, content, [len(content) // 2])
    assert stored.endswith(content)
