"""`poolmta sink` (``python -m dataplane.sink``): a destination MTA for demos, tests
and benchmarks.

It accepts every message, or answers per recipient by rule (`dataplane.sink_rules`:
``bounce*=550``, ``defer*=451x2``, ``slow*=delay:2.0`` by default), and records the
address each client connected FROM: that is what proves mail left from a Pool's IP.

Files other processes read:

``--log PATH`` (JSON Lines, appended; each line written and flushed before the
    client gets its 250): one object per accepted message with ``n`` (its sequence
    number, also the ``<n>.eml`` name under ``--store``), ``peer``, ``listen`` (the
    sink address it reached), ``helo``, ``mail_from``, ``rcpts``, ``size`` (bytes,
    dot-stuffing removed), ``message_id``, ``x-virtual-mta``, ``x-feedtype``,
    ``x-zone``, ``x-serverid`` (null when absent) and ``received_at`` (Unix seconds).
``--counts-file PATH`` (one JSON object, replaced atomically at most every 200 ms
    when something changed, at start and on exit): ``accepted`` (messages),
    ``accepted_rcpts``, ``rejected`` (5xx RCPT replies), ``deferred`` (4xx RCPT
    replies), ``hung`` (messages held by a ``hang`` rule), ``connections``, ``bytes``,
    ``by_peer`` ({peer: accepted messages}), ``peers`` ({peer: {connections,
    accepted, rejected, deferred, hung}}), ``rcpt_attempts`` ({recipient, lower-cased:
    RCPTs that matched a rule}), ``listen``, ``pid``, ``updated_at`` and ``final``
    (true in the copy written on exit).
``--store DIR``: each accepted message as ``DIR/<n>.eml``, exactly the bytes
    received (numbering restarts at 1 on every run: give each run its own DIR).

Once listening it prints ``sink ready listen=HOST:PORT[,HOST:PORT...]`` (real ports,
so ``--listen 127.0.0.1:0`` works) and flushes. SIGTERM or Ctrl-C: stop, write the
final counts, print them with ``--print-counts``, exit 0. SIGUSR1 prints them now.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from dataplane.config import format_listen, parse_listen
from dataplane.sink_rules import DEFAULT_RULES, ActionKind, Rule, RuleSet, parse_rule

log = logging.getLogger("poolmta.sink")

DEFAULT_LISTEN = "127.0.0.1:2626"
# aiosmtpd's own default (DATA_SIZE_DEFAULT); advertised in EHLO SIZE.
DEFAULT_MAX_MESSAGE_SIZE = 32 * 1024 * 1024
# RFC 5321 section 4.5.3.2.7: a server should wait at least 5 minutes for a command.
DEFAULT_IDLE_TIMEOUT = 300.0
COUNTS_INTERVAL = 0.2
SHOW_LAST_MAX_BYTES = 16 * 1024
SHOW_RCPT_ATTEMPTS = 20
# The headers copied into each --log record (lower case, as matched).
LOGGED_HEADERS = ("message-id", "x-virtual-mta", "x-feedtype", "x-zone", "x-serverid")

READY_LINE = "sink ready listen={}"
BANNER_IDENT = "poolmta sink"
RCPT_OK = "250 2.1.5 Ok"
DATA_START = "354 End data with <CR><LF>.<CR><LF>"
DATA_OK = "250 2.0.0 Ok: queued as {n}"
DATA_TOO_BIG = "552 5.3.4 Message too big for this sink"
DATA_NOT_RECORDED = "451 4.3.0 The sink could not record the message"
DATA_SHUTTING_DOWN = "421 4.3.2 The sink is shutting down"
NEED_RCPT = "503 Error: need RCPT command"
DATA_SYNTAX = "501 Syntax: DATA"

_DATA_END = b".\r\n"
# RFC 5321 section 4.1.2 Path with a Dot-string local part and a plain domain,
# then the parameters (no comments, which aiosmtpd's parser would drop).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>[ \t]*([^(]*)", re.ASCII)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkConfig:
    """Everything one sink process needs, built once from the command line.

    listen: addresses to listen on (port 0 = any free port).
    rules: checked in order per recipient; the first match decides.
    store_dir, log_path, counts_path: see the module docstring; None = off.
    print_every: seconds between count tables on stdout; None = only on exit/SIGUSR1.
    show_last: raw messages kept in memory and printed with the counts.
    """

    listen: tuple[tuple[str, int], ...] = (parse_listen(DEFAULT_LISTEN),)
    hostname: str = "localhost"
    rules: tuple[Rule, ...] = DEFAULT_RULES
    store_dir: Path | None = None
    log_path: Path | None = None
    counts_path: Path | None = None
    print_counts: bool = False
    print_every: float | None = None
    show_last: int = 0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("the sink needs at least one listen address")
        if self.print_every is not None and self.print_every <= 0:
            raise ValueError("--print-every must be a positive number of seconds")
        if self.show_last < 0:
            raise ValueError("--show-last must be 0 or more")
        if self.max_message_size < 1:
            raise ValueError("--max-message-size must be at least 1 byte")
        if self.idle_timeout <= 0:
            raise ValueError("--idle-timeout must be a positive number of seconds")


def _argument(parse):
    """Wrap a parser raising ValueError so argparse shows our message, not 'invalid value'."""

    @functools.wraps(parse)
    def convert(value: str):
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _listen_list(value: str) -> list[tuple[str, int]]:
    return [parse_listen(part) for part in value.split(",") if part.strip()] or [parse_listen(value)]


def _seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _count(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poolmta sink",
        description="A destination MTA for demos, tests and benchmarks: accepts everything, "
        "or answers per recipient by rule, and records the address each client connected from.",
        epilog="Rules: PATTERN=ACTION, PATTERN a case-insensitive glob on the local part "
        "(or the whole address if it contains @), ACTION one of 250, CODE[xN][:text] "
        "(4xx/5xx at RCPT; xN = only the first N attempts per recipient), delay:SECONDS "
        "(hold the DATA reply), hang (never answer DATA). Defaults, checked after yours: "
        + ", ".join(str(rule) for rule in DEFAULT_RULES)
        + ".",
    )
    parser.add_argument(
        "--listen",
        action="append",
        type=_argument(_listen_list),
        metavar="HOST:PORT",
        help=f"address to listen on; repeatable or comma-separated; port 0 = any (default {DEFAULT_LISTEN})",
    )
    parser.add_argument("--hostname", help="name in the banner and EHLO reply (default: this host's name)")
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        type=_argument(parse_rule),
        metavar="PATTERN=ACTION",
        help="answer matching recipients by rule; repeatable; checked in order, before the defaults",
    )
    parser.add_argument("--no-default-rules", action="store_true", help="drop the default rules")
    parser.add_argument("--store", type=Path, metavar="DIR", help="write each accepted message to DIR/<n>.eml")
    parser.add_argument("--log", type=Path, metavar="PATH", help="append one JSON line per accepted message")
    parser.add_argument("--counts-file", type=Path, metavar="PATH", help="keep a JSON file of counts up to date")
    parser.add_argument("--print-counts", action="store_true", help="print a table of counts on exit")
    parser.add_argument("--print-every", type=_argument(_seconds), metavar="SECONDS", help="print it periodically too")
    parser.add_argument(
        "--show-last",
        type=_argument(_count),
        default=0,
        metavar="K",
        help="keep the last K raw messages in memory and print them with the counts",
    )
    parser.add_argument(
        "--max-message-size",
        type=_argument(_count),
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help=f"answer 552 to larger messages (default {DEFAULT_MAX_MESSAGE_SIZE})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_argument(_seconds),
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close connections idle this long, hung ones included (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> SinkConfig:
    """Build the SinkConfig from the command line (argparse exits 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    listen = [address for group in args.listen or [[parse_listen(DEFAULT_LISTEN)]] for address in group]
    rules = tuple(args.rule) + (() if args.no_default_rules else DEFAULT_RULES)
    try:
        return SinkConfig(
            listen=tuple(dict.fromkeys(listen)),
            # Resolved once: aiosmtpd would call socket.getfqdn() (a DNS lookup) per connection.
            hostname=args.hostname or socket.gethostname(),
            rules=rules,
            store_dir=args.store,
            log_path=args.log,
            counts_path=args.counts_file,
            print_counts=args.print_counts,
            print_every=args.print_every,
            show_last=args.show_last,
            max_message_size=args.max_message_size,
            idle_timeout=args.idle_timeout,
        )
    except ValueError as exc:
        parser.error(str(exc))


# ---------------------------------------------------------------------------
# Per-message work, kept to byte searches: the sink is the benchmark's destination
# ---------------------------------------------------------------------------


async def read_data(reader: asyncio.StreamReader, size_limit: int | None) -> bytes | None:
    """Read a DATA payload through its terminating ``<CRLF>.<CRLF>`` and return the
    message with dot-stuffing undone (RFC 5321 section 4.5.2), or None when it is
    larger than `size_limit` (counted as aiosmtpd does: the stuffed bytes before the
    terminator). Nothing after the terminator is consumed, so pipelined commands stay
    in `reader`.

    aiosmtpd reads DATA one line per await; this reads up to each ``.<CRLF>`` (or a
    reader-limit's worth), which is a few awaits per message, and checks whether that
    dot starts a line.
    """
    buf = bytearray()
    total = 0
    too_big = False
    while True:
        try:
            chunk = await reader.readuntil(_DATA_END)
            at_dot_line = True
        except asyncio.LimitOverrunError as exc:
            chunk = await reader.readexactly(exc.consumed)
            at_dot_line = False
        buf += chunk
        total += len(chunk)
        # The terminator is a "." line: ".\r\n" at the very start or right after a CRLF.
        if at_dot_line and (total == 3 or buf[-5:-3] == b"\r\n"):
            break
        if too_big or (size_limit is not None and total - 3 > size_limit):
            # Over the limit: keep draining, but only what the terminator check needs.
            too_big = True
            del buf[:-4]
    if too_big or (size_limit is not None and total - 3 > size_limit):
        return None
    del buf[-3:]
    if buf[:1] == b".":
        del buf[0]
    return bytes(buf.replace(b"\r\n.", b"\r\n"))


def header_block(message: bytes) -> bytes:
    """The message's header section, its last line ending included (CRLF or bare LF)."""
    if message[:1] == b"\n" or message[:2] == b"\r\n":
        return b""
    end = message.find(b"\r\n\r\n")
    limit = len(message) if end < 0 else end
    bare = message.find(b"\n\n", 0, limit)
    if bare >= 0:
        return message[: bare + 1]
    return message if end < 0 else message[: end + 2]


def header_fields(message: bytes, names: tuple[str, ...] = LOGGED_HEADERS) -> dict[str, str | None]:
    """The first value of each header in `names` (lower-case), unfolded and stripped;
    None when absent. Only the header block is searched; no email parsing."""
    text = b"\n" + header_block(message).replace(b"\r\n", b"\n")
    lowered = text.lower()
    fields: dict[str, str | None] = {}
    for name in names:
        start = lowered.find(b"\n" + name.encode() + b":")
        if start < 0:
            fields[name] = None
            continue
        start += len(name) + 2
        end = text.find(b"\n", start)
        # RFC 5322 section 2.2.3: a line starting with WSP continues the field.
        while end >= 0 and text[end + 1 : end + 2] in (b" ", b"\t"):
            end = text.find(b"\n", end + 1)
        value = text[start:] if end < 0 else text[start:end]
        fields[name] = value.replace(b"\n", b"").strip().decode("utf-8", "replace")
    return fields


def parse_simple_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) for the common ``<local@domain> [PARAMS]`` argument of
    MAIL/RCPT, exactly as aiosmtpd's parser would give them; None for anything else."""
    match = _SIMPLE_PATH.fullmatch(arg)
    return None if match is None else (match[1], match[2])


