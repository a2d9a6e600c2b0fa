"""The intake of one report: parse it, attribute it, count it (or keep it), and the
SMTP reply that says which. The listener answers with what `ReportIntake.take`
returns, so a 250 always means the report is in Redis: counted, found counted
already, kept as unattributed, or (a temporary failure, a success notice) with
nothing in it to count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from redis import exceptions as redis_errors

from control.contract.delivery_event import DELIVERED
from control.contract.runtime import reraise_if_cancelling

from .. import metrics
from ..message_headers import header_fields
from ..reports import parse_report
from .accounting import Accounting
from .addresses import InboundRecipient, quoted
from .attribution import BOUNCE, Attributor, Target

log = logging.getLogger("poolmta.dataplane.inbound")

REPLY_COUNTED = "250 2.0.0 Ok: report counted ({what})"
REPLY_COUNTED_ALREADY = "250 2.0.0 Ok: report counted already"
REPLY_NOTHING_TO_COUNT = "250 2.0.0 Ok: report received; {why}, nothing to count"
REPLY_KEPT = "250 2.0.0 Ok: report received but not attributed; kept for the operator"
REPLY_NOT_YET = "451 4.3.0 The reported message's delivery outcome is not recorded yet; try again later"
REPLY_UNAVAILABLE = "451 4.3.0 Reports cannot be recorded right now; try again later"

_SUBJECT = ("subject",)


def _summary(targets: Sequence[Target]) -> str:
    bounces = sum(1 for t in targets if t.kind == BOUNCE)
    parts = [f"{bounces} bounce(s)" if bounces else "", f"{len(targets) - bounces} complaint(s)"
             if len(targets) > bounces else ""]
    return ", ".join(filter(None, parts))


class ReportIntake:
    """Parse, attribute and count the reports of one worker's inbound listener."""

    def __init__(self, attributor: Attributor, accounting: Accounting, *, clock=time.time) -> None:
        self.attributor = attributor
        self.accounting = accounting
        self._clock = clock

    async def take(self, raw: bytes, *, recipients: Sequence[InboundRecipient], mail_from: str, peer: str,
                   routing, domains: frozenset[str]) -> str:
        """Take one received report; the SMTP reply to its end of DATA (250 once it is
        counted or kept in Redis, 451 when Redis cannot be reached or the message's
        outcome is not there yet)."""
        # The parser is bounded (dataplane.reports.limits) but not free on a large
        # message: a thread keeps the worker's other sessions moving meanwhile.
        report = await asyncio.to_thread(parse_report, raw)
        metrics.inbound_reports.inc(report.kind)
        now_ms = int(self._clock() * 1000)
        try:
            attribution = await self.attributor.attribute(report, recipients, routing, domains)
            if attribution.retry:
                log.info("report from %s: %s; answered 451", peer, attribution.reason)
                return REPLY_NOT_YET
            if attribution.nothing_to_count:
                log.info("report from %s (%s): %s", peer, report.kind, attribution.reason)
                return REPLY_NOTHING_TO_COUNT.format(why=attribution.reason)
            if not attribution.targets:
                subject = header_fields(raw, _SUBJECT)["subject"] or ""
                kept = await self.accounting.keep_unattributed(
                    raw, reason=attribution.reason, kind=report.kind, peer=peer, mail_from=mail_from,
                    rcpt_tos=[r.address for r in recipients], subject=subject, now_ms=now_ms)
                log.info("report from %s (%s) not attributed (%s): %s", peer, report.kind,
                         "kept" if kept else "kept already", attribution.reason)
                return REPLY_KEPT
            applied = await self.accounting.apply(attribution.targets, now_ms)
        except (redis_errors.RedisError, OSError) as exc:
            reraise_if_cancelling()
            log.warning("report from %s not recorded, Redis unreachable: %s", peer, exc)
            return REPLY_UNAVAILABLE
        for target, fresh in zip(attribution.targets, applied):
            log.info("report from %s: %s of %s <%s> (pool %s, ip %s) by %s: %s", peer, target.kind,
                     target.message_id or "no message", quoted(target.rcpt), target.pool, target.ip or "-",
                     target.via, "counted" if fresh else "counted already")
        counted = [t for t, fresh in zip(attribution.targets, applied) if fresh]
        for target in counted:
            if target.kind != BOUNCE:
                metrics.complaints.inc(target.pool, target.ip)
            elif target.counted == DELIVERED:
                metrics.report_bounces.inc(target.pool, target.ip)
        return REPLY_COUNTED.format(what=_summary(counted)) if counted else REPLY_COUNTED_ALREADY
