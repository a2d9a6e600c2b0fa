"""What a worker's two SMTP listeners share beyond the wire parsing of
`dataplane.smtp_wire`: the SMTP Bridge (`dataplane.smtp_bridge`) and the inbound
listener (`dataplane.inbound.listener`).

`ListenerSMTP` (one per connection) knows the client's address from the first
`connection_made` (STARTTLS calls it again), counts itself in its handler's
`sessions` and a message in DATA in its handler's `in_flight` (a stopping worker
waits on the one and says goodbye to the other, `dataplane.worker`), and answers
a connection with `refusal()` instead of the 220 banner when that is not None: by
default the 421 of a worker with no routing snapshot loaded, then the 421 of the
handler's connection caps (`dataplane.connection_caps`, across all workers) when
the client's address or the server is at its cap. `ListenerHandler` (one per
worker) holds those counts beside the configuration, snapshot loader and caps.

The replies both listeners give are here, each a named constant.

This relies on aiosmtpd 1.4's `_handle_client` coroutine (wrapped to refuse
before the banner) and its idle timer's `_timeout_cb` (wrapped to send a 421 first).

aiosmtpd's SMTP constructor, run for every connection, builds its command, AUTH and
hook tables from `dir()` of the session and of its handler, `inspect.getmembers`
reading every attribute on the way: 1-3 ms of CPU per connection (`bench/LOAD.md`).
Sessions and handlers here answer `dir()` with just the names those tables are built
from (`dispatch_names`, found once per class), so the tables come out the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from .config import DataplaneConfig
from .connection_caps import Admission, ConnectionCaps
from .smtp_hardening import HardenedSMTP
from .smtp_wire import WireSMTP
from .snapshot_loader import SnapshotLoader

# --- replies -----------------------------------------------------------------
REPLY_NO_SNAPSHOT = (
    "421 4.3.2 {host} Service not available: no routing snapshot of MTA server "
    "{server_id} has been loaded yet (control plane not published, or Redis unreachable); "
    "try again later"
)
REPLY_TOO_MANY_CONNECTIONS = "421 4.7.0 {host} Too many connections to this server; try again later"
REPLY_TOO_MANY_FROM_ADDRESS = "421 4.7.0 {host} Too many connections from {address}; try again later"
REPLY_IDLE_TIMEOUT = "421 4.4.2 {host} Idle too long; closing connection (timeout)"
REPLY_SHUTTING_DOWN = "421 4.3.2 {host} Service shutting down; try again later"
REPLY_MAIL_OK = "250 2.1.0 Ok"
REPLY_RCPT_OK = "250 2.1.5 Ok"
REPLY_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
REPLY_DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
REPLY_START_DATA = "354 End data with <CR><LF>.<CR><LF>"
REPLY_INTERNAL_ERROR = "451 4.3.0 Local error in processing; try again later"

EHLO_PIPELINING = "250-PIPELINING"

# The attribute prefixes aiosmtpd builds its tables from: AUTH mechanisms (on the
# session and the handler), SMTP commands (the session), hooks (the handler).
DISPATCH_PREFIXES = ("auth_", "smtp_", "handle_")
_dispatch_names: dict[type, list[str]] = {}


def dispatch_names(obj: object) -> list[str]:
    """The names of `obj`'s attributes that start with one of DISPATCH_PREFIXES, in
    `dir()` order; looked up once per class (instance attributes included, as the
    first instance has them)."""
    cls = type(obj)
    names = _dispatch_names.get(cls)
    if names is None:
        names = _dispatch_names[cls] = [name for name in object.__dir__(obj) if name.startswith(DISPATCH_PREFIXES)]
        names.sort()
    return names


class ListenerHandler:
    """The state one worker's listener keeps across its connections: the sessions
    open now and the messages in DATA, read by the worker when it stops."""

    def __init__(self, config: DataplaneConfig, *, loader: SnapshotLoader,
                 caps: ConnectionCaps | None = None) -> None:
        self.config = config
        self.loader = loader
        self.caps = caps  # None: no connection caps (tests of the protocol alone)
        self.sessions: set[ListenerSMTP] = set()
        self.in_flight = 0

    def __dir__(self) -> list[str]:
        # Read by aiosmtpd on every connection: see the module docstring.
        return dispatch_names(self)


class ListenerSMTP(HardenedSMTP, WireSMTP):
    """One connection to a worker's listener, counted by its `ListenerHandler`.

    A listener subclasses it with its size limit and `ident`, and may override
    `refusal` and `peer_known`.
    """

    reply_need_rcpt = REPLY_NEED_RCPT
    reply_data_syntax = REPLY_DATA_SYNTAX
    reply_start_data = REPLY_START_DATA

    event_handler: ListenerHandler

    def __init__(self, handler: ListenerHandler, *, hostname: str, tls_context, data_size_limit: int,
                 ident: str, loop: asyncio.AbstractEventLoop | None = None, **options) -> None:
        super().__init__(
            handler,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident=ident,
            tls_context=tls_context,
            timeout=handler.config.session_timeout,
            auth_required=False,
            loop=loop or asyncio.get_running_loop(),
            **options,
        )
        self.peer_address = ""
        self._admitted = False  # counted in the handler's caps

    def __dir__(self) -> list[str]:
        # Read by aiosmtpd's constructor: see the module docstring.
        return dispatch_names(self)

    # -- connection -------------------------------------------------------

    def peer_known(self) -> None:
        """Called once per connection, when `peer_address` is first set and before
        the session starts: for settings that depend on the client's address."""

    def refusal(self) -> str | None:
        """The reply sent instead of the banner (and the connection closed), or None
        to start the session: here the 421 when no routing snapshot is loaded."""
        handler = self.event_handler
        if handler.loader.current is None:
            return REPLY_NO_SNAPSHOT.format(host=self.hostname, server_id=handler.config.server_id)
        return None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = not self.peer_address
        if first:
            peer = transport.get_extra_info("peername")
            self.peer_address = str(peer[0]) if peer else "unknown"
            self.peer_known()
        super().connection_made(transport)
        if first:
            self.event_handler.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        handler = self.event_handler
        handler.sessions.discard(self)
        if self._admitted and handler.caps is not None:
            self._admitted = False
            handler.caps.release(self.peer_address)
        super().connection_lost(error)

    def idle_reply(self) -> str:
        """The 421 sent before a session idle for its timeout is closed."""
        return REPLY_IDLE_TIMEOUT.format(host=self.hostname)

    def _timeout_cb(self) -> None:
        # aiosmtpd closes an idle session silently (an internal, see the module
        # docstring): say why first (RFC 5321 3.8).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.idle_reply().encode() + b"\r\n")
        super()._timeout_cb()

    async def admission(self) -> str | None:
        """The 421 when the client's address or the server is at its connection cap,
        else None, the connection counted (until it is lost)."""
        caps = self.event_handler.caps
        if caps is None:
            return None
        verdict = await caps.admit(self.peer_address)
        if verdict is Admission.ADMITTED:
            self._admitted = True
            return None
        if verdict is Admission.ADDRESS_FULL:
            return REPLY_TOO_MANY_FROM_ADDRESS.format(host=self.hostname, address=self.peer_address)
        return REPLY_TOO_MANY_CONNECTIONS.format(host=self.hostname)

    async def _handle_client(self) -> None:
        # Wraps aiosmtpd's session loop (an aiosmtpd internal, see the module
        # docstring): a refusal instead of the 220 banner.
        refusal = self.refusal() or await self.admission()
        if refusal is not None:
            await self.push(refusal)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    # -- DATA -------------------------------------------------------------

    @contextlib.contextmanager
    def message_in_flight(self) -> Iterator[None]:
        """Counts the message in the handler's `in_flight`, which a stopping worker waits on."""
        handler = self.event_handler
        handler.in_flight += 1
        try:
            yield
        finally:
            handler.in_flight -= 1

    async def handler_reply(self, content: bytes) -> str:
        """The handler's reply to the message `content` (its `handle_DATA`), the
        envelope holding `content` as it came."""
        assert self.envelope is not None
        self.envelope.original_content = self.envelope.content = content
        return await self._call_handler_hook("DATA")
