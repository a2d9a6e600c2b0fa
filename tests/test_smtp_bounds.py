"""Bounded buffers of the shared SMTP wire layer (`dataplane.smtp_wire`), on real
sockets against an in-process `WireSMTP` server: an endless command line, overlong
and NUL command lines, and DATA over the size limit. Each asserts the reply and
that the connection's reader never held more than its cap plus one socket read."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.smtp_wire import (
    COMMAND_LINE_CAP,
    DATA_CHUNK,
    MAX_REFUSED_LINES,
    OVERLONG_LINE_DISCARD,
    REPLY_COMMAND_TOO_LONG,
    REPLY_NUL_IN_COMMAND,
    WireSMTP,
)

MB = 1024 * 1024
SIZE_LIMIT = MB
# What asyncio's buffer may hold past its limit: twice the limit before it pauses
# the socket, plus one socket read (256 KiB for the selector transport).
SOCKET_READ = 256 * 1024
COMMAND_BOUND = 2 * COMMAND_LINE_CAP + SOCKET_READ
DATA_BOUND = 2 * DATA_CHUNK + SOCKET_READ


class _Handler:
    pass


class _Server(WireSMTP):
    """A WireSMTP that takes every message (552 over the size limit)."""

    async def message_received(self, content: bytes | None) -> str:
        return "552 5.3.4 too big" if content is None else f"250 2.0.0 {len(content)} bytes"


@pytest.fixture
async def server():
    sessions: list[_Server] = []

    def make() -> _Server:
        protocol = _Server(_Handler(), data_size_limit=SIZE_LIMIT, hostname="mx.test", auth_require_tls=False)
        sessions.append(protocol)
        return protocol

    srv = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    srv.sessions = sessions
    srv.port = srv.sockets[0].getsockname()[1]
    yield srv
    srv.close()
    await srv.wait_closed()


async def _connect(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert (await reader.readline()).startswith(b"220 ")
    return reader, writer


async def _command(reader, writer, line: bytes) -> bytes:
    writer.write(line + b"\r\n")
    await writer.drain()
    return (await reader.readline()).rstrip(b"\r\n")


async def _closed(reader) -> bool:
    """True once the server closed the connection (a reset when our data was still unread)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


async def _send_quietly(writer, data: bytes) -> None:
    """Send `data` in 64 KiB pieces until done or the server closes the connection."""
    try:
        for start in range(0, len(data), 64 * 1024):
            writer.write(data[start:start + 64 * 1024])
            await writer.drain()
    except (ConnectionError, OSError):
        pass


async def test_an_endless_command_line_gets_500_then_421_and_is_never_buffered(server):
    reader, writer = await _connect(server)
    sending = asyncio.create_task(_send_quietly(writer, b"EHLO " + b"a" * (OVERLONG_LINE_DISCARD + 4 * MB)))
    assert (await reader.readline()).rstrip(b"\r\n").decode() == REPLY_COMMAND_TOO_LONG
    closing = await reader.readline()
    assert closing.startswith(b"421 4.7.0 mx.test Too many overlong"), closing
    assert await _closed(reader)
    await sending
    writer.close()
    assert server.sessions[0].line_reader.high_water <= COMMAND_BOUND


async def test_an_overlong_line_gets_500_and_the_session_goes_on(server):
    reader, writer = await _connect(server)
    # Past the reader's cap (discarded as it comes), then past aiosmtpd's 512 only.
    for line in (b"NOOP " + b"x" * (3 * MB), b"NOOP " + b"x" * 600):
        assert (await _command(reader, writer, line)).decode() == REPLY_COMMAND_TOO_LONG
    assert (await _command(reader, writer, b"NOOP")).startswith(b"250")
    assert server.sessions[0].line_reader.high_water <= COMMAND_BOUND
    writer.close()


