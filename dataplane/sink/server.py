"""The sink's SMTP side and its process: `Sink`, the aiosmtpd handler that answers
each recipient by rule and records what it accepts; `SinkSMTP`, its protocol class
(the wire parsing is the Bridge's, `dataplane.smtp_wire`); `serve`, the process.

Files it writes that other processes read (``--counts-file``: `dataplane.sink.counts`):

``--log PATH`` (JSON Lines, appended; each line written and flushed before the
    client gets its 250): one object per accepted message with ``n`` (its sequence
    number, also the ``<n>.eml`` name under ``--store``), ``seq`` (the counts
    file's ``seq`` once it counts this message), ``peer``, ``listen`` (the sink
    address it reached), ``helo``, ``mail_from``, ``rcpts``, ``size`` (bytes,
    dot-stuffing removed), ``message_id``, ``x-virtual-mta``, ``x-feedtype``,
    ``x-zone``, ``x-serverid`` (null when absent), ``dsn_params`` (with ``--dsn``:
    ``{"mail": [...], "rcpts": [[...], ...]}``, the RFC 3461 parameters of MAIL and
    of each accepted RCPT as the client wrote them) and ``received_at`` (Unix seconds).
``--store DIR``: each accepted message as ``DIR/<n>.eml``, exactly the bytes
    received (numbering restarts at 1 on every run: give each run its own DIR).

Once listening it prints ``sink ready listen=HOST:PORT[,HOST:PORT...]`` (real ports,
so ``--listen 127.0.0.1:0`` works) and flushes. SIGTERM or Ctrl-C: stop, write the
final counts, print them with ``--print-counts``, exit 0. SIGUSR1 prints them now.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import json
import logging
import signal
import sys
import time
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from control.contract.headers import STAMPED_HEADER_NAMES
from control.contract.runtime import SINK_READY
from dataplane.config import format_listen
from dataplane.message_headers import header_fields
from dataplane.smtp_wire import WireSMTP

from .config import SinkConfig
from .counts import (
    COUNTS_INTERVAL,
    CountsFile,
    PeerCounts,
    SinkCounts,
    print_report,
    report_console,
)
from .rules import ActionKind, RuleSet

log = logging.getLogger("poolmta.sink")

# The headers copied into each --log record (lower case, as matched): the message id
# and the attribution headers the data plane stamps.
LOGGED_HEADERS = ("message-id", *STAMPED_HEADER_NAMES)

BANNER_IDENT = "poolmta sink"
MAIL_OK = "250 OK"  # aiosmtpd's own reply to MAIL
EHLO_DSN = "250-DSN"  # RFC 3461 4, with --dsn
DSN_MAIL_KEYWORDS = frozenset({"RET", "ENVID"})
DSN_RCPT_KEYWORDS = frozenset({"NOTIFY", "ORCPT"})
RCPT_OK = "250 2.1.5 Ok"
DATA_OK = "250 2.0.0 Ok: queued as {n}"
DATA_TOO_BIG = "552 5.3.4 Message too big for this sink"
DATA_NOT_RECORDED = "451 4.3.0 The sink could not record the message"
DATA_SHUTTING_DOWN = "421 4.3.2 The sink is shutting down"


# ---------------------------------------------------------------------------
# Per-message work, kept to byte searches: the sink is the benchmark's destination
# ---------------------------------------------------------------------------


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
        self.dsn_mail: list[str] = []  # RFC 3461 parameters of MAIL, as written (--dsn)
        self.dsn_rcpts: list[list[str]] = []  # and of each accepted RCPT


class Sink:
    """The aiosmtpd handler (plain object, `handle_*` hooks) and what it records."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.rules = RuleSet(config.rules)
        self.counts = SinkCounts()
        self.counts_file = None if config.counts_path is None else CountsFile(config.counts_path)
        self.console = report_console()
        self.listen: list[str] = []
        self.closing = False
        self.last: collections.deque[tuple[int, str, bytes]] = collections.deque(maxlen=config.show_last or 1)
        self._log = None
        if config.store_dir is not None:
            config.store_dir.mkdir(parents=True, exist_ok=True)
        if config.log_path is not None:
            self._log = open(config.log_path, "ab")  # noqa: SIM115 - open for the process's life

    # -- aiosmtpd hooks -----------------------------------------------------

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """EHLO's reply, with the PIPELINING that aiosmtpd supports but does not say (RFC 2920),
        and DSN with --dsn."""
        session.host_name = hostname
        responses.insert(-1, "250-PIPELINING")
        if self.config.dsn:
            responses.insert(-1, EHLO_DSN)
        return responses

    async def handle_MAIL(
        self, server: SinkSMTP, session: Session, envelope: SinkEnvelope, address: str, mail_options: list[str]
    ) -> str:
        """aiosmtpd's own MAIL, keeping the RFC 3461 parameters (--dsn) for the log."""
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.dsn_mail = list(server.extension_params)
        return MAIL_OK

    async def handle_RCPT(
        self, server: SMTP, session: SinkSession, envelope: SinkEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        """The first matching rule's reply, else 250 (a delay or hang rule marks the envelope)."""
        rule = self.rules.match(address)
        if rule is not None:
            reply = self.counts.record_rule_match(session.peer_counts, address, rule)
            if reply is not None:
                return reply
            action = rule.action
            if action.kind is ActionKind.DELAY:
                envelope.delay = max(envelope.delay, action.seconds)
            elif action.kind is ActionKind.HANG:
                envelope.hang = True
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.dsn_rcpts.append(list(server.extension_params))
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: SinkSession, envelope: SinkEnvelope) -> str:
        """Record the message and answer 250, after the envelope's delay; never, for a hang."""
        if envelope.hang:
            self.counts.record_hung(session.peer_counts)
            # Until the client gives up (connection lost cancels this) or the idle timeout.
            await asyncio.Event().wait()
        if envelope.delay:
            await asyncio.sleep(envelope.delay)
        if self.closing:
            return DATA_SHUTTING_DOWN
        return self._accept(session, envelope)

    # -- recording ------------------------------------------------------------

    def connected(self, session: SinkSession) -> None:
        """Count a new connection (its peer address and listen address are set)."""
        session.peer_counts = self.counts.record_connection(session.peer_ip)

    def _accept(self, session: SinkSession, envelope: SinkEnvelope) -> str:
        counts = self.counts
        # What the counts will say once this message is recorded.
        n, seq = counts.accepted + 1, counts.seq + 1
        content: bytes = envelope.original_content or b""
        try:
            if self.config.store_dir is not None:
                (self.config.store_dir / f"{n}.eml").write_bytes(content)
            if self._log is not None:
                self._log.write(self._log_line(n, seq, session, envelope, content))
                self._log.flush()
        except OSError as exc:
            log.warning("could not record message %d: %s", n, exc)
            return DATA_NOT_RECORDED
        counts.record_accepted(session.peer_counts, len(envelope.rcpt_tos), len(content),
                               notice=envelope.mail_from in ("", "<>"))
        if self.config.show_last:
            self.last.append((n, session.peer_ip, content))
        return DATA_OK.format(n=n)

    @staticmethod
    def _log_line(n: int, seq: int, session: SinkSession, envelope: SinkEnvelope, content: bytes) -> bytes:
        headers = header_fields(content, LOGGED_HEADERS)
        record = {
            "n": n,
            "seq": seq,
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
            "dsn_params": {"mail": envelope.dsn_mail, "rcpts": envelope.dsn_rcpts},
            "received_at": time.time(),
        }
        # ensure_ascii: addresses may carry surrogate escapes of non-UTF-8 bytes.
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"

    # -- reporting ------------------------------------------------------------

    def write_counts(self, final: bool = False) -> None:
        """Write the counts file now (when there is one)."""
        if self.counts_file is not None:
            self.counts_file.write(self.counts, self.listen, final)

    def write_counts_if_changed(self) -> None:
        """Write the counts file if something was recorded since the last write."""
        if self.counts_file is not None:
            self.counts_file.write_if_changed(self.counts, self.listen)

    def print_report(self) -> None:
        """Print the counts, and the last messages with --show-last."""
        print_report(self.console, self.counts, self.last if self.config.show_last else ())

    def close(self) -> None:
        """Write the final counts and close the log."""
        self.write_counts(final=True)
        if self._log is not None:
            self._log.close()
            self._log = None


class SinkSMTP(WireSMTP):
    """aiosmtpd's SMTP protocol with the shared wire parsing, aiosmtpd's rules for
    the DATA size, and per-connection peer facts."""

    def __init__(self, handler: Sink, live: set[SinkSMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._live = live
        if handler.config.dsn:  # take RFC 3461's parameters out of aiosmtpd's sight (smtp_wire)
            self.mail_extension_keywords = DSN_MAIL_KEYWORDS
            self.rcpt_extension_keywords = DSN_RCPT_KEYWORDS

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

    async def message_received(self, content: bytes | None) -> str:
        """552 for a message over --max-message-size, else the handler's reply."""
        if content is None:
            return DATA_TOO_BIG
        assert self.envelope is not None
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        return "250 OK" if status is MISSING else status


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
        print(SINK_READY + ",".join(sink.listen), flush=True)
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


