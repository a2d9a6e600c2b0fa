"""The delivery event log: where an MTA server's delivery events and message index
live in Redis, sized by configuration rather than by traffic (issue 14).

Per MTA server N, all under its `{stats:N}` tag (so the scripts that apply a
worker's counts also write its events, on one Redis Cluster slot, exactly once
under the same marker):

* one Stream of every event (`rediskeys.event_stream_key`, field "e": the event as
  `delivery_event.DeliveryEvent.encode` packs it), capped by length
  (`XADD MAXLEN ~ max_events`) and by age (`XTRIM MINID ~` now - retention);
* index buckets, listed in a sorted set (`rediskeys.event_buckets_key`, member the
  bucket's name, score its latest write in unix seconds). A bucket "n<ms>" (named
  by when it was opened) is written until it is a `bucket_seconds` old or full,
  then the next one opens; it spreads its entries over INDEX_SHARDS hashes of each
  kind by a hash of the field (`_SHARD_LUA`, `index_bucket_keys`): our message id
  -> its events' stream ids (`event_index_bucket_key`, "<ms>-<seq>", a further id
  of the same millisecond as "-<seq>") and Message-ID digest -> our message id
  (`message_index_bucket_key`). A bucket is full when the hash a new entry goes to
  holds INDEX_SHARD_ENTRIES: every hash stays a compact ziplist. A bucket's hashes
  expire one retention after its last possible write, and go sooner, at the next
  write, once every event of theirs was trimmed from the stream (its score is
  below the oldest event kept); so the index holds the entries of what the stream
  holds plus at most the bucket straddling the trim point. Buckets written before
  the index was sharded (named by their start in seconds, score their end, one
  hash of each kind) are read and dropped the same way until they expire.

Memory, by construction (`bench/test_bench_events.py`, `bench/soak.py`; Redis 6.2,
64-bit): a typical event packs to ~150 bytes (a 30-character reply, a DKIM note),
~165 in the stream; its index entries, ~45 bytes by message id and ~70 by
Message-ID in ziplists, plus the hashes' own keys: ~285 bytes an event in all, so
the default `--events-max` of 150,000 holds ~43 MB. Events that keep the longest
reply (`delivery_event.REPLY_CHARS`, 200 characters) take ~460 bytes: ~69 MB.
Beyond: the full bucket straddling the trim point (at most 2 x 16 x 128 entries,
~0.3 MB) and, at low traffic, the keys of mostly empty buckets (at most ~1,024
time buckets a retention x 32 hashes x ~170 bytes, ~6 MB); the stream's trimming
is by whole nodes (`MAXLEN ~`: up to 100 events more). So one server's log stays
below ~80 MB above Redis's baseline whatever the traffic; a message of many
recipients costs one index entry of each kind, ~5 bytes more per recipient.

Nothing scans the keyspace: trimming happens in the writing script, and every key
expires when its server stops writing. Reading a message's events is one script:
one HGET in each bucket last written after the message was accepted (our message
ids start with that time, `dataplane.spool`: a recent message looks at a few
buckets), in the one hash of the bucket its id hashes to, then one XRANGE per
event id; events written before this log
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
    "INDEX_SHARDS", "INDEX_SHARD_ENTRIES", "READ_EVENTS_LUA", "EventRetention", "accepted_at", "find_message",
    "index_bucket_keys", "message_events", "read_events_input",
]

DEFAULT_RETENTION_SECONDS = 7 * 86400
# About 285 bytes of Redis memory each, 460 with the longest reply kept (the packed
# event, its stream entry and its index entries): 150,000 events are 43-69 MB, under
# the 100 MB that 1 M messages may add to Redis (issue 14; the arithmetic above).
DEFAULT_MAX_EVENTS = 150_000

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


# How many hashes of each kind an index bucket spreads its entries over, and how
# many entries one holds at most: a bucket is full when the hash an entry goes to
# holds INDEX_SHARD_ENTRIES, and the next entry opens a new bucket. At or below
# Redis's `hash-max-ziplist-entries` (`hash-max-listpack-entries` from Redis 7;
# 128 by default, and set so by the embedded Redis) a hash is a ziplist, about
# len(field) + len(value) + 4 bytes an entry, where a hashtable costs ~100 bytes
# more. INDEX_SHARDS bounds the keys of a bucket (2 x 16; at most ~1,024 time
# buckets a retention). Changing either needs a new bucket name prefix ("n").
INDEX_SHARDS = 16
INDEX_SHARD_ENTRIES = 128

# The shard an index entry's field goes to: the same function for writing and
# reading (a Lua number is a double: h * 31 stays exact).
_SHARD_LUA = """
local function index_shard(text)
  local h = 0
  for i = 1, #text do h = (h * 31 + string.byte(text, i)) % 1000003 end
  return h % """ + str(INDEX_SHARDS) + """
