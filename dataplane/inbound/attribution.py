"""Attribution: which of our messages, recipients, pools and IPs a report is about.

In this order (ARCHITECTURE.md, "Stats and the feedback loop"):

1. VERP. The return path the report was sent to (a bounce's envelope recipient,
   verified at RCPT), else a feedback report's Original-Mail-From, else the
   returned message's Return-Path, decoded with `VerpCodec`: message id and
   recipient index. The message's delivery events then give the recipient, pool,
   IP, account and how the recipient is counted.
2. The returned headers. Our own Received line (`by HOST (poolmta) with ... id ID`,
   which the Bridge writes) or the Message-ID, looked up in the message index the
   Bridge fills, name the message; an x-virtual-mta naming another pool than the
   message's refutes it. Its events give the rest; the report's recipients are
   matched to the message's by address (a message with one recipient needs no
   match). With no message found, a complaint still counts for the pool the
   x-virtual-mta names and the IP that the ARF Source-IP or a Received line names
   (an IP of this server): feedback loops often return little else.
3. Else the report is unattributed, with what each step found wrong.

Only permanent failures are bounces (RFC 3463 section 3.1: class 5); a report
whose failures are all temporary (or that reports success) moves nothing and needs
no attribution. Complaints are feedback reports of type abuse, fraud, virus or
other (RFC 5965 section 7.3), or with none given; not-spam and auth-failure are not.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from control.contract import event_log
from control.contract.delivery_event import DeliveryEvent
from control.contract.headers import STAMPED_HEADER_NAMES
from control.contract.suppression import address_failure

from ..message_headers import indexed_message_id
from ..reports import Report
from ..verp import VerpCodec, VerpError, VerpReason, VerpToken
from .addresses import InboundRecipient, quoted

BOUNCE = "bounce"
COMPLAINT = "complaint"

COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other", ""})

# A message's delivery outcome reaches Redis with the stats batcher's next flush
# (250 ms); a report about a message younger than this whose outcome is not there
# yet gets 451 (its sender retries) rather than being judged without it.
PENDING_GRACE_SECONDS = 600.0

_WHAT = {"dsn": "DSN", "nonstandard": "bounce", "arf": "ARF report"}
# The Received line the Bridge writes (dataplane.smtp_bridge: "by HOST (poolmta) with PROTO id ID").
_OUR_RECEIVED = re.compile(r"\(poolmta\) with [A-Za-z]{1,12} id ([0-9a-f]{26})\b")
_IP_LITERAL = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{2,45})\]")
_MESSAGE_ID = re.compile(r"[0-9a-f]{26}")


@dataclass(frozen=True, slots=True)
class Target:
    """One recipient a report counts against, or with no message known one pool (and IP).

    subject: what is counted exactly once (the report marker's name).
    counted: how the recipient is counted now: DELIVERED, BOUNCED, or "" (not final, unknown).
    at_ms: when the delivery event that counted it was written (0 unknown): its day's
        buckets are the ones a move changes.
    reply: what the report says, for the event `message status` shows.
    suppresses: whether it puts the recipient on the account's suppression list.
    """

    kind: str  # BOUNCE | COMPLAINT
    source: str  # the report's kind: dsn | arf | nonstandard
    via: str  # verp | received | message-id | headers
    subject: str
    message_id: str  # "" when only the pool is known
    rcpt: str
    rcpt_index: int
    user_id: int
    bridge_id: int
    smtp_id: int
    pool: str
    ip: str
    counted: str
    at_ms: int
    attempt: int
    reply: str
    suppresses: bool = True


@dataclass(frozen=True, slots=True)
class Attribution:
    """What to count for a report: its targets, or why there are none.

    retry: a message of ours whose outcome is not recorded yet (answer 451).
    nothing_to_count: the report has no permanent failure or complaint in it.
    """

    targets: tuple[Target, ...] = ()
    reason: str = ""
    retry: bool = False
    nothing_to_count: bool = False


@dataclass(frozen=True, slots=True)
class _Claim:
    """One thing a report says: a recipient's permanent failure, or a complaint."""

    kind: str
    address: str  # the recipient it names, lower case ("" when it names none)
    detail: str
    suppresses: bool = True  # see _suppresses


def _claims(report: Report) -> tuple[list[_Claim], Attribution | None]:
    """What the report claims, or the Attribution that says there is nothing to count."""
    if report.kind == "arf":
        feedback = report.feedback
        assert feedback is not None
        if feedback.feedback_type not in COMPLAINT_TYPES:
            return [], Attribution(reason=f"feedback type {feedback.feedback_type[:40]!r} is not a complaint")
        detail = f"complaint: feedback type {feedback.feedback_type or 'unspecified'}"
        addresses = feedback.original_rcpt_to or ("",)
        return [_Claim(COMPLAINT, a.lower(), detail) for a in addresses], None
    if report.kind == "unknown":
        return [], Attribution(reason=f"not a bounce or complaint: {report.problem or 'unreadable'}")
    permanent = [r for r in report.failures() if r.permanent]
    if not permanent:
        return [], Attribution(nothing_to_count=True, reason="no permanent failure in it")
    return [_Claim(BOUNCE, r.address.lower(), " ".join(filter(None, (r.status or "5.0.0", r.diagnostic))),
                   _suppresses(r.status))
            for r in permanent], None


def _suppresses(status: str) -> bool:
    """Whether an asynchronous permanent bounce suppresses its recipient: by the
    delivery side's rule when it carries a status (the address is bad for good, RFC
    3463 5.1.x and 5.2.1: not a policy block or a full mailbox); without one (a
    non-standard bounce, which the detector found permanent) it does."""
    return not status or address_failure(status)


def _reply(claim: _Claim, report: Report) -> str:
    origin = report.reporting_mta or (report.feedback.user_agent if report.feedback else "")
    source = f" from {origin[:100]}" if origin else ""
    return f"{claim.detail[:400]} (asynchronous {_WHAT.get(report.kind, report.kind)}{source})"


def _accepted_ms(message_id: str) -> int:
    """When a message was accepted, from its id (see dataplane.spool: the first 12 hex digits)."""
    return int(message_id[:12], 16)


def _last_delivery(events: Sequence[DeliveryEvent], index: int = -1, address: str = "") -> DeliveryEvent | None:
    """The recipient's last final delivery event, else its last delivery event, else None.
    Events a report added (`source` set) say nothing of how the recipient is counted."""
    mine = [e for e in events if not e.source and ((index >= 0 and e.rcpt_index == index)
                                                   or (address and e.rcpt.lower() == address))]
    final = [e for e in mine if e.final]
    return (final or mine or [None])[-1]


def _address_of(value: str | None) -> str:
    """An address from a path or header value: `<a@b>` -> `a@b`."""
    if not value:
        return ""
    text = value.strip()
    start, end = text.find("<"), text.rfind(">")
    return (text[start + 1:end] if 0 <= start < end else text).strip()


def _canonical_ip(text: str) -> str:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return ""
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class Attributor:
    """Attributes reports with the VERP codec and what Redis holds (events, message index)."""

    def __init__(self, redis, codec: VerpCodec, *, pending_grace: float = PENDING_GRACE_SECONDS,
                 clock=time.time) -> None:
        self.redis = redis
        self.codec = codec
        self.pending_grace = pending_grace
        self._clock = clock

    async def attribute(self, report: Report, recipients: Sequence[InboundRecipient], routing,
                        domains: frozenset[str]) -> Attribution:
        """The targets of `report`, received for `recipients` on a server with this
        routing (a `dataplane.routing.Routing`: its pools by internal name and by IP are
        indexes it keeps) and these bounce domains. Redis errors propagate (the caller
        answers 451)."""
        server_id = routing.snapshot.server_id
        claims, nothing = _claims(report)
        if nothing is not None:
            return nothing
        notes: list[str] = []
        for token in self._verp_tokens(report, recipients, domains, notes):
            found = await self._by_message(server_id, token.message_id, claims, report, "verp", notes,
                                           token.rcpt_index)
            if found is not None:
                return found
        for message_id, via in await self._messages_from_headers(server_id, report, notes):
            found = await self._by_message(server_id, message_id, claims, report, via, notes)
            if found is not None:
                return found
        found = self._by_pool(claims, report, routing, notes)
        if found is not None:
            return found
        return Attribution(reason="; ".join(notes[:4]) or "no VERP return path, no message or pool of ours named")

    # -- 1. VERP ----------------------------------------------------------------------

    def _verp_tokens(self, report: Report, recipients: Sequence[InboundRecipient], domains: frozenset[str],
                     notes: list[str]) -> list[VerpToken]:
        tokens = list({(r.token.message_id, r.token.rcpt_index): r.token for r in recipients if r.token}.values())
        if tokens:
            return tokens
        paths = [report.feedback.original_mail_from if report.feedback else "", report.returned_header("return-path")]
        for path in filter(None, map(_address_of, paths)):
            try:
                return [self.codec.decode(path, domains)]
            except VerpError as exc:
                if exc.reason is not VerpReason.NOT_OURS:
                    notes.append(f"return path <{quoted(path)}> refused: {exc.reason.value}")
        return []

    # -- 2. the returned headers ------------------------------------------------------

    async def _messages_from_headers(self, server_id: int, report: Report,
                                     notes: list[str]) -> list[tuple[str, str]]:
        """[(our message id, how it was found)] the returned headers name: the ids in
        our Received lines, then the one the message index holds for the Message-ID."""
        found = list(dict.fromkeys(
            (match.group(1), "received") for name, value in report.returned_headers
            if name.lower() == "received" for match in [_OUR_RECEIVED.search(value)] if match
        ))
        header_id = indexed_message_id(report.returned_header("message-id"))
        if header_id is not None:
            message_id = await event_log.find_message(self.redis, server_id, header_id)
            if _MESSAGE_ID.fullmatch(message_id):
                found.append((message_id, "message-id"))
            else:
                notes.append(f"Message-ID <{quoted(header_id)}> is not in the message index")
        return found

    def _by_pool(self, claims: list[_Claim], report: Report, routing, notes: list[str]) -> Attribution | None:
        """Complaints counted for the pool and IP the headers name, without a message."""
        if claims[0].kind != COMPLAINT:
            return None  # a bounce moves a recipient's count: it needs the message
        named = (report.returned_header(STAMPED_HEADER_NAMES.virtual_mta) or "").strip()
        pool = routing.pool_named(named)
        candidates = [report.feedback.source_ip if report.feedback else ""]
        candidates += [m for name, value in report.returned_headers if name.lower() == "received"
                       for m in _IP_LITERAL.findall(value)]
        ip = next((a for a in map(_canonical_ip, candidates) if routing.pool_of_ip(a) is not None), "")
        pool = pool or routing.pool_of_ip(ip)
        if pool is None:
            notes.append("the returned headers name no pool or IP of this server")
            return None
        # Without a message id the report's own content is what it is counted by once.
        fingerprint = hashlib.sha256(repr((report.returned_headers, report.feedback)).encode(
            "utf-8", "surrogateescape")).hexdigest()[:32]
        targets = tuple(
            Target(kind=COMPLAINT, source=report.kind, via="headers",
                   subject=f"{COMPLAINT}:h:{fingerprint}:{claim.address}", message_id="", rcpt=claim.address,
                   rcpt_index=-1, user_id=pool.user_id, bridge_id=0, smtp_id=pool.smtp_id,
                   pool=pool.internal_name, ip=ip, counted="", at_ms=0, attempt=0, reply=_reply(claim, report),
                   suppresses=claim.suppresses)
            for claim in claims
        )
        return Attribution(targets)

    # -- the message's events ---------------------------------------------------------

    def _young(self, message_id: str) -> bool:
        return self._clock() * 1000 - _accepted_ms(message_id) < self.pending_grace * 1000

    async def _by_message(self, server_id: int, message_id: str, claims: list[_Claim], report: Report, via: str,
                          notes: list[str], rcpt_index: int | None = None) -> Attribution | None:
        """Targets from the message's delivery events; None (with a note) when they
        cannot say; a retry when its outcome is not recorded yet."""
        events = await event_log.message_events(self.redis, (server_id,), message_id)
        retry = Attribution(retry=True, reason=f"message {message_id}: delivery outcome not recorded yet")
        if not events:
            if self._young(message_id):
                return retry
            notes.append(f"message {message_id} has no delivery events (expired, or never delivered)")
            return None
        named = (report.returned_header(STAMPED_HEADER_NAMES.virtual_mta) or "").strip().lower()
        if named and via != "verp" and named != events[0].pool.lower():
            notes.append(f"x-virtual-mta {quoted(named)!r} is not the pool of message {message_id}")
            return None
        pairs: list[tuple[_Claim, DeliveryEvent | None, bool]] = []  # (claim, event, recipient named)
        if rcpt_index is not None:
            event = _last_delivery(events, index=rcpt_index)
            rcpt = event.rcpt.lower() if event else ""
            pairs.append((next((c for c in claims if c.address == rcpt), claims[0]), event, True))
        else:
            recipients = {e.rcpt.lower() for e in events if not e.source}
            only = next(iter(recipients)) if len(recipients) == 1 else ""
            for claim in claims:
                address = claim.address if claim.address in recipients else only
                event = _last_delivery(events, address=address) if address else None
                if event is None and claim.kind == COMPLAINT and recipients:
                    # A complaint that names none of several recipients (feedback loops
                    # often redact it) still counts once for the message's pool and IP.
                    pairs.append((claim, _last_delivery(events, address=min(recipients)), False))
                else:
                    pairs.append((claim, event, True))
        # A recipient whose delivery is not final (or, named by VERP, not recorded) yet.
        waiting = any((e is None and rcpt_index is not None) or (e is not None and not e.final)
                      for _, e, named in pairs if named)
        if waiting and self._young(message_id):
            return retry
        targets = tuple(self._target(c, e, report, via, message_id, named) for c, e, named in pairs if e is not None)
        if not targets:
            notes.append(f"message {message_id} has no recipient the report names")
            return None
        return Attribution(targets)

    @staticmethod
    def _target(claim: _Claim, event: DeliveryEvent, report: Report, via: str, message_id: str,
                named: bool) -> Target:
        who = (event.rcpt_index if event.rcpt_index >= 0 else event.rcpt.lower()) if named else "*"
        return Target(
            kind=claim.kind, source=report.kind, via=via, subject=f"{claim.kind}:{message_id}:{who}",
            message_id=message_id, rcpt=event.rcpt if named else "", rcpt_index=event.rcpt_index if named else -1,
            user_id=event.user_id, bridge_id=event.bridge_id, smtp_id=event.smtp_id, pool=event.pool, ip=event.ip,
            counted=event.outcome if event.final and named else "", at_ms=event.ts_ms, attempt=event.attempt,
            reply=_reply(claim, report), suppresses=claim.suppresses,
        )