@functools.lru_cache(maxsize=4096)
def peer_ip(host: str) -> str:
    """The client address as people write it (IPv4-mapped IPv6 shown as IPv4)."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


# ---------------------------------------------------------------------------
# Counts
# ---------------------------------------------------------------------------


class PeerCounts:
    __slots__ = ("connections", "accepted", "rejected", "deferred", "hung")

    def __init__(self) -> None:
        self.connections = self.accepted = self.rejected = self.deferred = self.hung = 0

    def as_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class SinkCounts:
    """What the sink has seen; `changes` increases on every update."""

    def __init__(self) -> None:
        self.accepted = 0
        self.accepted_rcpts = 0
        self.rejected = 0
        self.deferred = 0
        self.hung = 0
        self.connections = 0
        self.bytes = 0
        self.peers: dict[str, PeerCounts] = {}
        # Only recipients that matched a rule: bounded even in a benchmark.
        self.rcpt_attempts: dict[str, int] = {}
        self.changes = 0

    def peer(self, address: str) -> PeerCounts:
        counts = self.peers.get(address)
        if counts is None:
            counts = self.peers[address] = PeerCounts()
        return counts

    def as_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "accepted_rcpts": self.accepted_rcpts,
            "rejected": self.rejected,
            "deferred": self.deferred,
            "hung": self.hung,
            "connections": self.connections,
            "bytes": self.bytes,
            "by_peer": {address: peer.accepted for address, peer in self.peers.items() if peer.accepted},
            "peers": {address: peer.as_json() for address, peer in self.peers.items()},
            "rcpt_attempts": dict(self.rcpt_attempts),
        }

    def render(self) -> str:
        """A plain-text table (stdout may be a pipe a parent reads; no terminal styling)."""
        lines = [
            f"sink counts at {time.strftime('%H:%M:%S')}: accepted {self.accepted} "
            f"({self.accepted_rcpts} rcpts, {self.bytes} bytes), rejected {self.rejected}, "
            f"deferred {self.deferred}, hung {self.hung}, connections {self.connections}"
        ]
        columns = PeerCounts.__slots__
        rows = [["peer", *columns]] + [
            [address, *(str(getattr(peer, name)) for name in columns)] for address, peer in sorted(self.peers.items())
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append(
                "  "
                + row[0].ljust(widths[0])
                + "".join("  " + cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))
            )
        if self.rcpt_attempts:
            attempts = sorted(self.rcpt_attempts.items())
            lines.append("  rule-matched recipients: attempts")
            lines.extend(f"    {rcpt}: {n}" for rcpt, n in attempts[:SHOW_RCPT_ATTEMPTS])
            if len(attempts) > SHOW_RCPT_ATTEMPTS:
                lines.append(f"    ... and {len(attempts) - SHOW_RCPT_ATTEMPTS} more (see --counts-file)")
        return "\n".join(lines)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` so readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The SMTP side
# ---------------------------------------------------------------------------


class SinkSession(Session):
    """aiosmtpd's Session plus what the sink works out once per connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.peer_ip = ""
        self.listen = ""
        self.peer_counts = PeerCounts()


