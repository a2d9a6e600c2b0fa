"""Benchmark reading a message in DATA, the Bridge's way, before and after the
bounded reader (issue 11 item 1).

Measured, over a real loopback socket to an in-process `WireSMTP` server on the
same asyncio loop, 10 transactions per timed call (MAIL, RCPT, DATA, the message,
the 250), for a 5 KB and a 50 KB message:

- `bounded`: what every server does now: command lines capped at 2 KiB, DATA
  read in 64 KiB pieces counted against the size limit as they come;
- `whole`: the Bridge before: a reader sized for a whole 25 MB message, each
  message found with one buffer search (`whole_in_buffer`).

The ratio bounded / whole is printed after the table (the goal: not noticeably slower).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from dataplane.smtp_wire import WireSMTP

MB = 1024 * 1024
SIZE_LIMIT = 25 * MB
BATCH = 10
SIZES = {"5 KB": 5_000, "50 KB": 50_000}


class _Handler:
    pass


class _Bounded(WireSMTP):
    count_stuffing = False

    async def message_received(self, content: bytes | None) -> str:
        return "552 5.3.4 too big" if content is None else "250 2.0.0 Ok"


class _Whole(_Bounded):
    # The Bridge before the bounded reader: the buffer holds a whole message.
    line_length_limit = data_chunk = SIZE_LIMIT + 64 * 1024
    whole_in_buffer = True


def _message(size: int) -> bytes:
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = line * (size // len(line))
    return b"From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n" + body + b".\r\n"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module", params=["bounded", "whole"])
def session(request, loop):
    """(variant, reader, writer) of one client session to a server of that variant."""
    protocol = _Bounded if request.param == "bounded" else _Whole

    async def start():
        server = await asyncio.get_running_loop().create_server(
            lambda: protocol(_Handler(), data_size_limit=SIZE_LIMIT, hostname="bench.example"), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        await reader.readline()
        writer.write(b"HELO client.example\r\n")
        await reader.readline()
        return server, reader, writer

    server, reader, writer = loop.run_until_complete(start())
    yield request.param, reader, writer
    writer.close()
    server.close()
    loop.run_until_complete(server.wait_closed())


@pytest.mark.parametrize("size", list(SIZES))
def test_data(benchmark, measure, loop, session, size):
    variant, reader, writer = session
    wire = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" + _message(SIZES[size])

    async def transactions() -> None:
        for _ in range(BATCH):
            writer.write(wire)
            for _ in range(3):  # MAIL, RCPT, 354
                await reader.readline()
            assert (await reader.readline()).startswith(b"250 ")

    benchmark.group = f"data {size}"
    benchmark.extra_info["variant"] = variant
    measure(lambda: loop.run_until_complete(transactions()))
