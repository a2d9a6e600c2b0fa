"""The SMTP Bridge: aiosmtpd's SMTP protocol with Bridge AUTH, trusted networks,
limits, and acceptance of each message into the durable spool.

`BridgeSMTP` (one instance per connection) owns the protocol: AUTH throttling,
the STARTTLS-before-AUTH rule per client address, and the limits on DATA (the
421 when no snapshot is loaded and the connection bookkeeping it shares with the
inbound listener are `dataplane.smtp_listener`; the wire parsing it shares with
the sink too is `dataplane.smtp_wire`). `BridgeHandler` (one per worker) owns
the decisions: which Bridge a transaction belongs to, the limits, the account's
suppression list at RCPT (`dataplane.suppression`), and at end of DATA rotation,
stamping, DKIM signing (`dataplane.dkim_keys` picks the keys), the spool write and
the `sent` count (and `dkim_unsigned`; journaled around the spool write), before
the 250.

DSN extension (RFC 3461): advertised in EHLO; RET and ENVID on MAIL, NOTIFY and
ORCPT on RCPT are parsed by `dataplane.dsn_request` (a bad value gets its 501)
and kept in the spool record with the Bridge's DSN switch as it is at acceptance
(`dataplane.dsn_relay`).

This relies on one aiosmtpd 1.4 internal, marked: the per-connection
`_auth_require_tls`; `dataplane.pre_auth`, `dataplane.smtp_listener` and
`dataplane.smtp_wire` name the ones they rely on.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import time

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from control.contract.snapshot import BridgeRoute

from . import metrics
from .bridge_auth import BridgeIdentity, SharedAuthThrottle, check_credentials
from .config import DataplaneConfig
from .dsn_relay import mail_fields, rcpt_options
from .dsn_request import (
    DsnParamError,
    MailDsnParams,
    RcptDsnParams,
    parse_mail_params,
    parse_rcpt_params,
)
from .message_headers import header_fields, indexed_message_id
from .pre_auth import PreAuthLimit
from .routing import NoUsableIp, PoolGone, client_key, in_networks, stamp
from .smtp_listener import (
    EHLO_PIPELINING,
    REPLY_INTERNAL_ERROR,
    REPLY_MAIL_OK,
    REPLY_RCPT_OK,
    ListenerHandler,
    ListenerSMTP,
)
from .snapshot_loader import SnapshotLoader
from .spool import Spool, SpoolRecord, SpoolWriteError
from .stats_batcher import StatsBatcher
from .submission import Acceptance, Submitter
from .suppression import SuppressionLookup
from .tls import client_handshake_failed
from .trace_header import ReceivedHeader, line_ending

log = logging.getLogger("poolmta.dataplane.smtp")

# --- replies (those the inbound listener gives too are in dataplane.smtp_listener)
REPLY_AUTH_BLOCKED = "421 4.7.0 Too many failed AUTH attempts from {address}; try again later"
REPLY_AUTH_REQUIRED = (
    "530 5.7.0 Authentication required: AUTH with the Bridge's username and secret "
    "(or connect from one of its trusted networks)"
)
REPLY_CREDENTIALS_GONE = "530 5.7.8 The Bridge's credentials were revoked or rotated; authenticate again"
REPLY_BAD_ADDRESS_ENCODING = "553 5.6.7 Address is not valid UTF-8"
REPLY_NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM"
REPLY_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients: at most {limit} per message"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds the limit of {limit} bytes"
REPLY_NUL_IN_MESSAGE = "554 5.6.0 Message contains NUL bytes (RFC 5322 section 2.3)"
REPLY_LINE_TOO_LONG = "500 5.5.2 A message line is longer than {limit} octets (RFC 5322 section 2.1.1)"
REPLY_QUEUED = "250 2.0.0 Ok: queued as {id}"
REPLY_POOL_GONE = "451 4.3.0 The Bridge's pool is not routed by this server right now; try again later"
REPLY_NO_USABLE_IP = "451 4.3.0 Pool {pool} has no active IP to send from (all paused); try again later"
REPLY_POOL_WITHOUT_IPS = "451 4.3.0 Pool {pool} has no IPs to send from yet; try again later"
REPLY_SPOOL_FAILED = "451 4.3.0 The message could not be stored, nothing was queued; try again later"

EHLO_DSN = "250-DSN"  # RFC 3461 4

_MESSAGE_ID_FIELD = ("message-id",)


class BridgeEnvelope(Envelope):
    """An aiosmtpd Envelope that also records which Bridge the transaction is for."""

    def __init__(self) -> None:
        super().__init__()
        self.bridge: BridgeRoute | None = None
        self.auth_kind = ""  # "auth" | "trusted"
        self.snapshot_version = 0
        self.dsn_mail = MailDsnParams()  # RFC 3461 RET and ENVID
        self.rcpt_dsn: list[RcptDsnParams] = []  # NOTIFY and ORCPT, one per rcpt_tos entry


def _valid_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes that were not UTF-8
        return False
    return True


def _as_sent(text: str) -> str:
    """Client text (aiosmtpd keeps bytes that were not UTF-8 as surrogate escapes) as
    valid UTF-8, those bytes replaced by U+FFFD: a spool record is msgpack, which
    cannot encode surrogates (an EHLO name of 8-bit junk made every later message of
    the session a 451)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _address_refusal(address: str, smtp_utf8: bool) -> str | None:
    """The 553 refusing a MAIL FROM / RCPT TO address for its encoding, or None when it may
    be used: UTF-8 only, and non-ASCII only when MAIL FROM carried SMTPUTF8 (RFC 6531)."""
    if not _valid_utf8(address):
        return REPLY_BAD_ADDRESS_ENCODING
    if not smtp_utf8 and not address.isascii():
        return REPLY_NEEDS_SMTPUTF8
    return None


