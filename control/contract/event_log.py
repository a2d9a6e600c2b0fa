"""The delivery event log: where an MTA server's delivery events and message index
live in Redis, sized by configuration rather than by traffic (issue 14).

Per MTA server N, all under its `{stats:N}` tag (so the scripts that apply a
worker's counts also write its events, on one Redis Cluster slot, exactly once
under the same marker):

* one Stream of every event (`rediskeys.event_stream_key`, field "e": the event's
  JSON, `delivery_event.DeliveryEvent.encode`), capped by length
  (`XADD MAXLEN ~ max_events`) and by age (`XTRIM MINID ~` now - retention);
* index buckets, one per `bucket_seconds` of writing time, listed in a sorted set
  (`rediskeys.event_buckets_key`, member the bucket's start, score its end): a hash
  our message id -> its events' stream ids
  (`event_index_bucket_key`) and a hash Message-ID digest -> our message id
  (`message_index_bucket_key`). A bucket's hashes expire as a whole one retention
  after the bucket ends, and go sooner, at the next write, once every event of
  theirs was trimmed from the stream; so the index holds at most the entries of
  the current bucket and the one before beyond what the stream still holds.

Nothing scans the keyspace: trimming happens in the writing script, and every key
expires when its server stops writing. Reading a message's events is one script:
one HGET in each bucket that ends after the message was accepted (our message ids
start with that time, `dataplane.spool`: a recent message looks at a bucket or
two), then one XRANGE per event id; events written before this log
(`rediskeys.message_events_key` lists, `message_index_key` strings) are read too
until they expire.

Stream ids are taken from the writer's clock (the time the counts of the same
batch go by), never below the stream's last id, so age trimming and buckets agree.
Redis 6.2 (the embedded one) is enough: XADD MAXLEN/XTRIM MINID with explicit ids.

Part of `control.contract`: the data plane writes (stats batcher, inbound
accounting) and both planes read (GetMessageStatus, REST status, attribution).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from . import rediskeys
from .delivery_event import DeliveryEvent, decode_list

__all__ = [
    "CLOCK_SLACK_SECONDS", "DEFAULT_MAX_EVENTS", "DEFAULT_RETENTION_SECONDS", "EVENT_LOG_ARGS", "EVENT_LOG_LUA",
    "READ_EVENTS_LUA", "EventRetention", "accepted_at", "find_message", "message_events", "read_events_input",
]

DEFAULT_RETENTION_SECONDS = 7 * 86400
# About 450 bytes of Redis memory each (the event's JSON, its stream entry and its
# index entry): 200,000 events are about 90 MB.
DEFAULT_MAX_EVENTS = 200_000

# How many ARGV the write functions of EVENT_LOG_LUA take (EventRetention.script_args).
EVENT_LOG_ARGS = 8


@dataclass(frozen=True)
class EventRetention:
    """How long and how many delivery events an MTA server keeps in Redis."""

    seconds: int = DEFAULT_RETENTION_SECONDS
    max_events: int = DEFAULT_MAX_EVENTS

    def __post_init__(self) -> None:
        if self.seconds < 1 or self.max_events < 1:
            raise ValueError(f"event retention needs at least 1 second and 1 event, got {self.seconds} s and "
                             f"{self.max_events} events")

    @property
    def bucket_seconds(self) -> int:
        """The width of an index bucket: 5 minutes, wider for long retentions so that a
        read looks at no more than about 1,000 buckets."""
        return max(300, math.ceil(self.seconds / 1024))

    def script_args(self, server_id: int, now: float) -> list[str | int]:
        """The EVENT_LOG_ARGS arguments that `event_log(at)` of EVENT_LOG_LUA reads
        for MTA server `server_id`, writing at `now` (unix seconds)."""
        return [rediskeys.event_stream_key(server_id), rediskeys.event_buckets_key(server_id),
                rediskeys.event_index_bucket_key(server_id, ""), rediskeys.message_index_bucket_key(server_id, ""),
                self.seconds, self.max_events, self.bucket_seconds, int(now * 1000)]


# Lua functions for a writing script, placed before its body. `event_log(at)` opens
# the log described by ARGV[at .. at + EVENT_LOG_ARGS - 1] (EventRetention.script_args);
# then log.event(message_id, json) appends an event, log.index(field, message_id)
# writes a message index entry, and log.finish() (once, at the end) sets expiries
# and trims by age, dropping the index buckets whose events are all gone. The keys
# are all of one server's `{stats:N}` slot, like the script's declared KEYS.
EVENT_LOG_LUA = """
local function event_log(at)
  local log = {stream = ARGV[at], buckets = ARGV[at + 1], by_message = ARGV[at + 2], by_header = ARGV[at + 3],
               retention = tonumber(ARGV[at + 4]), max = ARGV[at + 5], width = tonumber(ARGV[at + 6]),
               now_ms = tonumber(ARGV[at + 7]), used = false}
  log.now = math.floor(log.now_ms / 1000)
  log.bucket = math.floor(log.now / log.width) * log.width
  local function next_id()  -- Redis 6.2 takes no "<ms>-*": the sequence is counted here
    if not log.ms then
      local last = redis.call('XREVRANGE', log.stream, '+', '-', 'COUNT', 1)[1]
      local ms, seq = 0, 0
      if last then ms, seq = string.match(last[1], '^(%d+)-(%d+)$') end
      ms, seq = tonumber(ms), tonumber(seq)
      if ms < log.now_ms then ms, seq = log.now_ms, -1 end
      log.ms, log.seq = ms, seq
    end
    log.seq = log.seq + 1
    return string.format('%d-%d', log.ms, log.seq)
  end
  function log.event(message_id, json)
    local id = redis.call('XADD', log.stream, 'MAXLEN', '~', log.max, next_id(), 'e', json)
    local key = log.by_message .. log.bucket
    local ids = redis.call('HGET', key, message_id)
    redis.call('HSET', key, message_id, ids and (ids .. ' ' .. id) or id)
    log.used = true
  end
  function log.index(field, message_id)
    redis.call('HSET', log.by_header .. log.bucket, field, message_id)
    log.used = true
  end
  function log.finish()
    if not log.used then return end
    local expires = log.bucket + log.width + log.retention
    redis.call('EXPIREAT', log.by_message .. log.bucket, expires)
    redis.call('EXPIREAT', log.by_header .. log.bucket, expires)
    redis.call('ZADD', log.buckets, log.bucket + log.width, log.bucket)
    redis.call('EXPIREAT', log.buckets, expires)
    redis.call('XTRIM', log.stream, 'MINID', '~', string.format('%d', (log.now - log.retention) * 1000))
    redis.call('EXPIREAT', log.stream, expires)
    local first = redis.call('XRANGE', log.stream, '-', '+', 'COUNT', 1)[1]
    local oldest = first and math.floor(tonumber(string.match(first[1], '^(%d+)')) / 1000) or log.now
    -- a bucket whose events all precede the oldest one kept (it ends by then) is gone
    local gone = math.min(math.max(oldest, log.now - log.retention), log.bucket)
    for _, b in ipairs(redis.call('ZRANGEBYSCORE', log.buckets, '-inf', gone)) do
      redis.call('DEL', log.by_message .. b, log.by_header .. b)
    end
    redis.call('ZREMRANGEBYSCORE', log.buckets, '-inf', gone)
  end
  return log