class SinkEnvelope(Envelope):
    """aiosmtpd's Envelope plus what the rules decided for its recipients."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.0
        self.hang = False


class Sink:
    """The aiosmtpd handler (plain object, `handle_*` hooks) and what it records."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.rules = RuleSet(config.rules)
        self.counts = SinkCounts()
        self.listen: list[str] = []
        self.closing = False
        self.last: collections.deque[tuple[int, str, bytes]] = collections.deque(maxlen=config.show_last or 1)
        self._written_changes = -1
        self._log = None
        if config.store_dir is not None:
            config.store_dir.mkdir(parents=True, exist_ok=True)
        if config.log_path is not None:
            self._log = open(config.log_path, "ab")  # noqa: SIM115 - open for the process's life

    # -- aiosmtpd hooks -----------------------------------------------------

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd handles pipelined commands but does not say so (RFC 2920).
        session.host_name = hostname
        responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: SinkSession, envelope: SinkEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        rule = self.rules.match(address)
        if rule is not None:
            counts = self.counts
            key = address.lower()
            attempt = counts.rcpt_attempts.get(key, 0) + 1
            counts.rcpt_attempts[key] = attempt
            counts.changes += 1
            reply = rule.rcpt_reply(attempt)
            if reply is not None:
                if reply[0] == "5":
                    counts.rejected += 1
                    session.peer_counts.rejected += 1
                else:
                    counts.deferred += 1
                    session.peer_counts.deferred += 1
                return reply
            action = rule.action
            if action.kind is ActionKind.DELAY:
                envelope.delay = max(envelope.delay, action.seconds)
            elif action.kind is ActionKind.HANG:
                envelope.hang = True
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: SinkSession, envelope: SinkEnvelope) -> str:
        if envelope.hang:
            self.counts.hung += 1
            session.peer_counts.hung += 1
            self.counts.changes += 1
            # Until the client gives up (connection lost cancels this) or the idle timeout.
            await asyncio.Event().wait()
        if envelope.delay:
            await asyncio.sleep(envelope.delay)
        if self.closing:
            return DATA_SHUTTING_DOWN
        return self._accept(session, envelope)

    # -- recording ------------------------------------------------------------

    def connected(self, session: SinkSession) -> None:
        session.peer_counts = self.counts.peer(session.peer_ip)
        session.peer_counts.connections += 1
        self.counts.connections += 1
        self.counts.changes += 1

    def _accept(self, session: SinkSession, envelope: SinkEnvelope) -> str:
        counts = self.counts
        n = counts.accepted + 1
        content: bytes = envelope.original_content or b""
        try:
            if self.config.store_dir is not None:
                (self.config.store_dir / f"{n}.eml").write_bytes(content)
            if self._log is not None:
                self._log.write(self._log_line(n, session, envelope, content))
                self._log.flush()
        except OSError as exc:
            log.warning("could not record message %d: %s", n, exc)
            return DATA_NOT_RECORDED
        counts.accepted = n
        counts.accepted_rcpts += len(envelope.rcpt_tos)
        counts.bytes += len(content)
        counts.changes += 1
        session.peer_counts.accepted += 1
        if self.config.show_last:
            self.last.append((n, session.peer_ip, content))
        return DATA_OK.format(n=n)

    @staticmethod
    def _log_line(n: int, session: SinkSession, envelope: SinkEnvelope, content: bytes) -> bytes:
        headers = header_fields(content)
        record = {
            "n": n,
            "peer": session.peer_ip,
            "listen": session.listen,
            "helo": session.host_name,
            "mail_from": envelope.mail_from,
            "rcpts": envelope.rcpt_tos,
            "size": len(content),
            "message_id": headers["message-id"],
            "x-virtual-mta": headers["x-virtual-mta"],
            "x-feedtype": headers["x-feedtype"],
            "x-zone": headers["x-zone"],
            "x-serverid": headers["x-serverid"],
            "received_at": time.time(),
        }
        # ensure_ascii: addresses may carry surrogate escapes of non-UTF-8 bytes.
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"

    # -- reporting ------------------------------------------------------------

    def counts_json(self, final: bool = False) -> dict[str, Any]:
        data = self.counts.as_json()
        data.update(listen=self.listen, pid=os.getpid(), updated_at=time.time(), final=final)
        return data

    def write_counts(self, final: bool = False) -> None:
        if self.config.counts_path is None:
            return
        changes = self.counts.changes
        try:
            write_json_atomic(self.config.counts_path, self.counts_json(final))
        except OSError as exc:
            log.warning("could not write %s: %s", self.config.counts_path, exc)
            return
        self._written_changes = changes

    def write_counts_if_changed(self) -> None:
        if self.counts.changes != self._written_changes:
            self.write_counts()

    def report(self) -> str:
        parts = [self.counts.render()]
        if self.config.show_last:
            for n, peer, content in self.last:
                shown = content[:SHOW_LAST_MAX_BYTES].decode("utf-8", "replace")
                parts.append(f"--- message {n} from {peer}, {len(content)} bytes ---\n{shown.rstrip()}")
                if len(content) > SHOW_LAST_MAX_BYTES:
                    parts.append(f"--- ({len(content) - SHOW_LAST_MAX_BYTES} more bytes not shown) ---")
        return "\n".join(parts)

    def print_report(self) -> None:
        print(self.report(), flush=True)

    def close(self) -> None:
        self.write_counts(final=True)
        if self._log is not None:
            self._log.close()
            self._log = None


