"""Domain records <-> protobuf messages, at the edge of the servicers."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from . import models, reports_reader, stats_reader, suppressions
from ._pb.poolmta.v1 import poolmta_pb2 as pb
from .contract import rediskeys
from .contract import suppression as supp
from .contract.delivery_event import BOUNCED, COMPLAINED, DEFERRED, DELIVERED, DeliveryEvent
from .errors import InvalidArgument


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def tier_name(value: int) -> str:
    """The domain tier for a proto Tier; InvalidArgument for TIER_UNSPECIFIED or unknown."""
    if value == pb.TIER_UNSPECIFIED or value not in pb.Tier.values():
        raise InvalidArgument("tier is required: ESSENTIAL, PRO or BUSINESS")
    return pb.Tier.Name(value)


def _filter(value: int, enum, choices: dict, field: str):
    """The domain value the proto `enum` filter `value` names (its 0 value: no filter, in
    `choices` too); InvalidArgument naming the choices for a number the enum does not have."""
    try:
        return choices[value]
    except KeyError:
        names = ", ".join(enum.Name(v) for v in list(choices)[1:])
        raise InvalidArgument(f"{field} must be one of {names} (or unset: no filter), got {value}") from None


def tier_filter(value: int) -> str:
    """The tier a list filters on ('' = every tier)."""
    return _filter(value, pb.Tier, {pb.TIER_UNSPECIFIED: "", pb.ESSENTIAL: "ESSENTIAL", pb.PRO: "PRO",
                           pb.BUSINESS: "BUSINESS"}, "tier")


def pool_status_filter(value: int) -> str:
    """The models.POOL_* status a pool list filters on ('' = every status)."""
    return _filter(value, pb.PoolStatus, {pb.POOL_STATUS_UNSPECIFIED: "", pb.ACTIVE: models.POOL_ACTIVE,
                           pb.PAUSED: models.POOL_PAUSED, pb.EMPTY: models.POOL_EMPTY}, "status")


def ip_state_filter(value: int) -> str:
    """The IP state an IP list filters on ('' = both)."""
    return _filter(value, pb.IpState, {pb.IP_STATE_UNSPECIFIED: "", pb.IP_ACTIVE: models.IP_ACTIVE,
                           pb.IP_PAUSED: models.IP_PAUSED}, "state")


def bridge_revoked_filter(value: int) -> bool | None:
    """Whether a bridge list wants revoked bridges (True), active ones (False) or both (None)."""
    return _filter(value, pb.BridgeState, {pb.BRIDGE_STATE_UNSPECIFIED: None, pb.BRIDGE_ACTIVE: False,
                           pb.BRIDGE_REVOKED: True}, "state")


_RESOLUTIONS = {pb.MINUTE: rediskeys.MINUTE, pb.HOUR: rediskeys.HOUR}


def trend_resolution(value: int) -> rediskeys.Resolution:
    """The bucket size of a proto TrendResolution; InvalidArgument when unset or unknown."""
    try:
        return _RESOLUTIONS[value]
    except KeyError:
        raise InvalidArgument("resolution is required: MINUTE (kept 48 hours) or HOUR (kept 30 days)") from None


_WINDOWS = {pb.STATS_WINDOW_UNSPECIFIED: stats_reader.LIFETIME, pb.LIFETIME: stats_reader.LIFETIME,
            pb.LAST_30_DAYS: stats_reader.LAST_30_DAYS}


def window_name(value: int) -> str:
    """The stats window of a proto StatsWindow (unset is LIFETIME); InvalidArgument naming
    the allowed values for any other number."""
    try:
        return _WINDOWS[value]
    except KeyError:
        raise InvalidArgument(
            f"window must be LIFETIME ({pb.LIFETIME}) or LAST_30_DAYS ({pb.LAST_30_DAYS}); "
            f"unset means LIFETIME; got {value}") from None


def headers_in(headers) -> list[tuple[str, str]]:
    return [(h.name, h.value) for h in headers]


_DKIM_ALGORITHMS = {pb.RSA_SHA256: models.DKIM_RSA, pb.ED25519_SHA256: models.DKIM_ED25519}
_DKIM_STATES = {models.DKIM_ACTIVE: pb.DKIM_ACTIVE, models.DKIM_PUBLISHED: pb.DKIM_PUBLISHED,
                models.DKIM_RETIRED: pb.DKIM_RETIRED}


def dkim_algorithm(value: int) -> str:
    """The tag value (a=) of a proto DkimAlgorithm; unset is rsa-sha256."""
    if value == pb.DKIM_ALGORITHM_UNSPECIFIED:
        return models.DKIM_RSA
    try:
        return _DKIM_ALGORITHMS[value]
    except KeyError:
        raise InvalidArgument(f"algorithm must be RSA_SHA256 ({pb.RSA_SHA256}) or ED25519_SHA256 "
                              f"({pb.ED25519_SHA256}); got {value}") from None


def dkim_key(k: models.DkimKey, txt_record: str) -> pb.DkimKey:
    """A key as the API shows it, with its DNS record: never the private key."""
    return pb.DkimKey(
        key_id=k.key_id, domain=k.domain, selector=k.selector,
        algorithm=next(v for v, a in _DKIM_ALGORITHMS.items() if a == k.algorithm),
        state=_DKIM_STATES[k.state], create_time=timestamp(k.created_at), retire_time=timestamp(k.retired_at),
        dns_record_name=k.record_name, dns_txt_record=txt_record,
    )


def account(a: models.Account) -> pb.Account:
    return pb.Account(user_id=a.user_id, name=a.name, tier=pb.Tier.Value(a.tier), create_time=timestamp(a.created_at))


def server(s: models.MtaServer) -> pb.MtaServer:
    return pb.MtaServer(
        server_id=s.server_id, hostname=s.hostname, zone=s.zone, routing_version=s.routing_version,
        shared_pool=s.shared_pool, create_time=timestamp(s.created_at), bounce_domain=s.bounce_domain,
    )


def pool(p: models.Pool) -> pb.Pool:
    return pb.Pool(
        smtp_id=p.smtp_id, label=p.label, tag=p.tag, internal_name=p.internal_name,
        server_id=p.server_id, zone=p.zone, feed_type=p.feed_type,
        headers=[pb.Header(name=n, value=v) for n, v in p.headers],
        is_default=p.is_default, status=pb.PoolStatus.Value(p.status), ip_count=p.ip_count,
        bridge_count=p.bridge_count, create_time=timestamp(p.created_at), bounce_domain=p.bounce_domain,
        signing_domain=p.signing_domain, feedback_signing_domain=p.feedback_signing_domain,
    )


def ip(i: models.DedicatedIp) -> pb.DedicatedIp:
    return pb.DedicatedIp(
        address=i.address, smtp_id=i.smtp_id, pool_label=i.pool_label, server_id=i.server_id,
        weight=i.weight, state=pb.IP_ACTIVE if i.state == models.IP_ACTIVE else pb.IP_PAUSED,
        hostname=i.hostname, pending_operation_id=i.pending_operation_id,
        create_time=timestamp(i.created_at),
    )


def bridge(b: models.Bridge) -> pb.Bridge:
    return pb.Bridge(
        bridge_id=b.bridge_id, name=b.name, smtp_id=0 if b.shared else b.smtp_id,
        pool_label=b.pool_label, shared=b.shared, server_id=b.server_id, username=b.username,
        feed_type=b.feed_type, trusted_networks=list(b.trusted_networks), revoked=b.revoked,
        create_time=timestamp(b.created_at), secret_rotate_time=timestamp(b.secret_rotated_at),
        send_dsns=b.send_dsns,
    )


def operation(o: models.Operation) -> pb.Operation:
    return pb.Operation(
        operation_id=o.operation_id, state=pb.OperationState.Value(o.state), address=o.address,
        from_smtp_id=o.from_smtp_id, to_smtp_id=o.to_smtp_id, routing_version=o.routing_version,
        error=o.error, create_time=timestamp(o.created_at), update_time=timestamp(o.updated_at),
    )


def ip_stats(address: str, c: stats_reader.Counters) -> pb.IpStats:
    return pb.IpStats(
        address=address, sent=c.sent, delivered=c.delivered, bounced=c.bounced, deferred=c.deferred,
        complaints=c.complaints, delivery_rate=c.delivery_rate,
    )


def pool_stats(p: models.Pool, window: int, figures: stats_reader.PoolFigures) -> pb.PoolStats:
    t = figures.totals
    return pb.PoolStats(
        smtp_id=p.smtp_id, label=p.label, internal_name=p.internal_name,
        window=window or pb.LIFETIME, sent=t.sent, delivered=t.delivered, bounced=t.bounced,
        deferred=t.deferred, delivery_rate=t.delivery_rate, complaints=t.complaints,
        ips=[ip_stats(a, c) for a, c in figures.per_ip.items()], suppressed=t.suppressed,
        dkim_unsigned=t.dkim_unsigned,
    )


def trend(t: stats_reader.Trend, *, smtp_id: int = 0, pool_label: str = "", address: str = "") -> pb.Trend:
    """A trend's points (oldest first, zeros where nothing was counted) and their totals."""
    totals = t.totals
    return pb.Trend(
        smtp_id=smtp_id, pool_label=pool_label, address=address,
        resolution=next(v for v, r in _RESOLUTIONS.items() if r == t.resolution),
        points=[
            pb.TrendPoint(time=timestamp(p.start), sent=p.counters.sent, delivered=p.counters.delivered,
                          bounced=p.counters.bounced, deferred=p.counters.deferred,
                          complaints=p.counters.complaints)
            for p in t.points
        ],
        sent=totals.sent, delivered=totals.delivered, bounced=totals.bounced, deferred=totals.deferred,
        complaints=totals.complaints, delivery_rate=totals.delivery_rate,
    )


