"""The inbound listener's SMTP side: aiosmtpd with the Bridge's bounded wire handling
(`dataplane.smtp_wire`), taking bounces and feedback reports for this server only.

`InboundSMTP` (one per connection) owns the limits: no banner but 421 without a
routing snapshot, or past `--inbound-max-connections` or
`--max-connections-per-address` (each across all workers, counted apart from the
Bridge's: `dataplane.connection_caps`), the idle timeout of the Bridge's sessions
(the connection bookkeeping it shares with the Bridge is `dataplane.smtp_listener`),
`--inbound-max-size` (552, the report read to its end and dropped). A report
holding NUL bytes is taken as it is: it is parsed, counted and kept for the
operator byte for byte, never relayed, and refusing it would only bounce a bounce.
`InboundHandler` (one per worker) owns the decisions:
which recipients it takes (`addresses`; anything else 550, so it is never a
relay), and at the end of DATA the report's intake (`intake`), whose reply it
sends. No AUTH: reports come from anyone's MTA; STARTTLS is offered.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from aiosmtpd.smtp import Envelope, Session
from redis import exceptions as redis_errors

from control.contract.runtime import reraise_if_cancelling

from ..config import DataplaneConfig
from ..connection_caps import ConnectionCaps
from ..smtp_listener import (
    EHLO_PIPELINING,
    REPLY_INTERNAL_ERROR,
    REPLY_MAIL_OK,
    REPLY_RCPT_OK,
    ListenerHandler,
    ListenerSMTP,
)
from ..snapshot_loader import SnapshotLoader
from ..tls import client_handshake_failed
from .addresses import InboundAddresses, InboundRecipient, NotAccepted, with_hostname
from .intake import ReportIntake

log = logging.getLogger("poolmta.dataplane.inbound")

REPLY_NOT_ACCEPTED = "550 5.1.1 {why}; this server takes only bounces and feedback reports for its own mail"
REPLY_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients: at most {limit} per report"
REPLY_TOO_BIG = "552 5.3.4 Report size exceeds the limit of {limit} bytes"


class InboundEnvelope(Envelope):
    """An aiosmtpd Envelope that also holds what each accepted recipient is."""

    def __init__(self) -> None:
        super().__init__()
        self.recipients: list[InboundRecipient] = []


class InboundSMTP(ListenerSMTP):
    """One inbound connection. Command lines and DATA are read as `dataplane.smtp_wire`
    bounds them: DATA in 64 KiB pieces counted against the size limit as they come,
    so a report over the limit is never buffered whole."""

    def __init__(self, handler: InboundHandler, *, hostname: str, tls_context,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(
            handler,
            hostname=hostname,
            tls_context=tls_context,
            data_size_limit=handler.config.inbound.max_message_size,
            ident="poolmta inbound",
            loop=loop,
        )
        self.inbound = handler

    def _create_envelope(self) -> InboundEnvelope:
        return InboundEnvelope()

    async def message_received(self, content: bytes | None) -> str:
        """552 for a report over the size limit (counted, not kept), else the handler's reply."""
        if content is None:
            await self.inbound.count_too_big(self.peer_address)
            return REPLY_TOO_BIG.format(limit=self.data_size_limit)
        # NUL bytes (RFC 5322 2.3 forbids them) are kept: see the module docstring.
        return await self.handler_reply(content)


class InboundHandler(ListenerHandler):
    """The decisions of one worker's inbound listener (aiosmtpd handler hooks)."""

    def __init__(self, config: DataplaneConfig, *, loader: SnapshotLoader, intake: ReportIntake,
                 caps: ConnectionCaps | None = None) -> None:
        super().__init__(config, loader=loader, caps=caps)
        self.intake = intake
        self.codec = intake.attributor.codec
        self._addresses: tuple[int, InboundAddresses] | None = None

    def addresses(self) -> InboundAddresses:
        """The recipients taken under the current snapshot (rebuilt when it changes)."""
        routing = self.loader.current
        assert routing is not None  # never None again once a connection got its banner
        # Keyed by the routing's set of bounce domains, which stays the same object
        # until a change adds or removes one: a change to a pool costs nothing here.
        served = routing.bounce_domains
        if self._addresses is None or self._addresses[0] is not served:
            domains = with_hostname(served, self.config.hostname)
            self._addresses = (served, InboundAddresses(domains, self.config.inbound.fbl_addresses, self.codec))
        return self._addresses[1]

    async def handle_EHLO(self, server: InboundSMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        # No AUTH here (aiosmtpd would offer it after STARTTLS): reports need none.
        kept = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return [*kept, EHLO_PIPELINING, responses[-1]]

    # aiosmtpd inspects this hook's signature on every connection (see the Bridge).
    handle_EHLO.__signature__ = inspect.signature(handle_EHLO)

    async def handle_MAIL(self, server: InboundSMTP, session: Session, envelope: InboundEnvelope,
                          address: str, mail_options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return REPLY_MAIL_OK

    async def handle_RCPT(self, server: InboundSMTP, session: Session, envelope: InboundEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        limit = self.config.inbound.max_recipients
        if len(envelope.recipients) >= limit:
            return REPLY_TOO_MANY_RECIPIENTS.format(limit=limit)
        try:
            recipient = self.addresses().check(address)
        except NotAccepted as exc:
            log.info("inbound: RCPT from %s refused: %s", server.peer_address, exc.why)
            return REPLY_NOT_ACCEPTED.format(why=exc.why)
        envelope.recipients.append(recipient)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return REPLY_RCPT_OK

    async def handle_DATA(self, server: InboundSMTP, session: Session, envelope: InboundEnvelope) -> str:
        """Hand the report to the intake; its reply is the answer (250 only once it is in Redis)."""
        routing = self.loader.current
        assert routing is not None and isinstance(envelope.original_content, bytes)
        return await self.intake.take(
            envelope.original_content, recipients=envelope.recipients, mail_from=envelope.mail_from or "",
            peer=server.peer_address, routing=routing, domains=self.addresses().domains,
        )

    async def count_too_big(self, peer: str) -> None:
        """Count a report refused for its size; a Redis error only costs the count."""
        log.info("inbound: report from %s over %d bytes refused", peer, self.config.inbound.max_message_size)
        try:
            await self.intake.accounting.count_too_big()
        except (redis_errors.RedisError, OSError) as exc:
            reraise_if_cancelling()
            log.warning("inbound: a refused report was not counted, Redis unreachable: %s", exc)

    async def handle_exception(self, error: Exception) -> str:
        if client_handshake_failed(error, log):
            return REPLY_INTERNAL_ERROR  # not sent: aiosmtpd closes the connection
        log.error("inbound SMTP session error", exc_info=error)
        return REPLY_INTERNAL_ERROR
