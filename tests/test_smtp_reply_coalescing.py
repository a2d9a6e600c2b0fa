"""Replies to a client that pipelines (RFC 2920) go out in one write
(`dataplane.smtp_wire`): on a real socket into `poolmta sink`'s protocol (the
Bridge's shares it), the writes counted at the server's transport. A client that
does not pipeline still gets every reply as its own write, and a message's reply
at the end of DATA is never held back behind the next pipelined command."""

from __future__ import annotations

import asyncio

from dataplane.sink.config import SinkConfig
from dataplane.sink.server import Sink, SinkSMTP


class CountedSink(SinkSMTP):
    """The sink's protocol; what it writes to its (real) transport is recorded."""

    writes: list[bytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.writes = []
        send = transport.write

        def write(data: bytes) -> None:
            self.writes.append(bytes(data))
            send(data)

        transport.write = write  # the instance's own: the transport is asyncio's, unchanged
        super().connection_made(transport)


async def _serve():
    loop = asyncio.get_running_loop()
    sessions: list[CountedSink] = []

    def protocol() -> CountedSink:
        session = CountedSink(Sink(SinkConfig()), set(), hostname="sink.test", data_size_limit=1_000_000,
                              enable_SMTPUTF8=True, decode_data=False, loop=loop)
        sessions.append(session)
        return session

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], sessions


async def _replies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    replies = []
    while len(replies) < count:
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line, "the server closed the connection"
        if line[3:4] != b"-":
            replies.append(line[:3])
    return replies


async def test_a_pipelined_group_is_answered_in_one_write():
    server, port, sessions = await _serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _replies(reader, 1)
        writer.write(b"EHLO client.test\r\n")
        await _replies(reader, 1)
        session = sessions[0]
        before = len(session.writes)
        writer.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        assert await _replies(reader, 4) == [b"250", b"250", b"250", b"354"]
        assert session.writes[before:] == [b"250 OK\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                                           b"354 End data with <CR><LF>.<CR><LF>\r\n"]

        # The end of the message and the next transaction in one segment: the
        # message's 250 is written on its own, the next group's replies together.
        before = len(session.writes)
        writer.write(b"Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        assert await _replies(reader, 4) == [b"250", b"250", b"250", b"354"]
        written = session.writes[before:]
        assert len(written) == 2 and written[0].startswith(b"250 ") and written[0].count(b"\r\n") == 1
        assert written[1].count(b"\r\n") == 3 and written[1].endswith(b"<CR><LF>.<CR><LF>\r\n")

        writer.write(b"body\r\n.\r\nQUIT\r\n")
        assert await _replies(reader, 2) == [b"250", b"221"]
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_client_that_waits_gets_each_reply_as_its_own_write():
    server, port, sessions = await _serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _replies(reader, 1)
        commands = [b"HELO client.test\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.net>\r\n",
                    b"DATA\r\n", b"x\r\n.\r\n", b"NOOP\r\n", b"QUIT\r\n"]
        for command in commands:
            writer.write(command)
            await _replies(reader, 1)
        assert len(sessions[0].writes) == 1 + len(commands)  # the banner, then one per reply
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_reply_held_behind_a_line_that_gets_no_reply_is_sent_before_waiting():
    # NOOP's reply is held (a whole line follows), and so is the overlong line's 500
    # (its rest, through its LF, is buffered); dropping that rest answers nothing, so
    # the server must send both before it waits for the client's next command.
    server, port, _ = await _serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _replies(reader, 1)
        writer.write(b"EHLO client.test\r\n")
        await _replies(reader, 1)
        writer.write(b"NOOP\r\nNOOP " + b"x" * 5000 + b"\r\n")
        assert await _replies(reader, 2) == [b"250", b"500"]
        writer.write(b"NOOP\r\n")
        assert await _replies(reader, 1) == [b"250"]
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_replies_held_when_the_client_ends_its_side_are_still_sent():
    server, port, _ = await _serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _replies(reader, 1)
        writer.write(b"EHLO client.test\r\nNOOP\r\nNOOP " + b"x" * 5000 + b"\r\n")
        writer.write_eof()
        assert await _replies(reader, 3) == [b"250", b"250", b"500"]
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
