"""The one Lua script that applies a batch of counts, delivery events and message
index entries to Redis exactly once, and the inputs it takes: `counts_script_input`
builds its KEYS and ARGV, `apply_counts_once` runs it for a one-off correction.

The stats batcher (`stats_batcher`) runs it for each journal segment; the exactly
once argument (journal marks, one-off markers) is in that module's docstring. Kept
apart from the batcher: this is the Redis side of a batch, the batcher its timing,
journal and retries.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from control.contract import rediskeys
from control.contract.event_log import EVENT_LOG_ARGS, EVENT_LOG_LUA, EventRetention

# KEYS[1] the batch's marker, KEYS[2..] counter hashes; ARGV[1] the marker's TTL,
# ARGV[2] the journal segment's seq (the marker is its journal's mark: applied when
# the mark is below it) or 0 (a one-off marker, set NX), ARGV[3] the segment's
# marker of before the journal marks (a segment applied by a worker of before them
# but not deleted yet: applied already) or "", then the event log's arguments
# (EventRetention.script_args), then per counter hash: when it expires
# (unix seconds, 0 for never), how many fields follow, and that many field,
# increment pairs; then the number of events and (message id, JSON) pairs, the
# number of index entries and (field, message id) pairs.
_APPLY_BATCH = EVENT_LOG_LUA + """
local seq = tonumber(ARGV[2])
if seq > 0 then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= seq or
      (ARGV[3] ~= '' and redis.call('EXISTS', ARGV[3]) == 1) then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
elseif not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local a = 4 + """ + str(EVENT_LOG_ARGS) + """
for i = 2, #KEYS do
  local expires_at = tonumber(ARGV[a])
  local fields = tonumber(ARGV[a + 1])
  a = a + 2
  for f = 1, fields do
    redis.call('HINCRBY', KEYS[i], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  if expires_at > 0 then
    redis.call('EXPIREAT', KEYS[i], expires_at)
  end
end
local log = event_log(4)
for _, write in ipairs({log.event, log.index}) do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    write(ARGV[a], ARGV[a + 1])
    a = a + 2
  end
end
log.finish()
return 1
"""


# A change to counters: (field, smtp_id, address, when it happened (unix seconds),
# the finest bucket it is known to, amount; negative takes away).
CountChange = tuple[str, int, str, float, rediskeys.Resolution, int]


def counts_script_input(server_id: int, marker_id: str, changes: Iterable[CountChange],
                        now: float, marker_ttl: int = rediskeys.STATS_BATCH_MARKER_TTL_SECONDS, *,
                        journal_seq: int = 0, events: Iterable[tuple[str, str]] = (),
                        index: Iterable[tuple[str, str]] = (), retention: EventRetention = EventRetention(),
                        ) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the batch script (_APPLY_BATCH) applying `changes` to every
    hash `rediskeys.count_targets` names for them, and `events` ((message id, JSON))
    and `index` entries ((`rediskeys.message_index_field`, message id)) to the
    server's event log kept for `retention`, all once: with `journal_seq` 0, once per
    `marker_id` (nothing when the marker `stats_batch_marker_key(server_id,
    marker_id)` exists; it is kept `marker_ttl` seconds); else `marker_id` is a
    journal token, and the batch applies when its mark
    (`stats_journal_mark_key`) is below `journal_seq`."""
    increments: dict[str, tuple[int | None, Counter[str]]] = {}
    targets: dict[tuple, tuple[rediskeys.CountTarget, ...]] = {}
    for field, smtp_id, address, at, finest, n in changes:
        where = (smtp_id, address, at, finest)
        if where not in targets:  # the fields of one pool, IP and minute share their keys
            targets[where] = rediskeys.count_targets(server_id, smtp_id, address, at, now, finest)
        for target in targets[where]:
            increments.setdefault(target.key, (target.expires_at, Counter()))[1][field] += n
    if journal_seq:
        keys = [rediskeys.stats_journal_mark_key(server_id, marker_id)]
        # what named the segment's batch before journal marks (kept 7 days)
        legacy = rediskeys.stats_batch_marker_key(server_id, f"{marker_id}.{journal_seq:08d}")
    else:
        keys = [rediskeys.stats_batch_marker_key(server_id, marker_id)]
        legacy = ""
    args: list[str | int] = [marker_ttl, journal_seq, legacy, *retention.script_args(server_id, now)]
    for key, (expires_at, fields) in increments.items():
        keys.append(key)
        args += [expires_at or 0, len(fields)]
        for field, n in fields.items():
            args += [field, n]
    for pairs in (list(events), list(index)):
        args.append(len(pairs))
        for first, second in pairs:
            args += [first, second]
    return keys, args


async def apply_counts_once(redis, server_id: int, marker_id: str, changes: Iterable[CountChange],
                            now: float | None = None,
                            marker_ttl: int = rediskeys.STATS_BATCH_MARKER_TTL_SECONDS) -> bool:
    """Apply `changes` to the counters of MTA server `server_id` (lifetime totals and
    the buckets of the time each happened) exactly once per `marker_id`, in one Lua
    script: True when applied now, False when that marker was applied before. For a
    correction outside the batcher, such as an asynchronous bounce moving a recipient
    from delivered to bounced on the buckets of its delivery:

        await apply_counts_once(redis, server_id, f"async-bounce:{message_id}:{rcpt_index}",
                                [("delivered", smtp_id, ip, delivered_at, MINUTE, -1),
                                 ("bounced", smtp_id, ip, delivered_at, MINUTE, 1)])

    Raises redis-py's errors (RedisError, OSError): retrying with the same marker is safe."""
    keys, args = counts_script_input(server_id, marker_id, changes, time.time() if now is None else now, marker_ttl)
    return bool(await redis.register_script(_APPLY_BATCH)(keys=keys, args=args))
