"""Accounting: a report's targets applied to Redis exactly once, and the store of
the reports that counted nothing.

`Accounting.apply` runs ONE Lua script per report. For each target it first sets
the target's marker (SET NX, `rediskeys.report_marker_key`, kept 45 days); only a
target whose marker was not there yet changes anything:

* a permanent bounce of a recipient counted delivered moves it: `delivered` -1,
  `bounced` +1, in the lifetime totals and the day, hour and minute buckets of the
  delivery (those not expired yet) of the pool, the IP and the pool+IP
  (`counter_keys`, which is `rediskeys.count_targets`), so sent = delivered +
  bounced still holds for every key and bucket, and trends keep adding up. A recipient counted bounced already, or not final,
  moves nothing;
* a complaint adds 1 to `complaints` of the same keys (the delivery's buckets, or
  the report's when no message is known);
* the message gets an event (`DeliveryEvent`, `source` the report's kind, final)
  that `message status` shows, in the server's event log
  (`control.contract.event_log`, under `{stats:N}` like the counters);
* the recipient goes on the account's suppression list (HSETNX: a first entry
  stays) when the account and the address are known: a second script, in the
  account's `{supp:USER}` slot, under a marker of its own there
  (`rediskeys.suppression_marker_key`), so each script stays on one Redis Cluster
  slot and each is applied exactly once on its own.

Each script is one atomic unit, and the listener answers 250 only after Redis
acknowledged both (the embedded Redis runs with appendfsync always): a crash right
after the 250 loses nothing; a crash between the two means no 250, and the
sender's retry finds the first one's markers, counts nothing again and applies
what the crash cut off. With Redis down the caller answers 451 and the sender retries.

Which keys a move touches is `counter_keys` alone; counters and markers share the
server's `{stats:N}` slot, and so does the event log; the suppression step is a
script of its own on the account's `{supp:USER}` slot, so every script stays on one
slot of a Redis Cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from control.contract import rediskeys
from control.contract.event_log import DEFAULT_MAX_EVENTS, EVENT_LOG_ARGS, EVENT_LOG_LUA, EventRetention
from control.contract.delivery_event import (
    BOUNCED,
    COMPLAINED,
    DELIVERED,
    DeliveryEvent,
)
from control.contract.suppression import (
    AddressError,
    SuppressionEntry,
    normalize_address,
)
from control.contract.unattributed import RAW_KEPT_BYTES, UnattributedReport

from .attribution import BOUNCE, Target

# KEYS: every key the ops name, by index. ARGV[1] marker TTL, ARGV[2..] the event
# log's arguments (EventRetention.script_args), then per target: its marker's KEYS
# index, its op count, and the ops, each one of
#   H key field increment expires (HINCRBY; then EXPIREAT the key unless expires is 0)
#   E key message_id event        (the event into the log; key: its stream)
# Returns, per target, 1 when applied now, 0 when its marker was there already.
_APPLY_REPORT = EVENT_LOG_LUA + """
local applied = {}
local log = event_log(2)
local i = 2 + """ + str(EVENT_LOG_ARGS) + """
while i <= #ARGV do
  local fresh = redis.call('SET', KEYS[tonumber(ARGV[i])], '1', 'NX', 'EX', ARGV[1])
  local ops = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, ops do
    local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
    if op == 'H' then
      if fresh then
        redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3])
        if ARGV[i + 4] ~= '0' then redis.call('EXPIREAT', key, ARGV[i + 4]) end
      end
      i = i + 5
    elseif op == 'E' then
      if fresh then log.event(ARGV[i + 2], ARGV[i + 3]) end
      i = i + 4
    end
  end
  applied[#applied + 1] = fresh and 1 or 0
end
log.finish()
return applied
"""

# KEYS[1] the report's marker, KEYS[2] the list, KEYS[3] the inbound counts;
# ARGV[1] marker TTL, ARGV[2] the entry, ARGV[3] how many entries the list keeps.
_KEEP_UNATTRIBUTED = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
redis.call('HINCRBY', KEYS[3], 'unattributed', 1)
return 1
"""

# KEYS[1] the suppression's marker, KEYS[2] the account's suppression list;
# ARGV[1] marker TTL, ARGV[2] the address, ARGV[3] the entry. 1 if applied now.
_SUPPRESS = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


def counter_keys(server_id: int, smtp_id: int, ip: str, at_ms: int, now_ms: int) -> tuple[rediskeys.CountTarget, ...]:
    """Every counter hash that counting one recipient's bounce or complaint at
    `at_ms` (its delivery, or the report) touches, as the stats batcher counts it:
    `rediskeys.count_targets`; without an `ip`, the pool's only. The one place a
    move's keys come from."""
    return rediskeys.count_targets(server_id, smtp_id, ip, at_ms / 1000, now=now_ms / 1000)


class _Script:
    """KEYS and ARGV of one `_APPLY_REPORT` call, built target by target."""

    def __init__(self, *fixed: str | int) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self._fixed = list(fixed)
        self._targets: list[tuple[int, list[list[str | int]]]] = []

    def _key(self, name: str) -> int:
        if name not in self._index:
            self.keys.append(name)
            self._index[name] = len(self.keys)
        return self._index[name]

    def target(self, marker: str) -> None:
        """Start the next target: its ops (`op`) apply only if `marker` is new."""
        self._targets.append((self._key(marker), []))

    def op(self, kind: str, key: str, *values: str | int) -> None:
        """Add an op (see `_APPLY_REPORT`) to the current target."""
        self._targets[-1][1].append([kind, self._key(key), *values])

    @property
    def args(self) -> list[str | int]:
        args = list(self._fixed)
        for marker, ops in self._targets:
            args += [marker, len(ops)]
            for op in ops:
                args += op
        return args


class Accounting:
    """Applies attributed reports and keeps unattributed ones, in Redis.

    server_id: the MTA server whose unattributed store this listener writes.
    event_ttl, max_events: how long and how many delivery events the server's event
    log keeps (the data plane's event retention, `event_log.EventRetention`).
    """

    def __init__(self, redis, *, server_id: int, event_ttl: float, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self.redis = redis
        self.server_id = server_id
        self.retention = EventRetention(max(1, int(event_ttl)), max_events)
        self._apply = redis.register_script(_APPLY_REPORT)
        self._keep = redis.register_script(_KEEP_UNATTRIBUTED)
        self._suppress_script = redis.register_script(_SUPPRESS)

    async def apply(self, targets: Sequence[Target], now_ms: int) -> list[bool]:
        """Count each target once (see the module docstring); per target, True when it
        was counted now, False when an earlier report had counted it already."""
        log_args = self.retention.script_args(self.server_id, now_ms / 1000)
        script = _Script(rediskeys.REPORT_MARKER_TTL_SECONDS, *log_args)
        suppressions = []
        for target in targets:
            script.target(rediskeys.report_marker_key(self.server_id, target.subject))
            if target.kind == BOUNCE:
                moves = (("delivered", -1), ("bounced", 1)) if target.counted == DELIVERED else ()
            else:
                moves = (("complaints", 1),)
            for counter in counter_keys(self.server_id, target.smtp_id, target.ip, target.at_ms or now_ms, now_ms):
                for field, n in moves:
                    script.op("H", counter.key, field, n, counter.expires_at or 0)
            if target.message_id and (moves or target.counted != BOUNCED):
                script.op("E", rediskeys.event_stream_key(self.server_id), target.message_id,
                          self._event(target, now_ms))
            if target.user_id and target.rcpt and target.suppresses:
                suppressions += self._suppression(target, now_ms)
        applied = [bool(n) for n in await self._apply(keys=script.keys, args=script.args)]
        for keys, args in suppressions:
            await self._suppress_script(keys=keys, args=args)
        return applied

    @staticmethod
    def _suppression(target: Target, now_ms: int) -> list[tuple[list[str], list[str | int]]]:
        """KEYS and ARGV of `_SUPPRESS` putting the recipient onto the account's
        suppression list, keyed and written as every writer of the list does
        (`control.contract.suppression`); none for an address the list cannot hold."""
        try:
            field = normalize_address(target.rcpt)
        except AddressError:
            return []
        entry = SuppressionEntry(reason=target.kind, at_ms=now_ms, message_id=target.message_id,
                                 source=target.source, detail=target.reply)
        keys = [rediskeys.suppression_marker_key(target.user_id, target.subject),
                rediskeys.suppression_key(target.user_id)]
        return [(keys, [rediskeys.REPORT_MARKER_TTL_SECONDS, field, entry.encode()])]

    @staticmethod
    def _event(target: Target, now_ms: int) -> str:
        return DeliveryEvent(
            ts_ms=now_ms, message_id=target.message_id, user_id=target.user_id, bridge_id=target.bridge_id,
            rcpt=target.rcpt, outcome=BOUNCED if target.kind == BOUNCE else COMPLAINED, smtp_id=target.smtp_id,
            pool=target.pool, ip=target.ip, reply=target.reply, attempt=target.attempt, final=True,
            rcpt_index=target.rcpt_index, source=target.source,
        ).encode()

    async def keep_unattributed(self, raw: bytes, *, reason: str, kind: str, peer: str, mail_from: str,
                                rcpt_tos: Sequence[str], subject: str, now_ms: int) -> bool:
        """Keep a report that counted nothing in the server's bounded store and count it;
        False when the same bytes were kept already (a retransmission)."""
        digest = hashlib.sha256(raw).hexdigest()
        entry = UnattributedReport(
            at_ms=now_ms, server_id=self.server_id, reason=reason[:500], kind=kind, peer=peer,
            mail_from=mail_from[:320], rcpt_tos=tuple(r[:320] for r in rcpt_tos[:20]), size=len(raw),
            sha256=digest, subject=subject[:200], raw=raw[:RAW_KEPT_BYTES],
        )
        keys = [rediskeys.unattributed_marker_key(self.server_id, digest),
                rediskeys.unattributed_reports_key(self.server_id), rediskeys.inbound_counts_key(self.server_id)]
        args = [rediskeys.UNATTRIBUTED_MARKER_TTL_SECONDS, entry.encode(), rediskeys.UNATTRIBUTED_KEPT]
        return bool(await self._keep(keys=keys, args=args))

    async def count_too_big(self) -> None:
        """Count a report refused for its size (552): nothing of it is kept."""
        await self.redis.hincrby(rediskeys.inbound_counts_key(self.server_id), "too_big", 1)