class SinkSMTP(SMTP):
    """aiosmtpd's SMTP protocol with a bulk DATA reader and per-connection peer facts."""

    # The StreamReader's buffer limit: DATA is read in pieces up to this size. Command
    # lines are still held to aiosmtpd's command_size_limit.
    line_length_limit = 64 * 1024

    def __init__(self, handler: Sink, live: set[SinkSMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._live = live

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd runs every MAIL/RCPT path through the email package's RFC 5322
        # parser: about a quarter of the sink's CPU per message in a benchmark.
        if not self.local_part_limit:
            simple = parse_simple_path(arg)
            if simple is not None:
                return simple
        return super()._getaddr(arg)

    def _create_session(self) -> SinkSession:
        return SinkSession(self.loop)

    def _create_envelope(self) -> SinkEnvelope:
        return SinkEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        session = self.session
        assert isinstance(session, SinkSession)
        session.peer_ip = peer_ip(session.peer[0])
        local = transport.get_extra_info("sockname")
        session.listen = format_listen(local[0], local[1]) if local else ""
        self.event_handler.connected(session)
        self._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._live.discard(self)
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, SinkEnvelope)
        if not envelope.rcpt_tos:
            await self.push(NEED_RCPT)
            return
        if arg:
            await self.push(DATA_SYNTAX)
            return
        await self.push(DATA_START)
        try:
            content = await read_data(self._reader, self.data_size_limit)
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        except asyncio.CancelledError:
            # The connection went away mid-DATA (aiosmtpd does the same).
            self._writer.close()
            raise
        if content is None:
            self._set_post_data_state()
            await self.push(DATA_TOO_BIG)
            return
        envelope.content = envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


# ---------------------------------------------------------------------------
# Process
# ---------------------------------------------------------------------------


async def _every(seconds: float, action) -> None:
    while True:
        await asyncio.sleep(seconds)
        action()


async def serve(config: SinkConfig) -> int:
    """Run the sink until SIGTERM or SIGINT; 0 on a clean stop, 1 if it cannot listen
    or open its files."""
    loop = asyncio.get_running_loop()
    try:
        sink = Sink(config)
    except OSError as exc:
        print(f"sink: cannot open its files: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = asyncio.Event()
    live: set[SinkSMTP] = set()
    servers: list[asyncio.Server] = []
    tasks: list[asyncio.Task[None]] = []
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    for signum in handled[:2]:
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, sink.print_report)

    def protocol() -> SinkSMTP:
        return SinkSMTP(
            sink,
            live,
            hostname=config.hostname,
            ident=BANNER_IDENT,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=config.idle_timeout,
            loop=loop,
        )

    try:
        for host, port in config.listen:
            try:
                servers.append(await loop.create_server(protocol, host, port))
            except OSError as exc:
                print(f"sink: cannot listen on {format_listen(host, port)}: {exc}", file=sys.stderr, flush=True)
                return 1
        sink.listen = [format_listen(*sock.getsockname()[:2]) for server in servers for sock in server.sockets]
        sink.write_counts()
        print(READY_LINE.format(",".join(sink.listen)), flush=True)
        if config.counts_path is not None:
            tasks.append(asyncio.create_task(_every(COUNTS_INTERVAL, sink.write_counts_if_changed)))
        if config.print_every is not None:
            tasks.append(asyncio.create_task(_every(config.print_every, sink.print_report)))
        await stop.wait()
    finally:
        sink.closing = True
        for server in servers:
            server.close()
        for task in tasks:
            task.cancel()
        for connection in list(live):
            if connection.transport is not None:
                connection.transport.close()
        # Let connection_lost run (it cancels the sessions, hung ones included).
        for _ in range(100):
            if not live:
                break
            await asyncio.sleep(0.01)
        sink.close()
        for signum in handled:
            loop.remove_signal_handler(signum)
    if config.print_counts:
        sink.print_report()
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sink: %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
