"""What the demo checks: StatsService counts every message it sent, delivered or
bounced, Pool by Pool and IP by IP, and the destination (the sink) saw as many
messages from each source IP as StatsService says were delivered from it. The
DSNs the senders get for bounced mail reach the sink too, from the null sender
(its `notices`): they are counted apart, so they are left out of that match. And a
message the sink received carries a DKIM signature that dkimpy, an independent
implementation, verifies against the TXT record the API returned for the key."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import dkim
from rich.progress import Progress

from ..._pb.poolmta.v1 import poolmta_pb2 as pb
from ...contract.headers import STAMPED_HEADER_NAMES
from . import DemoError
from .provision import Api, Tenant
from .stack import Stack
from .traffic import PoolTally

STATS_POLL_SECONDS = 0.25
# The sink rewrites its counts file at most every 200 ms.
SINK_COUNTS_SETTLE_SECONDS = 5.0


async def pool_stats(api: Api, tenant: Tenant) -> list[pb.PoolStats]:
    """StatsService's lifetime figures of every Pool of the tenant, in plan order."""
    return list(await asyncio.gather(*(
        api("stats", "GetPoolStats", pb.GetPoolStatsRequest(smtp_id=p.pool.smtp_id, window=pb.LIFETIME))
        for p in tenant.pools
    )))


async def wait_until_final(api: Api, tenant: Tenant, tallies: list[PoolTally], timeout: float, progress: Progress,
                           stack: Stack) -> list[pb.PoolStats]:
    """Until StatsService counts every message sent as delivered or bounced in every Pool
    (deferred ones are delivered by a retry). DemoError with what is missing at the deadline."""
    total = sum(t.sent for t in tallies)
    task = progress.add_task("Delivering (StatsService)", total=total, rate="")
    deadline = time.monotonic() + timeout
    while True:
        stats = await pool_stats(api, tenant)
        final = sum(s.delivered + s.bounced for s in stats)
        deferred = sum(s.deferred for s in stats)
        progress.update(task, completed=min(final, total), rate=f"{deferred} deferral(s) retried")
        if all(s.delivered + s.bounced >= t.sent and s.sent >= t.sent for s, t in zip(stats, tallies, strict=True)):
            return stats
        stack.check_children()
        if time.monotonic() > deadline:
            missing = "; ".join(
                f"{s.label}: sent {t.sent}, StatsService sent {s.sent}, delivered {s.delivered}, "
                f"bounced {s.bounced}, deferred {s.deferred} ({t.sent - s.delivered - s.bounced} not final)"
                for s, t in zip(stats, tallies, strict=True)
            )
            raise DemoError(f"not every message was delivered or bounced within {timeout:g}s: {missing}")
        await asyncio.sleep(STATS_POLL_SECONDS)


async def settled_sink_counts(stack: Stack, delivered: int) -> dict:
    """The sink's counts once they show `delivered` accepted messages (or after a few seconds)."""
    deadline = time.monotonic() + SINK_COUNTS_SETTLE_SECONDS
    while True:
        counts = stack.sink_counts()
        if counts.get("accepted", 0) - counts.get("notices", 0) >= delivered or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


def check_totals(tallies: list[PoolTally], stats: list[pb.PoolStats], counts: dict) -> list[str]:
    """Every discrepancy between what was sent, what StatsService counts and what the sink saw."""
    problems = []
    for tally, s in zip(tallies, stats, strict=True):
        expected = (("sent", tally.sent), ("delivered", tally.delivered), ("bounced", tally.bounce))
        for name, want in expected:
            got = getattr(s, name)
            if got != want:
                problems.append(f"{s.label}: StatsService says {name} {got}, the demo expected {want}")
        for name in ("sent", "delivered", "bounced"):
            per_ip = sum(getattr(ip, name) for ip in s.ips)
            if per_ip != getattr(s, name):
                problems.append(f"{s.label}: its IPs' {name} add up to {per_ip}, "
                                f"the Pool's total is {getattr(s, name)}")
    delivered = sum(s.delivered for s in stats)
    accepted = int(counts.get("accepted", 0)) - int(counts.get("notices", 0))
    if accepted != delivered:
        problems.append(f"the sink accepted {accepted} message(s), StatsService counts {delivered} delivered")
    return problems