end
local function index_key(prefix, bucket, shard)  -- buckets named "n..." are sharded
  if string.byte(bucket, 1) == 110 then return prefix .. bucket .. ':' .. shard end
  return prefix .. bucket
end
"""

# Lua functions for a writing script, placed before its body. `event_log(at)` opens
# the log described by ARGV[at .. at + EVENT_LOG_ARGS - 1] (EventRetention.script_args);
# then log.event(message_id, event) appends an event, log.index(field, message_id)
# writes a message index entry, and log.finish() (once, at the end) dates the
# buckets written and trims by age, dropping the index buckets whose events are
# all gone. The keys are all of one server's `{stats:N}` slot, like the script's
# declared KEYS.
EVENT_LOG_LUA = _SHARD_LUA + """
local function event_log(at)
  local log = {stream = ARGV[at], buckets = ARGV[at + 1], by_message = ARGV[at + 2], by_header = ARGV[at + 3],
               retention = tonumber(ARGV[at + 4]), max = ARGV[at + 5], width = tonumber(ARGV[at + 6]),
               now_ms = tonumber(ARGV[at + 7]), used = false, written = {}, appended = {}}
  log.now = math.floor(log.now_ms / 1000)
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
    return log.seq
  end
  local function open(opened)  -- bucket "n<opened ms>" is the one written from here on
    log.opened, log.bucket = opened, 'n' .. opened
    log.written[log.bucket] = math.floor(opened / 1000) + log.width + log.retention  -- when its keys expire
  end
  local function bucket()  -- the newest bucket while it is younger than a width and not full
    if not log.bucket then
      local opened  -- of the newest "n" bucket: one or two older ones (their end as score) may rank above it
      for _, b in ipairs(redis.call('ZREVRANGE', log.buckets, 0, 2)) do
        opened = opened or tonumber(string.match(b, '^n(%d+)$'))
      end
      if opened and log.now_ms - opened < log.width * 1000 then open(opened)
      else open(math.max(log.now_ms, (opened or 0) + 1)) end
    end
    return log.bucket
  end
  local function put(prefix, field, value, append)
    local shard = index_shard(field)
    local key = index_key(prefix, bucket(), shard)
    local old = redis.call('HGET', key, field)
    if not old then
      local n = redis.call('HLEN', key)
      if n >= """ + str(INDEX_SHARD_ENTRIES) + """ then  -- full: the next bucket takes it
        open(math.max(log.now_ms, log.opened + 1))
        key, n = index_key(prefix, log.bucket, shard), 0
      end
      redis.call('HSET', key, field, value)
      if n == 0 then redis.call('EXPIREAT', key, log.written[log.bucket]) end
    elseif append then
      redis.call('HSET', key, field, old .. ' ' .. value)
    else
      redis.call('HSET', key, field, value)
    end
    log.used = true
  end
  function log.event(message_id, event)
    local seq = next_id()
    redis.call('XADD', log.stream, 'MAXLEN', '~', log.max, string.format('%d-%d', log.ms, seq), 'e', event)
    -- an event id of the same millisecond as the one before it in the entry is
    -- written "-<seq>" (this script's ids all share one millisecond)
    local same = log.appended[message_id] == bucket()
    put(log.by_message, message_id, same and string.format('-%d', seq) or string.format('%d-%d', log.ms, seq), true)
    log.appended[message_id] = log.bucket
  end
  function log.index(field, message_id)
    put(log.by_header, field, message_id, false)
  end
  function log.finish()
    if not log.used then return end
    -- a bucket's score: its latest write (unix seconds), never before its events' ids
    local stamp, expires = math.max(log.now, math.floor((log.ms or 0) / 1000)), 0
    for b, at in pairs(log.written) do
      redis.call('ZADD', log.buckets, 'GT', stamp, b)
      expires = math.max(expires, at)
    end
    redis.call('EXPIREAT', log.buckets, expires)
    redis.call('XTRIM', log.stream, 'MINID', '~', string.format('%d', (log.now - log.retention) * 1000))
    redis.call('EXPIREAT', log.stream, expires)
    local first = redis.call('XRANGE', log.stream, '-', '+', 'COUNT', 1)[1]
    local oldest = first and math.floor(tonumber(string.match(first[1], '^(%d+)')) / 1000) or log.now
    -- a bucket last written before the oldest event kept has no event left
    local gone = math.min(math.max(oldest, log.now - log.retention), stamp)
    for _, b in ipairs(redis.call('ZRANGEBYSCORE', log.buckets, '-inf', '(' .. gone)) do
      if string.byte(b, 1) == 110 then
        for shard = 0, """ + str(INDEX_SHARDS - 1) + """ do
          redis.call('DEL', log.by_message .. b .. ':' .. shard, log.by_header .. b .. ':' .. shard)
        end
      else
        redis.call('DEL', log.by_message .. b, log.by_header .. b)
      end
    end
    redis.call('ZREMRANGEBYSCORE', log.buckets, '-inf', '(' .. gone)
  end
  return log
end
"""

# KEYS[1] the stream, KEYS[2] the buckets; ARGV[1] the index bucket prefix, ARGV[2]
# our message id, ARGV[3] the end after which its buckets are (a ZRANGEBYSCORE min;
# `read_events_input`). The message's events (as written: packed, or JSON), oldest first.
READ_EVENTS_LUA = _SHARD_LUA + """
local events, shard = {}, index_shard(ARGV[2])
for _, b in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[3], '+inf')) do
  local ids = redis.call('HGET', index_key(ARGV[1], b, shard), ARGV[2])
  if ids then
    local ms
    for id in string.gmatch(ids, '%S+') do
      if string.byte(id, 1) == 45 then id = ms .. id else ms = string.match(id, '^(%d+)') end
      local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
      if entry then events[#events + 1] = entry[2][2] end
    end
  end
end
return events
"""

# KEYS[1] the buckets; ARGV[1] the message index bucket prefix, ARGV[2] the field.
# Our message id, from the newest bucket that has one; nil when none has.
_FIND_MESSAGE = _SHARD_LUA + """
local buckets, shard = redis.call('ZRANGE', KEYS[1], 0, -1), index_shard(ARGV[2])
for i = #buckets, 1, -1 do
  local found = redis.call('HGET', index_key(ARGV[1], buckets[i], shard), ARGV[2])
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


def index_bucket_keys(server_id: int, bucket: str) -> list[str]:
    """Every key index bucket `bucket` (a member of `rediskeys.event_buckets_key`) of
    MTA server `server_id` may have: its INDEX_SHARDS hashes of each kind, or the one
    hash of each kind of a bucket written before they were sharded."""
    names = [f"{bucket}:{shard}" for shard in range(INDEX_SHARDS)] if bucket.startswith("n") else [bucket]
    return [key(server_id, name) for key in (rediskeys.event_index_bucket_key, rediskeys.message_index_bucket_key)
            for name in names]


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