_OUTCOMES = {DELIVERED: pb.DELIVERED, BOUNCED: pb.BOUNCED, DEFERRED: pb.DEFERRED, COMPLAINED: pb.COMPLAINED}


def message_status(message_id: str, events: list[DeliveryEvent]) -> pb.MessageStatus:
    """The message's events as the API shows them; an outcome this version does not
    know becomes DELIVERY_OUTCOME_UNSPECIFIED."""
    return pb.MessageStatus(
        message_id=message_id,
        events=[
            pb.DeliveryEvent(
                time=timestamp(e.ts_ms / 1000),
                recipient=e.rcpt,
                outcome=_OUTCOMES.get(e.outcome, pb.DELIVERY_OUTCOME_UNSPECIFIED),
                smtp_id=e.smtp_id,
                pool=e.pool,
                ip=e.ip,
                reply=e.reply,
                attempt=e.attempt,
                final=e.final,
                source=e.source,
                dkim=e.dkim,
            )
            for e in events
        ],
    )


def unattributed_reports(found: reports_reader.UnattributedReports) -> pb.ListUnattributedReportsResponse:
    """The kept reports as the API shows them, newest first, with the servers' totals."""
    return pb.ListUnattributedReportsResponse(
        reports=[
            pb.UnattributedReport(
                time=timestamp(r.at_ms / 1000), server_id=r.server_id, reason=r.reason, kind=r.kind, peer=r.peer,
                mail_from=r.mail_from, rcpt_to=list(r.rcpt_tos), size=r.size, subject=r.subject, sha256=r.sha256,
                raw=r.raw, truncated=r.truncated,
            )
            for r in found.reports
        ],
        unattributed_total=found.unattributed_total,
        too_big_total=found.too_big_total,
        next_page_token=found.next_page_token,
    )


_SUPPRESSION_REASONS = {
    supp.REASON_BOUNCE: pb.SUPPRESSION_BOUNCE, supp.REASON_COMPLAINT: pb.SUPPRESSION_COMPLAINT,
    supp.REASON_MANUAL: pb.SUPPRESSION_MANUAL,
}


def suppression(s: suppressions.Suppression) -> pb.Suppression:
    """One suppressed address; a reason this version does not know becomes
    SUPPRESSION_REASON_UNSPECIFIED, an unrecorded time no create_time."""
    e = s.entry
    return pb.Suppression(
        address=s.address, reason=_SUPPRESSION_REASONS.get(e.reason, pb.SUPPRESSION_REASON_UNSPECIFIED),
        create_time=timestamp(e.at_ms / 1000) if e.at_ms > 0 else None, message_id=e.message_id,
        source=e.source, detail=e.detail,
    )