def content_refusal(config: DataplaneConfig, content: bytes | None) -> str | None:
    """The reply refusing a message's content for a limit (None = too big), or None
    when it may be accepted. The SMTP and REST Bridges both apply it."""
    if content is None or len(content) > config.max_message_size:
        return REPLY_TOO_BIG.format(limit=config.max_message_size)
    if b"\0" in content:
        # RFC 5321 2.3.8 and 4.1.1.4, RFC 5322 2.1 and 2.3: a message has no NUL.
        # Refused rather than stripped: the sender learns its message was broken.
        return REPLY_NUL_IN_MESSAGE
    max_line = config.max_line_length
    if len(content) > max_line and max(map(len, content.split(b"\n"))) > max_line + 1:
        # +1: split on LF leaves the CR of CRLF on each line.
        return REPLY_LINE_TOO_LONG.format(limit=max_line)
    return None


class BridgeSMTP(PreAuthLimit, ListenerSMTP):
    """One SMTP Bridge connection.

    Limits (RFC 5321 4.5.3.1): command lines as `dataplane.smtp_wire` caps them
    (aiosmtpd's 512 per command within a 2 KiB reader); the message size,
    recipient count and message line length come from the handler's
    configuration. DATA is read in 64 KiB pieces; the size counts the message's
    own bytes (dot-stuffing removed), and a message over it is read to its end
    and dropped as it comes (552). A message holding a NUL byte gets 554.

    Until it authenticates, a session that is not from a Bridge's trusted network
    is held to `dataplane.pre_auth`'s shorter timeouts.
    """

    count_stuffing = False
    mail_extension_keywords = frozenset({"RET", "ENVID"})  # RFC 3461 4.3, 4.4
    rcpt_extension_keywords = frozenset({"NOTIFY", "ORCPT"})  # RFC 3461 4.1, 4.2

    def __init__(self, handler: BridgeHandler, *, hostname: str, tls_context,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        config = handler.config
        super().__init__(
            handler,
            hostname=hostname,
            tls_context=tls_context,
            data_size_limit=config.max_message_size,
            ident="poolmta",
            loop=loop,
            auth_require_tls=True,
            authenticator=handler.authenticate,
        )
        self.bridge_handler = handler

    # -- connection -------------------------------------------------------

    def peer_known(self) -> None:
        # Per connection: AUTH before STARTTLS only from the configured networks.
        self._auth_require_tls = not self.bridge_handler.plaintext_auth_allowed(self.peer_address)

    def _create_envelope(self) -> BridgeEnvelope:
        return BridgeEnvelope()

    @property
    def pre_auth_timeout(self) -> float:
        return self.bridge_handler.config.pre_auth_timeout

    def past_auth(self) -> bool:
        """True once the session authenticated, or for a client on a Bridge's trusted network."""
        session = self.session
        if session is not None and session.authenticated:
            return True
        routing = self.bridge_handler.loader.current
        return routing is not None and routing.trusted_bridge(self.peer_address) is not None

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None

    # -- AUTH -------------------------------------------------------------

    async def _refuse_auth_and_close(self) -> None:
        await self.push(REPLY_AUTH_BLOCKED.format(address=client_key(self.peer_address)))
        if self.transport is not None:
            self.transport.close()

    async def _settle_auth(self, result: AuthResult) -> AuthResult:
        """Throttle an AUTH whose credentials were checked: one count shared by every
        worker (`SharedAuthThrottle`); 421 and close when the client is at the limit,
        right credentials or not; else a failure's 535 is delayed past the threshold.
        An AUTH aiosmtpd already answered with 501 (malformed, or abandoned) checked nothing."""
        if result.handled and not result.success:
            return result
        verdict = await self.bridge_handler.throttle.attempt(self.peer_address, failed=not result.success)
        if verdict.block:
            log.warning("AUTH refused for %s: too many failed attempts", client_key(self.peer_address))
            await self._refuse_auth_and_close()
            return AuthResult(success=False, handled=True)
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        return result

    async def auth_PLAIN(self, _, args: list[str]) -> AuthResult:
        return await self._settle_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _, args: list[str]) -> AuthResult:
        return await self._settle_auth(await super().auth_LOGIN(_, args))

    # -- DATA -------------------------------------------------------------

    async def message_received(self, content: bytes | None) -> str:
        """The reply to the end of DATA: a limit's reply, or the handler's (spooled, 250)."""
        refusal = content_refusal(self.bridge_handler.config, content)
        return refusal if refusal is not None else await self.handler_reply(content)


