"""The demo's second channel, the REST Bridge, and the check that both channels are
treated alike.

`RestSender` sends a batch of the plan (`traffic.Message`s with `channel` REST, each
both a JSON message and its MIME bytes) through the data plane's `--http-listen` with
the Pool's Bridge credentials (HTTP Basic), over one keep-alive aiohttp session, in
turn in the API's three shapes: one `POST /v1/messages` per message with the JSON
message (built into MIME by the Bridge), one `POST /v1/messages/batch` for the
batch, and one `POST /v1/messages` per message with the raw message
(`message/rfc822`, the envelope in the query string).

`check_channels` reads what the destination received (the sink's log) and splits it
by channel (a REST message's Message-ID carries `plan.REST_MESSAGE_ID_MARK`): each
channel's mail must have arrived exactly as often as it was accepted and not bounced,
and only from source IPs of its own Pool, rotated across them like the SMTP mail.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from .plan import REST, REST_MESSAGE_ID_MARK, SMTP
from .provision import ProvisionedPool, Tenant
from .stack import Stack

# At most this many messages per batch request: the data plane's default
# `--rest-max-batch` (`control` cannot import `dataplane`'s constant).
REST_BATCH_MAX = 100
REQUEST_TIMEOUT = 30.0
MESSAGES = "/v1/messages"
BATCH = "/v1/messages/batch"
RAW = "/v1/messages (message/rfc822)"  # a key of `RestSender.requests`


class RestSender:
    """Sends the plan's REST batches through the REST Bridge at `http` (host, port);
    `requests` counts the requests made per path."""

    def __init__(self, http: tuple[str, int], session: aiohttp.ClientSession) -> None:
        self.base = f"http://{http[0]}:{http[1]}"
        self.session = session
        self.requests: Counter[str] = Counter()
        self._batches = 0

    async def send(self, provisioned: ProvisionedPool, messages: list) -> list[str | None]:
        """Send `messages` (one Pool's) with its Bridge's credentials; per message None
        when the Bridge accepted it (202), else why not. Raises aiohttp.ClientError or
        OSError when the requests themselves fail."""
        auth = aiohttp.BasicAuth(provisioned.bridge.username, provisioned.secret)
        self._batches += 1
        if self._batches % 3 == 1:
            return [await self._one(auth, message.document) for message in messages]
        if self._batches % 3 == 0:
            sender = provisioned.plan.sender
            return [await self._raw(auth, sender, message.recipient, message.data) for message in messages]
        results: list[str | None] = []
        for start in range(0, len(messages), REST_BATCH_MAX):
            results += await self._batch(auth, [m.document for m in messages[start:start + REST_BATCH_MAX]])
        return results

    async def _one(self, auth: aiohttp.BasicAuth, document: dict) -> str | None:
        self.requests[MESSAGES] += 1
        async with self.session.post(self.base + MESSAGES, json=document, auth=auth) as response:
            body = await response.json(content_type=None)
        return None if response.status == 202 else _problem(response.status, body)

    async def _raw(self, auth: aiohttp.BasicAuth, sender: str, recipient: str, data: bytes) -> str | None:
        self.requests[RAW] += 1
        async with self.session.post(self.base + MESSAGES, data=data, params={"from": sender, "to": recipient},
                                     headers={"Content-Type": "message/rfc822"}, auth=auth) as response:
            body = await response.json(content_type=None)
        return None if response.status == 202 else _problem(response.status, body)

    async def _batch(self, auth: aiohttp.BasicAuth, documents: list[dict]) -> list[str | None]:
        self.requests[BATCH] += 1
        async with self.session.post(self.base + BATCH, json={"messages": documents}, auth=auth) as response:
            body = await response.json(content_type=None)
        if response.status not in (200, 207):
            return [_problem(response.status, body)] * len(documents)
        return [None if r["status"] == 202 else _problem(r["status"], r.get("problem", {})) for r in body["results"]]


def _problem(status: int, body) -> str:
    """A refusal as one line: status, and the problem's title and detail."""
    if not isinstance(body, dict):
        return f"HTTP {status}"
    return f"HTTP {status} {body.get('title', '')}: {str(body.get('detail', ''))[:200]}"


def rest_session() -> aiohttp.ClientSession:
    """The demo's HTTP client: keep-alive connections, a bounded wait per request."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))


@dataclass
class ChannelCheck:
    """One Pool's mail over one channel: accepted by its Bridge (and of it, bounced),
    what the destination received of it, and from which source IPs ({ip: messages})."""

    channel: str
    pool: str  # its label
    accepted: int = 0
    bounced: int = 0
    delivered: int = 0
    sources: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def check_channels(stack: Stack, tenant: Tenant, tallies: list) -> list[ChannelCheck]:
    """SMTP and REST side by side, Pool by Pool: what each channel's Bridge accepted (from
    `tallies`, `traffic.PoolTally` per Pool of the tenant) against what the sink received
    of it, and from where: only from the Pool's own IPs."""
    checks: dict[tuple[str, str], ChannelCheck] = {}
    for provisioned, tally in zip(tenant.pools, tallies, strict=True):
        label = provisioned.plan.label
        checks[SMTP, label] = ChannelCheck(SMTP, label, tally.sent - tally.rest_sent, tally.bounce - tally.rest_bounce)
        checks[REST, label] = ChannelCheck(REST, label, tally.rest_sent, tally.rest_bounce)
    pools = {p.pool.internal_name: p for p in tenant.pools}
    try:
        lines = stack.sink_log_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        record = json.loads(line)
        if record.get("mail_from") in ("", "<>"):  # a DSN poolmta sent to a sender, not a sender's mail
            continue
        channel = REST if REST_MESSAGE_ID_MARK in (record.get("message_id") or "") else SMTP
        pool = pools.get(record.get("x-virtual-mta") or "")
        label = pool.plan.label if pool is not None else "?"
        check = checks.setdefault((channel, label), ChannelCheck(channel, label))
        check.delivered += 1
        check.sources[record["peer"]] += 1
        if pool is None or record["peer"] not in pool.plan.addresses:
            check.problems.append(f"{channel}: message {record.get('message_id')} came from {record['peer']}, "
                                  f"not from an IP of its Pool")
    for check in checks.values():
        if check.delivered != check.accepted - check.bounced:
            check.problems.append(f"{check.channel} mail of {check.pool}: the sink received {check.delivered} "
                                  f"message(s), {check.accepted - check.bounced} were accepted and not bounced")
    return sorted(checks.values(), key=lambda c: (c.channel != SMTP, c.pool))
