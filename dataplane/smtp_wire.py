"""The SMTP wire parsing both of poolmta's SMTP servers share, the Bridge
(`dataplane.smtp_bridge`) and `poolmta sink` (`dataplane.sink.server`): the
MAIL/RCPT path parser and the DATA reader, and `WireSMTP`, aiosmtpd's protocol
class with both in place of its own.

aiosmtpd parses every MAIL/RCPT path with the email package's RFC 5322 parser
(a quarter of the sink's CPU per message in a benchmark) and reads DATA with one
await per line. Here the common path is one regex match, and DATA is found with
one buffer search per chunk. Results are exactly aiosmtpd's, except where a
server chooses otherwise through `WireSMTP`'s class attributes.

Every connection reads through a `CommandLineReader`, whose buffer stays near
`COMMAND_LINE_CAP` between commands (a command line without its LF is refused
with 500 as soon as it passes the cap, and the rest of it is discarded as it
comes, never held) and near `DATA_CHUNK` in DATA (read in pieces of that size,
counted against the size limit as they come). Repeated refused lines, or one
that goes on past `OVERLONG_LINE_DISCARD`, get 421 and the connection is closed.
A command line holding a NUL is refused with 500 (RFC 5321 section 4.1.1.4 and
2.3.8: NUL is not SMTP text). Replies to a pipelining client go out in one write
(`dataplane.smtp_replies`).

ESMTP parameters a server implements itself (RFC 3461's NOTIFY, ORCPT, RET and
ENVID: aiosmtpd knows none of them, answers 555 to any, and upper-cases the rest,
while ORCPT and ENVID values are case-sensitive) are taken out of the MAIL / RCPT
argument before aiosmtpd reads it, kept as the client wrote them, and handed to
the server's hook in `extension_params`.

This relies on aiosmtpd 1.4 internals: `_getaddr` (overridden), the stream
reader `_reader` (read directly in DATA; replaced by a `CommandLineReader` in
`WireSMTP.__init__`), the loop of `_handle_client` reading command lines with
`readuntil()` and passing other exceptions to `handle_exception`,
`_handler_coroutine` (cancelled after a closing 421, as aiosmtpd's QUIT does),
its reply text for a line over a per-command limit (`AIOSMTPD_COMMAND_TOO_LONG`)
and `_set_post_data_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterator

from aiosmtpd.smtp import SMTP, syntax

from .smtp_replies import PipelinedReplies

log = logging.getLogger("poolmta.dataplane.smtp")

# RFC 5321 section 4.1.2: a Path with a Dot-string local part and a domain, then
# the ESMTP parameters. The domain is a dot-atom as aiosmtpd's parser reads it
# (a superset of the hostnames RFC 5321 allows: aiosmtpd decides what is valid).
# After the SP/HTAB that follow the ">", the parameters may not start with "(" or
# other whitespace: aiosmtpd's parser would drop a comment or more folding there.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>[ \t]*((?:[^(\s][^\r\n]*)?)", re.ASCII)

CRLF = b"\r\n"
# End of DATA (RFC 5321 section 4.1.1.4). Only CRLF counts: a bare LF never ends
# the message, which is what keeps "SMTP smuggling" out.
END_OF_DATA = b"\r\n.\r\n"

MIB = 1024 * 1024
# RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
# The reader refuses a line past 2048 before buffering more: four times that, for
# what aiosmtpd itself allows past 512 (36 octets on MAIL per EHLO for SIZE and
# SMTPUTF8), RFC 3461's ENVID (100 xtext characters) and ORCPT (500), and an AUTH
# PLAIN initial response or SASL reply of long credentials (RFC 4954 section 4).
# aiosmtpd's own per-command limits still apply to the lines within it.
COMMAND_LINE_CAP = 2048
# DATA is read in pieces of at most this size (plus what one socket read adds).
DATA_CHUNK = 64 * 1024
# An overlong command line is discarded through its LF up to this size; a longer
# one is a flood, not a mistake (the 421 closes it). 4 MiB: generous for a broken
# client that pastes a message on a command line, never held in memory anyway.
OVERLONG_LINE_DISCARD = 4 * MIB
# Refused command lines (overlong, NUL) a session may send; the next one gets 421.
MAX_REFUSED_LINES = 3

# aiosmtpd's reply to a line over its per-command limit (without an enhanced
# status code): `WireSMTP.push` answers REPLY_COMMAND_TOO_LONG instead.
AIOSMTPD_COMMAND_TOO_LONG = "500 Command line too long"

REPLY_COMMAND_TOO_LONG = "500 5.5.2 Line too long: a command line is at most 512 octets (RFC 5321 section 4.5.3.1.4)"
REPLY_NUL_IN_COMMAND = "500 5.5.2 Command line contains a NUL byte (RFC 5321 section 4.1.1.4)"
REPLY_BAD_LINES_CLOSING = "421 4.7.0 {host} Too many overlong or malformed command lines; closing connection"
REPLY_NEED_RCPT = "503 Error: need RCPT command"
REPLY_DATA_SYNTAX = "501 Syntax: DATA"
REPLY_START_DATA = "354 End data with <CR><LF>.<CR><LF>"


def parse_simple_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of the common ``<local@domain> [PARAMS]`` argument of
    MAIL/RCPT, exactly as aiosmtpd's parser gives them; None for any other form
    (the null path ``<>``, quoted local parts, address literals, comments...)."""
    match = _SIMPLE_PATH.fullmatch(arg)
    return None if match is None else (match[1], match[2])