class BridgeHandler(ListenerHandler):
    """The decisions of one worker's SMTP Bridge (aiosmtpd handler hooks)."""

    def __init__(
        self,
        config: DataplaneConfig,
        *,
        loader: SnapshotLoader,
        spool: Spool,
        stats: StatsBatcher,
        throttle: SharedAuthThrottle,
        worker_id: str,
        suppressions: SuppressionLookup,
        delivery=None,
        caps=None,
    ) -> None:
        super().__init__(config, loader=loader, caps=caps)
        self.suppressions = suppressions
        self.delivery = delivery  # DeliveryEngine, or None with --no-delivery
        self.spool = spool
        self.stats = stats
        self.throttle = throttle
        self.worker_id = worker_id
        self._plaintext_networks = tuple(
            ipaddress.ip_network(n, strict=False) for n in config.insecure_auth_networks
        )
        self._received = ReceivedHeader()

    # -- policy -----------------------------------------------------------

    def plaintext_auth_allowed(self, client_address: str) -> bool:
        """True when a client at this address may AUTH before STARTTLS."""
        return self.config.allow_insecure_auth or in_networks(client_address, self._plaintext_networks)

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: LoginPassword) -> AuthResult:
        """aiosmtpd authenticator: the Bridge of these credentials in the current snapshot."""
        bridge = check_credentials(self.loader.current, auth_data.login, auth_data.password)
        if bridge is None:
            log.info("AUTH %s failed from %s", mechanism, getattr(server, "peer_address", "?"))
            metrics.auth_failures.inc()
            return AuthResult(success=False, handled=False)
        return AuthResult(
            success=True,
            auth_data=BridgeIdentity(bridge.bridge_id, bridge.username, bridge.secret_hash),
        )

    # -- hooks ------------------------------------------------------------

    async def handle_EHLO(self, server: BridgeSMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], EHLO_PIPELINING, EHLO_DSN, responses[-1]]

    # aiosmtpd inspects this hook's signature on every connection; computing it
    # once here makes that a lookup.
    handle_EHLO.__signature__ = inspect.signature(handle_EHLO)

    async def handle_MAIL(self, server: BridgeSMTP, session: Session, envelope: BridgeEnvelope,
                          address: str, mail_options: list[str]) -> str:
        routing = self.loader.current
        assert routing is not None  # never None again once a connection got its banner
        if session.authenticated:
            identity: BridgeIdentity = session.auth_data
            bridge = routing.current_bridge(identity.bridge_id, identity.username, identity.secret_hash)
            if bridge is None:
                # Revoked or rotated since AUTH: this session may not start another message.
                session.authenticated = False
                session.auth_data = None
                return REPLY_CREDENTIALS_GONE
            auth_kind = "auth"
        else:
            bridge = routing.trusted_bridge(server.peer_address)
            if bridge is None:
                return REPLY_AUTH_REQUIRED
            auth_kind = "trusted"
        refusal = _address_refusal(address, envelope.smtp_utf8)
        if refusal is not None:
            return refusal
        try:
            envelope.dsn_mail = parse_mail_params(server.extension_params)
        except DsnParamError as exc:
            return exc.reply
        envelope.bridge = bridge
        envelope.auth_kind = auth_kind
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return REPLY_MAIL_OK

    async def handle_RCPT(self, server: BridgeSMTP, session: Session, envelope: BridgeEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return REPLY_TOO_MANY_RECIPIENTS.format(limit=self.config.max_recipients)
        assert envelope.bridge is not None  # aiosmtpd takes RCPT only after a MAIL that set it
        refusal = (_address_refusal(address, envelope.smtp_utf8)
                   or await self.suppressions.rcpt_refusal(envelope.bridge, address))
        if refusal is not None:
            return refusal
        try:
            envelope.rcpt_dsn.append(parse_rcpt_params(server.extension_params))
        except DsnParamError as exc:
            return exc.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return REPLY_RCPT_OK

    async def handle_DATA(self, server: BridgeSMTP, session: Session, envelope: BridgeEnvelope) -> str:
        """Route, stamp, spool (durably), count; the 250 carries the message id."""
        return (await self.accept(envelope, Submitter.of_session(server, session, envelope.auth_kind))).reply

    async def accept(self, envelope: BridgeEnvelope, client: Submitter) -> Acceptance:
        """Accept a message whose Bridge, sender and recipients are decided (the SMTP
        Bridge at end of DATA, the REST Bridge per message): route, stamp, spool
        (durably), count. The content's limits (`content_refusal`) are checked before."""
        routing = self.loader.current
        bridge = envelope.bridge
        assert routing is not None and bridge is not None
        try:
            route = routing.route(bridge)
        except PoolGone:
            log.warning("bridge %d: pool %d not in snapshot %d", bridge.bridge_id, bridge.smtp_id, routing.version)
            return Acceptance(REPLY_POOL_GONE)
        except NoUsableIp:
            pool = routing.pool(bridge.smtp_id)
            log.warning("pool %s has no usable IP in snapshot %d", pool.internal_name, routing.version)
            # An empty pool (a shared pool before the admin adds an IP) is not a paused one:
            # the reply says which, so the sender knows whom to ask.
            reply = REPLY_NO_USABLE_IP if pool.ips else REPLY_POOL_WITHOUT_IPS
            return Acceptance(reply.format(pool=pool.internal_name))
        message_id = self.spool.new_id()
        now = time.time()
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        eol = line_ending(raw)
        received = self._received.render(client.helo, client.address, client.hostname, client.protocol,
                                         message_id, envelope.rcpt_tos, now, eol)
        stamped = stamp(raw, route, received)
        # DKIM after stamping (RFC 6376 section 5): our signatures go on top, any the
        # client made stay below them. Unsigned mail is still accepted, and counted.
        signing = routing.signing(bridge, route, raw)
        stamped = signing.apply(stamped, int(now), eol)
        record = SpoolRecord(
            id=message_id,
            received_ms=int(now * 1000),
            server_id=self.config.server_id,
            snapshot_version=routing.version,
            worker=self.worker_id,
            client_address=client.address,
            client_helo=_as_sent(client.helo),
            tls=client.tls,
            auth=envelope.auth_kind,
            bridge_id=bridge.bridge_id,
            bridge_username=bridge.username,
            user_id=bridge.user_id,
            smtp_id=route.pool.smtp_id,
            pool=route.pool.internal_name,
            ip=route.address,
            ip_hostname=route.ip_hostname,
            feed_type=route.feed_type,
            zone=routing.snapshot.zone,
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            mail_options=tuple(envelope.mail_options),
            smtputf8=bool(envelope.smtp_utf8),
            message=stamped,
            rcpt_options=rcpt_options(envelope.rcpt_dsn),
            send_dsns=bridge.send_dsns,
            bounce_domain=route.bounce_domain,
            dkim=signing.note,
            **mail_fields(envelope.dsn_mail),
        )
        # One per distinct recipient: delivered, bounced and deferred count recipients too.
        recipients = len(dict.fromkeys(record.rcpt_tos))
        stats = [self.stats.count_record("sent", route.pool.smtp_id, route.address, recipients)]
        if not signing.keys:
            # Per pool and per IP, like `sent`, so an IP's figures add up as its pool's do.
            stats.append(self.stats.count_record("dkim_unsigned", route.pool.smtp_id, route.address))
        # The message index: a report that returns only the original headers finds
        # this message by its Message-ID (dataplane.inbound.attribution).
        header_id = indexed_message_id(header_fields(raw, _MESSAGE_ID_FIELD)["message-id"])
        if header_id is not None:
            stats.append(self.stats.index_record(header_id, message_id))
        # Journaled before the spool write and decided after it, so a crash in between
        # counts the message exactly when it is in the queue (dataplane.stats_journal).
        group = self.stats.begin(["q", message_id], stats)
        try:
            await self.spool.store(record)
        except SpoolWriteError as exc:
            self.stats.end(group, committed=False)
            log.error("message from bridge %d not queued: %s", bridge.bridge_id, exc)
            return Acceptance(REPLY_SPOOL_FAILED)
        self.stats.end(group)
        metrics.messages_accepted.inc(record.pool, record.ip)
        metrics.recipients_accepted.inc(record.pool, record.ip, n=recipients)
        if self.delivery is not None:
            self.delivery.accepted(record)
        return Acceptance(REPLY_QUEUED.format(id=message_id), message_id)

    async def handle_exception(self, error: Exception) -> str:
        if client_handshake_failed(error, log):
            return REPLY_INTERNAL_ERROR  # not sent: aiosmtpd closes the connection
        log.error("SMTP session error", exc_info=error)
        return REPLY_INTERNAL_ERROR
