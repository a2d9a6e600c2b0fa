"""Outcomes: what each recipient's attempt ended in, made visible and durable.

Per recipient: 2yz delivered, 5yz bounced (the reply kept), 4yz or a failed
connection deferred and retried on the retry schedule until the queue lifetime
ends, then bounced (`smtp_reply.classify`; the expiry is applied here). Each
outcome is counted (delivered / bounced / deferred, under the record's pool and
the IP the attempt used) and becomes a `DeliveryEvent` in the message's Redis
list; a bounce that says the address is bad (`suppression.bounce_suppresses`)
also puts the recipient on the account's suppression list. All of it goes out
with the stats batcher's next flush. The record is rewritten
with its attempts when recipients remain, and deleted once every recipient is
final and every DSN its bounces owe the sender is in the spool (`notices`). A
DSN's own outcomes count as dsn_delivered / dsn_bounced / dsn_deferred.

At-least-once: a recipient's outcome is made durable in the spool right after
its reply, before the connection carries anything else. A crash (even SIGKILL)
therefore repeats only deliveries in flight at that moment: a transaction
under way, or one whose reply had come but whose spool update had not finished;
at most one per open connection. Their recipients are delivered again after
the restart.

Counted once: an outcome's count, event and suppression are journaled
(`stats_journal`) as one group around the spool update that records the outcome
(the rewrite, or the removal of a final message): written before it, committed
after it. A crash in between is decided from the spool before the worker starts
again (`stats_journal.resolve_orphans`): if the update happened, the group
counts; if not, it does not, and the delivery repeated after the restart counts
instead. So `delivered` counts each recipient once, however often a crash made a
destination receive it. A spool update that fails, or a record that
disappeared, still counts what happened.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import NamedTuple

from control.contract.delivery_event import DeliveryEvent
from control.contract.suppression import (
    REASON_BOUNCE,
    SOURCE_DELIVERY,
    AddressError,
    SuppressionEntry,
    normalize_address,
)

from .. import metrics
from ..config import DeliveryConfig, format_duration
from ..smtp_reply import BOUNCED, DEFERRED, EXPIRED, LOCAL_ERROR, Reply, local_reply
from ..spool import DSN_OWED, Spool, SpoolCorrupt, SpoolError, SpoolRecord
from ..suppression import bounce_suppresses
from .notices import Notices
from .queue import DeliveryJob, DeliveryQueue, QueuedMessage, Recipient, next_attempt_at

log = logging.getLogger("poolmta.dataplane.delivery")


class RecipientOutcome(NamedTuple):
    """What one attempt did for one recipient: the reply that decided and its outcome."""

    recipient: Recipient
    reply: Reply
    outcome: str  # DELIVERED | BOUNCED | DEFERRED
    # The command the destination's reply answered (smtp_reply.STAGE_*); "" when the
    # engine made the reply up (no connection, DNS, a local check, the queue lifetime).
    stage: str = ""


class Outcomes:
    """Records outcomes: counts, events, the spool record, and what is left to retry."""

    def __init__(self, delivery: DeliveryConfig, *, queue: DeliveryQueue, spool: Spool, stats, notices: Notices,
                 metrics: Counter[str]) -> None:
        self.delivery = delivery
        self.queue = queue
        self.spool = spool
        self.stats = stats
        self.notices = notices
        self.metrics = metrics
        # Per message id: the journal records of outcomes not yet in a spool update.
        self._unjournaled: dict[str, list[list]] = {}

    async def finish_job(self, job: DeliveryJob, results: list[RecipientOutcome], mx: str) -> None:
        """Record the outcome of each recipient of a job: count it, make it an event,
        make it durable in the spool, and schedule what is left."""
        message = job.message
        record = message.record
        now = time.time()
        ip = job.ip or message.ip
        entries = []
        for rcpt, reply, outcome, stage in results:
            rcpt.attempts += 1
            rcpt.busy = False
            if outcome == DEFERRED and message.expired(now):
                reply = local_reply(EXPIRED, lifetime=format_duration(self.delivery.queue_lifetime),
                                    attempts=rcpt.attempts, last=reply)
                outcome, stage = BOUNCED, ""
            final = outcome != DEFERRED
            if final:
                message.pending.pop(rcpt.address, None)
            else:
                rcpt.next_at = next_attempt_at(self.delivery.retry_schedule, rcpt.attempts, now, message.deadline)
            self.metrics[outcome] += 1
            (metrics.dsn_deliveries if record.dsn_of else metrics.deliveries).inc(record.pool, ip, outcome)
            unjournaled = self._unjournaled.setdefault(record.id, [])
            # A DSN to a sender is counted apart from the senders' own mail.
            unjournaled.append(self.stats.count_record(f"dsn_{outcome}" if record.dsn_of else outcome,
                                                       record.smtp_id, ip))
            unjournaled.append(self.stats.event_record(record.id, DeliveryEvent(
                ts_ms=int(now * 1000), message_id=record.id, user_id=record.user_id,
                bridge_id=record.bridge_id, rcpt=rcpt.address, outcome=outcome,
                smtp_id=record.smtp_id, pool=record.pool, ip=ip, reply=str(reply),
                attempt=rcpt.attempts, final=final, rcpt_index=rcpt.index, dkim=record.dkim,
            ).encode()))
            # A DSN's recipient is the account's own sender, not one of its recipients.
            if outcome == BOUNCED and not record.dsn_of and bounce_suppresses(reply, stage):
                unjournaled.extend(self._suppression(record, rcpt.address, reply, now))
            entry = {"at_ms": int(now * 1000), "rcpt": rcpt.address, "outcome": outcome,
                     "code": reply.code, "text": reply.text, "ip": ip, "mx": mx, "attempt": rcpt.attempts}
            if outcome == BOUNCED and self.notices.due(record, rcpt):
                entry["dsn"] = DSN_OWED  # durable with the bounce; the DSN itself at the round's end
            entries.append(entry)
            # The domain, not the address: a log line names no person.
            log.info("%s domain=%s bridge=%d pool=%s ip=%s relay=%s attempt=%d %s: %s", record.id, rcpt.domain,
                     record.bridge_id, record.pool, ip, mx or "none", rcpt.attempts, outcome, reply,
                     extra={"message_id": record.id, "bridge_id": record.bridge_id, "pool": record.pool,
                            "source_ip": ip, "rcpt_domain": rcpt.domain, "relay": mx, "attempt": rcpt.attempts,
                            "outcome": outcome, "reply": str(reply)})
        message.attempts.extend(entries)
        message.jobs -= 1
        if message.jobs == 0 and message.pending:
            self.queue.release_payload(message)  # read again when the retry is due
        await self._persist(message)
        if message.pending and not message.gone:
            self.queue.schedule(message)

    def _suppression(self, record: SpoolRecord, address: str, reply: Reply, now: float) -> list[list]:
        """The journal record putting a recipient whose address bounced for good on its
        account's suppression list (none for an address the list cannot hold)."""
        try:
            field = normalize_address(address)
        except AddressError as exc:
            log.warning("%s: bounced recipient not added to the suppression list: %s", record.id, exc)
            return []
        entry = SuppressionEntry(reason=REASON_BOUNCE, at_ms=int(now * 1000), message_id=record.id,
                                 source=SOURCE_DELIVERY, detail=str(reply))
        return [self.stats.suppression_record(record.user_id, field, entry.encode())]

    def _journal_now(self, message: QueuedMessage) -> None:
        """Count what the message's outcomes counted that no spool update will carry."""
        self.stats.end(self.stats.begin(["r", message.id], self._unjournaled.pop(message.id, [])))

    async def finish_all(self, job: DeliveryJob, reply: Reply, outcome: str, mx: str = "") -> None:
        """Every recipient of the job gets the same reply and outcome (see `finish_job`)."""
        await self.finish_job(job, [RecipientOutcome(r, reply, outcome) for r in job.rcpts], mx)

    async def internal_error(self, job: DeliveryJob) -> None:
        """A job hit a bug: defer it (the retry schedule applies), never strand it."""
        reply = local_reply(LOCAL_ERROR)
        try:
            await self.finish_job(job, [RecipientOutcome(r, reply, DEFERRED) for r in job.rcpts if r.busy], "")
        except Exception:
            log.exception("delivery: %s: internal error recording a deferral", job.message.id)

    async def settle(self, message: QueuedMessage) -> None:
        """A message read back from the spool with nothing to deliver, or with DSNs owed:
        send those, and remove the record once nothing is left to do."""
        await self._persist(message)

    async def _persist(self, message: QueuedMessage) -> None:
        """Make the message's state durable: at the end of a round (no job running) spool
        the DSN its bounces owe; remove the record when every recipient is final and no
        DSN is owed, else rewrite it with its attempts. A rewrite carries every entry
        appended before it started: jobs of one message that finish while one is under
        way share the next (a VERP message has a job per recipient)."""
        async with message.lock:
            if message.gone:
                self._journal_now(message)
                return
            idle = message.jobs == 0
            owed = idle and bool(self.notices.owed(message))
            sent = await self.notices.send(message) if owed else True
            if not message.pending and idle and sent:
                await self.finish_message(message)
                return
            if not owed and len(message.attempts) == message.persisted:
                return  # this job's entries went into the spool with another's rewrite
            count = len(message.attempts)
            # The outcomes this rewrite carries, counted if and only if it lands.
            group = self.stats.begin(["a", message.id, count], self._unjournaled.pop(message.id, []))
            try:
                await self.spool.rewrite_attempts(message.id, tuple(message.attempts))
                message.persisted = count
            except (FileNotFoundError, SpoolCorrupt) as exc:
                self.stats.end(group)  # gone: not delivered again, so what happened counts
                self.lost(message, exc)
                return
            except SpoolError as exc:
                self.stats.end(group)  # the next rewrite carries these attempts too
                log.error("delivery: %s: cannot record its attempts in the spool (%s); a restart "
                          "may repeat them", message.id, exc)
            else:
                self.stats.end(group)
            if not message.pending and idle and not sent:
                # Only the DSN is left, and it could not be stored: the spool scan finds
                # the record again (owing it) and retries.
                self.queue.forget(message)

    async def finish_message(self, message: QueuedMessage) -> None:
        """Every recipient is final: remove the message's record from the spool."""
        self.queue.removing(message)
        group = self.stats.begin(["r", message.id], self._unjournaled.pop(message.id, []))
        try:
            await self.spool.remove(message.id)
        except OSError as exc:
            log.error("delivery: %s is final but its spool record could not be removed (%s); "
                      "a restart would deliver it again", message.id, exc)
        finally:
            self.stats.end(group)  # the outcomes happened; only a crash before this is left to the spool
            self.queue.removed(message)

    def lost(self, message: QueuedMessage, exc: BaseException) -> None:
        """The message's record disappeared or is damaged (`exc` says which): quarantine
        a damaged one, and stop delivering it (what its outcomes counted is journaled)."""
        self._journal_now(message)
        if isinstance(exc, SpoolCorrupt):
            log.error("delivery: spool record %s is damaged (%s); moved to corrupt/", message.id, exc)
            self.spool.quarantine(message.id)
        else:
            log.warning("delivery: spool record %s disappeared (removed by hand?); forgetting it", message.id)
        self.queue.forget(message)