def take_params(params: str, keywords: frozenset[str]) -> tuple[str, list[str]]:
    """(`params` without the parameters whose keyword is in `keywords`, those parameters
    as written): `params` is the whitespace-separated ESMTP parameter list of a MAIL or
    RCPT command (RFC 5321 4.1.2), keywords compared case-insensitively (RFC 5321 2.4)."""
    kept: list[str] = []
    taken: list[str] = []
    for word in params.split():
        (taken if word.partition("=")[0].upper() in keywords else kept).append(word)
    return " ".join(kept), taken


class CommandLineRefused(Exception):
    """A command line `CommandLineReader` would not return: over the cap, holding a
    NUL, or (`endless`) still going past `OVERLONG_LINE_DISCARD`."""

    def __init__(self, reply: str, *, endless: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.endless = endless


class CommandLineReader(asyncio.StreamReader):
    """A StreamReader for one SMTP connection whose buffer stays bounded.

    `readuntil()` with the default LF separator (aiosmtpd's command loop, and its
    AUTH exchange through `readline`) returns a command line of at most `limit`
    bytes without NUL, or raises `CommandLineRefused` as soon as the line passes
    `limit`: what it holds is dropped then, and the rest of the line, up to its LF,
    is discarded as it comes on the next call (`CommandLineRefused` with `endless`
    once past `discard_limit`). Other separators are DATA's (`read_data`): within
    `reading_data(chunk)` the buffer may hold `chunk` bytes instead of `limit`.

    The asyncio buffer pauses the socket past twice its limit, so what it holds is
    bounded by that plus one socket read; `high_water` is the most it held.
    """

    def __init__(self, *, limit: int, discard_limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.command_limit = limit
        self.discard_limit = discard_limit
        self.high_water = 0
        self._discarded = -1  # bytes of an overlong line discarded so far; -1: none
        # Called before the reader waits for the peer, or sees its end: the protocol
        # sends the replies it held back (`smtp_replies.PipelinedReplies`).
        self.before_wait: Callable[[], None] | None = None

    def feed_data(self, data: bytes) -> None:
        super().feed_data(data)
        self.high_water = max(self.high_water, len(self._buffer))

    def feed_eof(self) -> None:
        self._before_waiting()
        super().feed_eof()

    async def _wait_for_data(self, func_name: str) -> None:
        # asyncio's one place a read waits for the peer: nothing held back may wait
        # with it (RFC 2920 section 3.1; see `smtp_replies`).
        self._before_waiting()
        await super()._wait_for_data(func_name)

    def _before_waiting(self) -> None:
        if self.before_wait is not None:
            self.before_wait()

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        if separator != b"\n":
            return await super().readuntil(separator)
        if self._discarded >= 0:
            await self._discard_line()
        try:
            line = await super().readuntil(separator)
        except asyncio.LimitOverrunError as exc:
            await self.readexactly(exc.consumed)  # what is held now; the LF, if held, next
            self._discarded = exc.consumed
            raise CommandLineRefused(REPLY_COMMAND_TOO_LONG) from None
        if b"\0" in line:
            raise CommandLineRefused(REPLY_NUL_IN_COMMAND)
        return line

    async def _discard_line(self) -> None:
        """Read and drop the rest of an overlong line, through its LF."""
        while True:
            try:
                self._discarded += len(await super().readuntil(b"\n"))
                break
            except asyncio.LimitOverrunError as exc:
                self._discarded += len(await self.readexactly(exc.consumed))
            if self._discarded > self.discard_limit:
                raise CommandLineRefused(REPLY_BAD_LINES_CLOSING, endless=True)
        self._discarded = -1

    def holds_command_line(self) -> bool:
        """True when a whole command line is already buffered (the client pipelined)."""
        return self._buffer.find(b"\n") >= 0

    @contextlib.contextmanager
    def reading_data(self, chunk: int) -> Iterator[None]:
        """Within it, the buffer holds up to `chunk` bytes (DATA's pieces)."""
        self._limit = chunk  # asyncio.StreamReader's own limit, of this instance
        try:
            yield
        finally:
            self._limit = self.command_limit


async def _read_until(reader: asyncio.StreamReader, separator: bytes) -> tuple[bytes, bool]:
    """(bytes through `separator`, False), or (what precedes it, True) when that is
    more than the reader's buffer holds. Never consumes part of a `separator`."""
    try:
        return await reader.readuntil(separator), False
    except asyncio.LimitOverrunError as exc:
        # `consumed` stops short of any separator, even one the buffer holds only
        # the start of, so the next search still finds it whole.
        return await reader.readexactly(exc.consumed), True


async def read_data(
    reader: asyncio.StreamReader,
    size_limit: int | None,
    *,
    count_stuffing: bool = True,
    whole_in_buffer: bool = False,
) -> bytes | None:
    """Read a DATA payload through its end-of-data line and return the message with
    dot-stuffing undone (RFC 5321 section 4.5.2), or None when it is larger than
    `size_limit` (None = no limit): then the rest is still read, in the reader's
    buffer-sized pieces, and dropped, so the session can go on. Nothing after the
    end-of-data line is consumed: pipelined commands stay in `reader`.

    Only CRLF "." CRLF ends the message (after the DATA command's own CRLF, a "."
    line at the very start too); bare CR and LF are content. What counts toward
    `size_limit`:

    count_stuffing: True (aiosmtpd's rule): the bytes as sent before the end-of-data
        line, the dots of dot-stuffing included. False: the message's own bytes.
    whole_in_buffer: True for a reader whose buffer holds a whole message at the
        limit (the Bridge before its reader was bounded; the DATA bench's baseline):
        a stretch of data that overruns the buffer without an end-of-data line is
        too big at once. False (every server now): it is read in buffer-sized
        pieces and counted.

    The message starts at a line start. From there one byte tells whether a line
    starts with "."; from anywhere else the next END_OF_DATA lies wholly in the
    unread data, so one `readuntil` finds it (or fills the buffer).
    """
    parts: list[bytes] = []
    size = 0
    too_big = False
    tail = CRLF  # the last two bytes read, here the DATA command's line end
    while True:
        ended = overran = False
        dots = 0
        if tail == CRLF:  # at a line start
            raw = chunk = await reader.readexactly(1)
            if chunk == b".":
                chunk, overran = await _read_until(reader, CRLF)
                if chunk == CRLF:  # "." alone: the end of the data
                    break
                dots = 1
                # Only its last two bytes are needed (for `tail`): no copy of a long line.
                raw = chunk if len(chunk) >= 2 else b"." + chunk
        elif tail[-1:] == b"\r":  # a CRLF may straddle the pieces: take one byte
            raw = chunk = await reader.readexactly(1)
        else:
            raw, overran = await _read_until(reader, END_OF_DATA)
            chunk = raw
            if not overran:
                ended = True
                chunk = chunk[:-3]  # keep the last line's CRLF, drop ".\r\n"
            if not too_big:
                dots = chunk.count(b"\r\n.")
                if dots:
                    chunk = chunk.replace(b"\r\n.", b"\r\n")
        if not too_big:
            size += (len(chunk) + dots) if count_stuffing else len(chunk)
            if (overran and whole_in_buffer) or (size_limit is not None and size > size_limit):
                too_big = True
                parts.clear()
            else:
                parts.append(chunk)
        if ended:
            break
        tail = raw[-2:] if len(raw) >= 2 else tail[-1:] + raw
    return None if too_big else b"".join(parts)


class WireSMTP(PipelinedReplies, SMTP):
    """aiosmtpd's SMTP protocol with `parse_simple_path` for MAIL/RCPT and `read_data` for
    DATA. A server subclasses it, sets the class attributes below to its own rules
    and reply texts, and implements `message_received`.

    DATA follows aiosmtpd's order: HELO first, AUTH when required, a recipient, no
    argument, then 354, the message, and the reply `message_received` gives, after
    which the next transaction starts clean (even if that hook raised).
    """

    reply_need_rcpt = REPLY_NEED_RCPT
    reply_data_syntax = REPLY_DATA_SYNTAX
    reply_start_data = REPLY_START_DATA
    # How `data_size_limit` is applied: see `read_data`.
    count_stuffing = True
    whole_in_buffer = False
    # The reader's limits (see `CommandLineReader`): aiosmtpd reads line_length_limit
    # as its StreamReader's limit, here the command line cap.
    line_length_limit = COMMAND_LINE_CAP
    data_chunk = DATA_CHUNK
    overlong_line_discard = OVERLONG_LINE_DISCARD
    # Parameter keywords (upper case) of MAIL and of RCPT the server implements itself:
    # see the module docstring. Set per server, or per instance.
    mail_extension_keywords: frozenset[str] = frozenset()
    rcpt_extension_keywords: frozenset[str] = frozenset()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # aiosmtpd built the protocol over a plain StreamReader: build it again over
        # ours, before any connection (the constructor only keeps the reader).
        self.line_reader = CommandLineReader(limit=self.line_length_limit,
                                             discard_limit=self.overlong_line_discard, loop=self.loop)
        asyncio.StreamReaderProtocol.__init__(self, self.line_reader,
                                              client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.line_reader.before_wait = self.send_held_replies
        self._refused_lines = 0
        self._close_after_reply = False
        # The current command's parameters of `*_extension_keywords`, as written
        # ("KEY=VALUE"), for the MAIL or RCPT hook.
        self.extension_params: list[str] = []
        self._taking: frozenset[str] = frozenset()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's own check of local_part_limit comes after its parser: leave
        # that case to it.
        address, params = None, None
        if not self.local_part_limit:
            simple = parse_simple_path(arg)
            if simple is not None:
                address, params = simple
        if address is None:
            try:
                address, params = super()._getaddr(arg)
            except (IndexError, ValueError):
                # The stdlib's address parser under aiosmtpd raises IndexError on a
                # lone "<" (`MAIL FROM:<`), which aiosmtpd does not catch: a
                # malformed address, answered as one (501), not a 451 and a traceback.
                return None, None
        if params and self._taking and self.session is not None and self.session.extended_smtp:
            params, self.extension_params = take_params(params, self._taking)
        return address, params

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._with_extensions(super().smtp_MAIL, arg, self.mail_extension_keywords)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._with_extensions(super().smtp_RCPT, arg, self.rcpt_extension_keywords)

    async def _with_extensions(self, command, arg: str | None, keywords: frozenset[str]) -> None:
        self.extension_params = []
        self._taking = keywords
        try:
            await command(arg)
        finally:
            self._taking = frozenset()

    # -- command lines ------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        """aiosmtpd's push, with its line-too-long reply replaced by ours (and counted),
        closing the connection after a reply that says so."""
        if status == AIOSMTPD_COMMAND_TOO_LONG:
            status = self._refused_line(REPLY_COMMAND_TOO_LONG)
        await super().push(status)
        if self._close_after_reply:
            # As aiosmtpd's QUIT does: no pipelined command after the 421 is run.
            self._close_transport()
            if self._handler_coroutine is not None:
                self._handler_coroutine.cancel()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, CommandLineRefused):
            return self._refused_line(error.reply, closing=error.endless)
        return await super().handle_exception(error)

    def _refused_line(self, reply: str, *, closing: bool = False) -> str:
        """`reply` to a refused command line, or the 421 (and a close after it) when
        it is one too many."""
        self._refused_lines += 1
        if closing or self._refused_lines >= MAX_REFUSED_LINES:
            log.warning("%s: closing after %d refused command line(s)", _peer(self), self._refused_lines)
            self._close_after_reply = True
            return REPLY_BAD_LINES_CLOSING.format(host=self.hostname)
        return reply

    # -- DATA ---------------------------------------------------------------

    def message_in_flight(self) -> contextlib.AbstractContextManager[object]:
        """Held from the 354 until the reply to the message is sent (a server that
        waits for messages in DATA before it stops counts them here)."""
        return contextlib.nullcontext()

    async def message_received(self, content: bytes | None) -> str:
        """The reply to the end of DATA: `content` is the message, or None when it
        was over the size limit (and has been read to its end)."""
        raise NotImplementedError

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(self.reply_need_rcpt)
            return
        if arg:
            await self.push(self.reply_data_syntax)
            return
        with self.message_in_flight(), self.replies_in_data():
            await self.push(self.reply_start_data)
            try:
                with self.line_reader.reading_data(self.data_chunk):
                    content = await read_data(
                        self.line_reader,  # aiosmtpd's _reader, see the module docstring
                        self.data_size_limit,
                        count_stuffing=self.count_stuffing,
                        whole_in_buffer=self.whole_in_buffer,
                    )
            except asyncio.IncompleteReadError:  # the client went away mid-message
                self._close_transport()
                return
            except asyncio.CancelledError:  # the connection was lost (aiosmtpd does the same)
                self._close_transport()
                raise
            try:
                status = await self.message_received(content)
            finally:
                self._set_post_data_state()
            await self.push(status)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _peer(protocol: SMTP) -> str:
    session = protocol.session
    peer = session.peer if session is not None else None
    return str(peer[0]) if peer else "unknown"