@dataclass(frozen=True)
class SourceCheck:
    """One source address: what the sink saw from it next to what StatsService counts.

    seen: the sink's counts for connections from it ({} when none came).
    ip: StatsService's figures for it; None for an address in no Pool.
    problem: the discrepancy, "" when the two agree.
    """

    address: str
    pool: str
    seen: dict
    ip: pb.IpStats | None
    problem: str = ""


def check_sources(stats: list[pb.PoolStats], counts: dict) -> list[SourceCheck]:
    """Every Pool IP, and every other address the sink accepted mail from, checked:
    the sink must have accepted exactly as many messages from an IP as StatsService
    counts delivered from it, and none from an address in no Pool."""
    peers = counts.get("peers", {})
    checks = []
    for s in stats:
        for ip in s.ips:
            seen = peers.get(ip.address, {})
            accepted = int(seen.get("accepted", 0)) - int(seen.get("notices", 0))
            problem = "" if accepted == ip.delivered else (
                f"{ip.address} ({s.label}): the sink accepted {accepted} message(s) from it, "
                f"StatsService counts {ip.delivered} delivered")
            checks.append(SourceCheck(ip.address, s.label, seen, ip, problem))
    known = {check.address for check in checks}
    for address, seen in sorted(peers.items()):
        if address not in known and seen.get("accepted"):
            checks.append(SourceCheck(address, "?", seen, None,
                                      f"the sink accepted {seen['accepted']} message(s) from {address}, "
                                      "which is in no Pool"))
    return checks


def received_message(stack: Stack, internal_name: str) -> tuple[dict, bytes] | None:
    """The first message the sink received from the Pool `internal_name` (a sender's, not a DSN
    poolmta sent from <>): its log record and bytes."""
    try:
        lines = stack.sink_log_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        record = json.loads(line)
        if record.get(STAMPED_HEADER_NAMES.virtual_mta) == internal_name and record.get("mail_from") not in ("", "<>"):
            try:
                return record, (stack.sink_store_dir / f"{record['n']}.eml").read_bytes()
            except OSError:
                return None
    return None


@dataclass(frozen=True)
class DkimCheck:
    """dkimpy's verdict on the signature of a message the sink received: its d= and s=,
    the record it was checked against, and what went wrong ("" when it verified)."""

    domain: str
    selector: str
    record_name: str
    problem: str = ""


def check_dkim(stack: Stack, tenant: Tenant) -> DkimCheck | None:
    """Verify the DKIM signature of the first message the sink received from the first
    Pool with dkimpy, the key's TXT record (as the API returned it) standing in for DNS;
    None when the tenant has no key."""
    key = tenant.dkim_key
    if key is None:
        return None
    found = received_message(stack, tenant.pools[0].pool.internal_name)
    if found is None:
        return DkimCheck(key.domain, key.selector, key.dns_record_name, "the sink kept no message to verify")
    record_name = key.dns_record_name.lower().encode()

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        return key.dns_txt_record.encode() if name.rstrip(b".").lower() == record_name else None

    verifier = dkim.DKIM(found[1])
    try:
        verified = verifier.verify(dnsfunc=txt)
    except dkim.DKIMException as exc:
        return DkimCheck(key.domain, key.selector, key.dns_record_name, f"dkimpy could not verify: {exc}")
    domain = (verifier.domain or b"").decode()
    selector = (verifier.selector or b"").decode()
    if not verified or (domain, selector) != (key.domain, key.selector):
        return DkimCheck(domain, selector, key.dns_record_name,
                         f"the signature of sink message #{found[0]['n']} (d={domain or '-'} s={selector or '-'}) "
                         f"does not verify with the key's record")
    return DkimCheck(domain, selector, key.dns_record_name)