async def test_repeated_refused_lines_close_the_session_with_421(server):
    reader, writer = await _connect(server)
    replies = [await _command(reader, writer, line)
               for line in (b"NOOP " + b"x" * 600, b"NOOP\0", b"HELO " + b"y" * 5000)[:MAX_REFUSED_LINES]]
    assert [r.decode() for r in replies[:2]] == [REPLY_COMMAND_TOO_LONG, REPLY_NUL_IN_COMMAND]
    assert replies[2].startswith(b"421 4.7.0 mx.test"), replies
    assert await _closed(reader)
    writer.close()


async def test_a_nul_in_a_command_line_gets_500(server):
    reader, writer = await _connect(server)
    assert (await _command(reader, writer, b"EHLO mx\0.example")).decode() == REPLY_NUL_IN_COMMAND
    assert (await _command(reader, writer, b"HELO mx.example")).startswith(b"250")
    writer.close()


async def test_over_size_data_is_read_in_bounded_chunks_and_refused(server):
    reader, writer = await _connect(server)
    for line in (b"HELO client.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>"):
        assert (await _command(reader, writer, line)).startswith(b"250"), line
    assert (await _command(reader, writer, b"DATA")).startswith(b"354")
    body = (b"z" * 998 + b"\r\n") * (8 * MB // 1000)
    await _send_quietly(writer, b"Subject: big\r\n\r\n" + body + b".\r\n")
    assert (await reader.readline()).startswith(b"552 ")
    # Within the limit, after that: the whole message, on the same session.
    for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>"):
        assert (await _command(reader, writer, line)).startswith(b"250"), line
    assert (await _command(reader, writer, b"DATA")).startswith(b"354")
    await _send_quietly(writer, b"x" * 1000 + b"\r\n.\r\n")
    assert (await reader.readline()).startswith(b"250 2.0.0 1002 bytes")
    assert server.sessions[0].line_reader.high_water <= DATA_BOUND
    writer.close()


_COMMANDS = [b"EHLO x", b"HELO x", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"NOOP", b"RSET", b"VRFY a",
             b"AUTH PLAIN", b"STARTTLS", b"DATA", b"BDAT 10", b"HELP"]
_line = st.one_of(
    st.sampled_from(_COMMANDS),
    st.binary(max_size=80),
    st.tuples(st.sampled_from(_COMMANDS), st.binary(max_size=40)).map(b" ".join),
    st.integers(500, 9000).map(lambda n: b"NOOP " + b"x" * n),
)


@given(lines=st.lists(_line, min_size=1, max_size=8))
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_command_lines_get_smtp_replies_and_bounded_buffers(lines: list[bytes]) -> None:
    """Fuzzed command lines (any bytes, any length, NUL, bare CR/LF; fixed seed): every
    reply is an SMTP reply line, the session ends only with a 221 or a 421 (or goes
    into DATA), and the reader never holds more than its cap plus one socket read."""

    async def run() -> None:
        sessions: list[_Server] = []

        def make() -> _Server:
            sessions.append(_Server(_Handler(), data_size_limit=SIZE_LIMIT, hostname="mx.test",
                                    auth_require_tls=False))
            return sessions[-1]

        srv = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
        await reader.readline()
        writer.write(b"".join(line + b"\r\n" for line in lines) + b"QUIT\r\n")
        await writer.drain()
        last = b""
        while True:
            try:
                reply = await asyncio.wait_for(reader.readline(), 10)
            except ConnectionResetError:
                break
            if not reply:
                break
            assert re.fullmatch(rb"[2-5][0-9][0-9][ -][^\r\n]*\r\n", reply), reply
            last = reply
            if reply.startswith(b"354"):  # the rest, QUIT included, is message content
                break
        assert last[:3] in (b"221", b"421", b"354"), last
        writer.close()
        srv.close()
        await srv.wait_closed()
        bound = DATA_BOUND if last.startswith(b"354") else COMMAND_BOUND
        assert all(s.line_reader.high_water <= bound for s in sessions)

    asyncio.run(run())
