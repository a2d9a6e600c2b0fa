"""`dataplane.smtp_wire`, the SMTP wire parsing the Bridge and the sink share: the
DATA reader under both servers' size rules, and the MAIL/RCPT fast path against
aiosmtpd's own parser. (Over real sockets: test_dataplane_protocol.py for the
Bridge, test_sink.py for the sink.)"""

from __future__ import annotations

import asyncio
from email._header_value_parser import get_angle_addr

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dataplane.smtp_wire import parse_simple_path, read_data
from tests.dataplane_support import dot_stuffed

# ---------------------------------------------------------------------------
# DATA reader
# ---------------------------------------------------------------------------


async def _read_fed(
    wire: bytes, piece: int, limit: int | None, reader_limit: int = 16, **rule: bool
) -> tuple[bytes | None, bytes]:
    """(what read_data returns, what it left in the reader) for `wire` fed in pieces.
    The default reader limit is small, so the limit-overrun path is taken all the time."""
    reader = asyncio.StreamReader(limit=reader_limit)

    async def feed() -> None:
        for start in range(0, len(wire), piece):
            reader.feed_data(wire[start : start + piece])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    content = await read_data(reader, limit, **rule)
    await feeder
    return content, await reader.read()


_line = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\r\n" not in b),
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"\r", b"\n.", b". "]),
)


@given(
    lines=st.lists(_line, max_size=12),
    tail=st.sampled_from([b"", b"QUIT\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", b".\r\n"]),
    piece=st.integers(1, 70),
    limit=st.none() | st.integers(0, 300),
)
@example(lines=[], tail=b"QUIT\r\n", piece=1, limit=None)
@example(lines=[b""], tail=b"", piece=5, limit=None)
@example(lines=[b"."], tail=b"", piece=3, limit=None)
@example(lines=[b"x" * 100, b"."], tail=b"NOOP\r\n", piece=64, limit=50)
@settings(max_examples=300, deadline=None)
def test_read_data_undoes_dot_stuffing_and_leaves_pipelined_commands(
    lines: list[bytes], tail: bytes, piece: int, limit: int | None
) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    stuffed = dot_stuffed(lines)
    content, rest = asyncio.run(_read_fed(stuffed + b".\r\n" + tail, piece, limit))
    # aiosmtpd's rule: too big when the stuffed bytes before the terminator exceed the limit.
    assert content == (None if limit is not None and len(stuffed) > limit else message)
    assert rest == tail


@given(
    lines=st.lists(_line, max_size=12),
    piece=st.integers(1, 70),
    limit=st.integers(0, 300),
)
@example(lines=[b".", b"..x", b"x"], piece=7, limit=9)  # 12 bytes on the wire, 9 of message
@settings(max_examples=200, deadline=None)
def test_the_bridge_rule_counts_the_message_bytes_not_the_dot_stuffing(
    lines: list[bytes], piece: int, limit: int
) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    wire = dot_stuffed(lines) + b".\r\nQUIT\r\n"
    # A buffer that holds the whole payload, as the Bridge's does for any message it accepts.
    found = asyncio.run(
        _read_fed(wire, piece, limit, reader_limit=len(wire) + 1, count_stuffing=False, whole_in_buffer=True)
    )
    assert found == (None if len(message) > limit else message, b"QUIT\r\n")


def test_data_that_overruns_a_buffer_meant_for_the_whole_message_is_too_big() -> None:
    # 303 bytes of message, 403 on the wire: within the limit, but not within the buffer.
    lines = [b"x"] + [b"."] * 100
    message = b"".join(line + b"\r\n" for line in lines)
    wire = dot_stuffed(lines) + b".\r\nNOOP\r\n"
    bridge = {"count_stuffing": False, "whole_in_buffer": True}
    assert asyncio.run(_read_fed(wire, 1000, 303, reader_limit=350, **bridge)) == (None, b"NOOP\r\n")
    # Read in pieces instead, it is within the limit.
    pieces = {"count_stuffing": False, "whole_in_buffer": False}
    assert asyncio.run(_read_fed(wire, 1000, 303, reader_limit=350, **pieces)) == (message, b"NOOP\r\n")
    # aiosmtpd's rule counts the dots: too big.
    assert asyncio.run(_read_fed(wire, 1000, 303, reader_limit=350)) == (None, b"NOOP\r\n")


def test_only_crlf_dot_crlf_ends_the_data() -> None:
    """SMTP smuggling: a "." after a bare LF, or before one, is content (a line
    that starts with it still loses it to dot-stuffing)."""
    wire = b"a\n.\r\nb\r\n.\nc\r\n\r\n.\r\nQUIT\r\n"
    for rule in ({}, {"count_stuffing": False, "whole_in_buffer": True}):
        assert asyncio.run(_read_fed(wire, 3, None, **rule)) == (b"a\n.\r\nb\r\n\nc\r\n\r\n", b"QUIT\r\n")


# ---------------------------------------------------------------------------
# MAIL/RCPT fast path
# ---------------------------------------------------------------------------


_atext = st.sampled_from("abcXYZ019!#$%&'*+/=?^_`{|}~-")
_dot_atom = st.lists(st.text(_atext, min_size=1, max_size=6), min_size=1, max_size=3).map(".".join)


@given(
    arg=st.one_of(
        st.builds(
            lambda local, domain, space, params: f"<{local}@{domain}>{space}{params}",
            _dot_atom,
            _dot_atom,
            st.sampled_from(["", " ", "  ", "\t"]),
            st.text("SIZE=19BODY8ITMExp.)( ", max_size=20),
        ),
        st.text('<>@a.(" )\\[]é', max_size=20).map(lambda s: "<" + s),
    )
)
@example(arg="<a@b> SIZE=10")
@example(arg="<>")
@example(arg="<a@b>(comment) SIZE=1")
@example(arg="<a@b.>")
@example(arg="<a@b> SIZE=1 (comment)")
@example(arg="<a@b>SIZE=1")
@example(arg="<a@b> ")
@settings(max_examples=300, deadline=None)
def test_the_mail_rcpt_fast_path_agrees_with_aiosmtpd(arg: str) -> None:
    simple = parse_simple_path(arg)
    if simple is None:
        return
    address, rest = get_angle_addr(arg)
    assert simple == (address.addr_spec, rest)


def test_the_mail_rcpt_fast_path_takes_the_common_forms() -> None:
    assert parse_simple_path("<Alice.B+tag@Mail-1.Example.com> SIZE=1200 BODY=8BITMIME") == (
        "Alice.B+tag@Mail-1.Example.com",
        "SIZE=1200 BODY=8BITMIME",
    )
    assert parse_simple_path("<>") is None  # null sender: aiosmtpd's parser
    assert parse_simple_path('<"quoted"@example.com>') is None
