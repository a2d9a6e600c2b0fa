"""The dispatcher: one job's SMTP transaction on a connection of its
(destination, source IP) pair, and each recipient's reply read from it.

Connect: the destination's hops in order, each hop's addresses of the source
IP's family, at most `MAX_CONNECT_ATTEMPTS` in all. A host whose TLS handshake
failed is reached in plaintext for `NO_TLS_SECONDS`. A source IP that cannot
be bound defers the job: mail never leaves from another address than its own.
When no connection can be had, every job waiting for the same pair gets the
same failure (they would fail alike).

Transaction: checks before sending (the server's SIZE, SMTPUTF8 when an address
needs it; addresses that cannot be sent in a command bounce), the MAIL
parameters the server supports (RFC 3461's RET, ENVID, NOTIFY and ORCPT only to
a server that advertises DSN, `dsn_relay`), then the pipelined transaction of
`smtp_client`, from the job's return path. A reused connection the server
closed meanwhile is replaced once. The replies become one `RecipientOutcome`
per recipient, handed to outcomes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from ..config import DeliveryConfig, format_duration
from ..destinations import Destinations, LookupFailed, family_of
from ..dsn_relay import next_hop_mail_params, next_hop_rcpt_params
from ..smtp_client import (
    BindError,
    ConnectError,
    SessionError,
    SmtpConnection,
    client_tls_context,
)
from ..smtp_reply import (
    BAD_ADDRESS,
    BIND_FAILED,
    BOUNCED,
    CONNECT_FAILED,
    CONNECTION_LOST,
    DEFERRED,
    NEEDS_SMTPUTF8,
    NO_ADDRESS,
    PROTOCOL_ERROR,
    SESSION_REFUSED,
    STAGE_DATA,
    STAGE_MAIL,
    STAGE_RCPT,
    TIMED_OUT,
    TOO_BIG,
    Reply,
    classify,
    local_reply,
)
from ..spool import SpoolRecord
from .outcomes import Outcomes, RecipientOutcome
from .queue import DeliveryJob, Recipient

if TYPE_CHECKING:
    from .egress import Session

log = logging.getLogger("poolmta.dataplane.delivery")

# Connection attempts per job over all hosts and addresses (Postfix's smtp_mx_address_limit).
MAX_CONNECT_ATTEMPTS = 5
# A host whose TLS handshake failed is reached in plaintext for this long.
NO_TLS_SECONDS = 3600.0
# Characters that would break the MAIL or RCPT command line an address is sent in.
_CONTROL = frozenset(chr(c) for c in (*range(32), 127)) | {"<", ">"}


class Dispatcher:
    """Runs jobs on connections (see the module docstring)."""

    def __init__(self, delivery: DeliveryConfig, *, destinations: Destinations, outcomes: Outcomes,
                 metrics: Counter[str]) -> None:
        self.delivery = delivery
        self.destinations = destinations
        self.outcomes = outcomes
        self.metrics = metrics
        self.tls_context = client_tls_context()
        self._no_tls: dict[tuple[str, int], float] = {}

    async def deliver(self, session: Session, job: DeliveryJob, connection: SmtpConnection | None,
                      payload: bytes) -> SmtpConnection | None:
        """Run one job, sending `payload` after DATA, on the session's connection (opened
        or renewed as needed); the connection to keep for the next job, or None."""
        outcomes = self.outcomes
        record = job.message.record
        bad = next((a for a in (job.sender, *(r.address for r in job.rcpts)) if _CONTROL.intersection(a)), None)
        if bad is not None:
            session.in_transaction = True
            await outcomes.finish_all(job, local_reply(BAD_ADDRESS, address=bad), BOUNCED)
            return connection
        if connection is not None and (connection.closed
                                       or connection.transactions >= self.delivery.max_messages_per_connection):
            await quit_quietly(connection)
            connection = None
        for _ in range(2):  # a reused connection the server closed meanwhile: once more on a new one
            reused = connection is not None
            if connection is None:
                connection, failure = await self._connect(job)
                if connection is None:
                    assert failure is not None
                    session.in_transaction = True
                    await self._fail_waiting(session, job, failure)
                    return None
            # From here until the outcome is in the spool, a stop waits (up to its grace)
            # rather than cancel: a cancelled transaction would be repeated after a restart.
            session.in_transaction = True
            problem = self._precheck(connection, record, job, payload)
            if problem is not None:
                await outcomes.finish_all(job, problem, classify(problem), connection.host)
                return connection
            utf8 = _needs_utf8(job)
            rcpt_params = None
            if "DSN" in connection.extensions:  # RFC 3461 4: a relay passes NOTIFY and ORCPT on
                rcpt_params = [next_hop_rcpt_params(record, r.index, utf8=utf8) for r in job.rcpts]
            try:
                result = await connection.transaction(
                    job.sender, [r.address for r in job.rcpts], payload,
                    mail_params=self._mail_params(connection, record, job, payload),
                    rcpt_params=rcpt_params, utf8=utf8)
            except SessionError as exc:
                connection.abort()
                if reused and exc.when == "after MAIL" and not exc.timeout:
                    connection = None
                    continue
                await outcomes.finish_all(job, _session_failure(exc, connection.host), DEFERRED, connection.host)
                return None
            await outcomes.finish_job(job, _judge(job, result), connection.host)
            return None if connection.closed else connection
        return None

    async def _connect(self, job: DeliveryJob) -> tuple[SmtpConnection | None, Reply | None]:
        """A ready connection for the job's destination from its source IP, or the reply
        that says why there is none."""
        destination = job.destination
        assert destination is not None
        family = family_of(job.ip)
        failure: Reply | None = None
        tried = 0
        names: list[str] = []
        for hop in destination.hops:
            names.append(hop.name)
            try:
                addresses = await self.destinations.addresses(destination, hop, family)
            except LookupFailed as exc:
                failure = exc.reply
                continue
            for address in addresses:
                if tried >= MAX_CONNECT_ATTEMPTS:
                    break
                tried += 1
                shown = f"{hop.name}[{address}]:{hop.port}" if hop.name != address else f"{address}:{hop.port}"
                tls_key = (address, hop.port)
                use_tls = self._no_tls.get(tls_key, 0.0) < time.monotonic()
                for with_tls in ((True, False) if use_tls else (False,)):
                    try:
                        connection = await SmtpConnection.open(
                            address, hop.port, source_ip=job.ip, helo_name=job.helo or _literal(job.ip),
                            timeouts=self.delivery.timeouts, server_name=hop.name,
                            tls_context=self.tls_context if with_tls else None)
                    except BindError as exc:
                        self.metrics["bind_failures"] += 1
                        log.error("delivery: source IP %s cannot be bound (%s): not on this host? Deferring; "
                                  "never sending from another address", job.ip, exc)
                        return None, local_reply(BIND_FAILED, ip=job.ip, error=exc)
                    except ConnectError as exc:
                        failure = local_reply(CONNECT_FAILED, host=shown, error=exc)
                        break
                    except SessionError as exc:
                        if exc.tls_failed and with_tls:
                            log.info("delivery: TLS with %s failed (%s); using plaintext with it for %s",
                                     shown, exc, format_duration(NO_TLS_SECONDS))
                            self._no_tls[tls_key] = time.monotonic() + NO_TLS_SECONDS
                            self.metrics["tls_failures"] += 1
                            continue
                        failure = _session_failure(exc, shown)
                        break
                    self.metrics["connections"] += 1
                    if connection.tls:
                        self.metrics["tls_connections"] += 1
                    return connection, None
        if failure is None:
            failure = local_reply(NO_ADDRESS, family=family, domain=job.domain, hosts=", ".join(names) or "none")
        return None, failure

    async def _fail_waiting(self, session: Session, job: DeliveryJob, failure: Reply) -> None:
        """No connection: this job, and every job waiting for the same destination and
        IP (they would fail alike), get `failure`."""
        outcome = classify(failure, STAGE_MAIL)
        for each in (job, *session.take_waiting()):
            await self.outcomes.finish_all(each, failure, outcome)

    def _precheck(self, connection: SmtpConnection, record: SpoolRecord, job: DeliveryJob,
                  payload: bytes) -> Reply | None:
        """Why the server cannot take this message (too big, no SMTPUTF8), or None."""
        limit = connection.size_limit()
        if limit is not None and len(payload) > limit:
            return local_reply(TOO_BIG, size=len(payload), limit=limit, host=connection.host)
        if _needs_utf8(job) and "SMTPUTF8" not in connection.extensions:
            return local_reply(NEEDS_SMTPUTF8, host=connection.host)
        return None

    @staticmethod
    def _mail_params(connection: SmtpConnection, record: SpoolRecord, job: DeliveryJob, payload: bytes) -> list[str]:
        params = []
        extensions = connection.extensions
        if "SIZE" in extensions:
            params.append(f"SIZE={len(payload)}")
        if "8BITMIME" in extensions and any(o.upper() == "BODY=8BITMIME" for o in record.mail_options):
            params.append("BODY=8BITMIME")
        if _needs_utf8(job):
            params.append("SMTPUTF8")
        if "DSN" in extensions:
            params += next_hop_mail_params(record)
        return params


def _needs_utf8(job: DeliveryJob) -> bool:
    """True when an address of the transaction (its return path, a recipient) is not ASCII."""
    return not job.sender.isascii() or any(not r.address.isascii() for r in job.rcpts)


def _literal(ip: str) -> str:
    """An IP as an EHLO address literal (RFC 5321 4.1.3), for an IP without a hostname."""
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def _session_failure(exc: SessionError, host: str) -> Reply:
    if exc.reply is not None:
        return local_reply(SESSION_REFUSED, host=host, reply=exc.reply)
    if exc.timeout:
        return local_reply(TIMED_OUT, when=exc.when, host=host)
    if str(exc).startswith(("malformed", "reply l")):
        return local_reply(PROTOCOL_ERROR, when=exc.when, host=host, error=exc)
    return local_reply(CONNECTION_LOST, host=host, when=exc.when, error=exc)


def _judge(job: DeliveryJob, result) -> list[RecipientOutcome]:
    """Each recipient's reply and outcome from a finished transaction (RFC 5321:
    a refusal of MAIL or DATA applies to every recipient of the transaction, a
    refused RCPT only to its recipient)."""
    if not result.mail.positive:
        outcome = classify(result.mail, STAGE_MAIL)
        return [RecipientOutcome(r, result.mail, outcome, STAGE_MAIL) for r in job.rcpts]
    judged: list[RecipientOutcome] = []
    accepted: list[Recipient] = []
    for rcpt, reply in zip(job.rcpts, result.rcpts, strict=True):
        if reply is None:
            continue
        if reply.positive:
            accepted.append(rcpt)
        else:
            judged.append(RecipientOutcome(rcpt, reply, classify(reply, STAGE_RCPT), STAGE_RCPT))
    if not accepted:
        return judged
    data = result.data
    if data is not None and data.code != 354:
        # A positive reply to DATA other than 354 is a protocol error: not a delivery.
        outcome = DEFERRED if data.positive else classify(data, STAGE_DATA)
        return judged + [RecipientOutcome(r, data, outcome, STAGE_DATA) for r in accepted]
    final = result.final
    assert final is not None
    outcome = classify(final, STAGE_DATA)
    return judged + [RecipientOutcome(r, final, outcome, STAGE_DATA) for r in accepted]


async def quit_quietly(connection: SmtpConnection) -> None:
    """Say QUIT and close; a failure to do so never fails a delivery."""
    try:
        await connection.quit()
    except Exception:  # closing a connection must never fail a delivery
        pass