end
"""

# KEYS[1] the stream, KEYS[2] the buckets; ARGV[1] the index bucket prefix, ARGV[2]
# our message id, ARGV[3] the end after which its buckets are (a ZRANGEBYSCORE min;
# `read_events_input`). The message's events (JSON), oldest first.
READ_EVENTS_LUA = """
local events = {}
for _, b in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[3], '+inf')) do
  local ids = redis.call('HGET', ARGV[1] .. b, ARGV[2])
  if ids then
    for id in string.gmatch(ids, '%S+') do
      local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
      if entry then events[#events + 1] = entry[2][2] end
    end
  end
end
return events
"""

# KEYS[1] the buckets; ARGV[1] the message index bucket prefix, ARGV[2] the field.
# Our message id, from the newest bucket that has one; nil when none has.
_FIND_MESSAGE = """
local buckets = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = #buckets, 1, -1 do
  local found = redis.call('HGET', ARGV[1] .. buckets[i], ARGV[2])
  if found then return found end
end
return false
"""


async def message_events(redis, server_ids: Iterable[int], message_id: str) -> list[DeliveryEvent]:
    """A message's delivery events in the event logs of MTA servers `server_ids` and
    in its list from before the log (`rediskeys.message_events_key`), oldest first; []
    if none. An entry that is not a delivery event is left out. One round trip: a
    pipeline of one LRANGE and one script per server (EVAL: a pipeline's EVALSHA
    would cost a SCRIPT EXISTS first)."""
    pipe = redis.pipeline(transaction=False)
    pipe.lrange(rediskeys.message_events_key(message_id), 0, -1)
    for server_id in dict.fromkeys(server_ids):
        keys, args = read_events_input(server_id, message_id)
        pipe.eval(READ_EVENTS_LUA, len(keys), *keys, *args)
    replies = await pipe.execute()
    return sorted(decode_list([raw for reply in replies for raw in reply]), key=lambda event: event.ts_ms)


def read_events_input(server_id: int, message_id: str) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of READ_EVENTS_LUA reading `message_id`'s events in the event
    log of MTA server `server_id` (its JSON texts, oldest first): the buckets that
    end after the message was accepted (every bucket when its id does not say)."""
    accepted = accepted_at(message_id)
    since = "-inf" if accepted is None else f"({int(accepted) - CLOCK_SLACK_SECONDS}"
    return ([rediskeys.event_stream_key(server_id), rediskeys.event_buckets_key(server_id)],
            [rediskeys.event_index_bucket_key(server_id, ""), message_id, since])


# How far the clock that named a message may be ahead of the one its events were
# written by (the workers of one MTA server share a host).
CLOCK_SLACK_SECONDS = 60


def accepted_at(message_id: str, now: float | None = None) -> float | None:
    """When a message was accepted (unix seconds), from its id: our ids start with the
    time in milliseconds as 12 hex digits (`dataplane.spool`). None when the id does
    not start so, or names a time more than a day after `now` (not one of ours)."""
    try:
        accepted = int(message_id[:12], 16) / 1000 if len(message_id) > 12 else None
    except ValueError:
        return None
    now = time.time() if now is None else now
    return accepted if accepted is not None and accepted < now + 86400 else None


async def find_message(redis, server_id: int, header_message_id: str) -> str:
    """Our message id for a Message-ID header value the Bridge of MTA server
    `server_id` accepted (`message_headers.indexed_message_id`), from the newest
    index bucket holding it, else from the index of before the log; "" when unknown."""
    field = rediskeys.message_index_field(header_message_id)
    found = await redis.register_script(_FIND_MESSAGE)(
        keys=[rediskeys.event_buckets_key(server_id)],
        args=[rediskeys.message_index_bucket_key(server_id, ""), field])
    if not found:
        found = await redis.get(rediskeys.message_index_key(header_message_id))
    return found.decode("ascii", "replace") if isinstance(found, bytes) else (found or "")
