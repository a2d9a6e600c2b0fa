"""Every Redis key and channel name poolmta uses, in one place.

It stays one module past ~450 lines on purpose: one place for every key is what
lets a reader (and a Redis Cluster) see which keys share a hash tag.

Keys that are read or written together share a hash tag (`{...}`), so Lua
scripts and multi-key commands stay on one slot of a Redis Cluster:

* `{srv:N}` — everything about MTA server N's routing: its full snapshots, its
  change log of routing deltas, the `current` pointer, worker acks; and its
  queue-control command stream and results.
* `{stats:N}` — every counter hash of MTA server N (lifetime totals and day, hour
  and minute buckets of its pools, IPs and pools+IPs), plus the marks of its
  workers' stats journals (and one-off batch markers), so one Lua script applies
  a whole batch of a worker's counts exactly once (idempotent flush), while a
  Redis Cluster spreads servers over its nodes. The server's delivery event log and message index live here
  too (`event_stream_key` and beside it), written by the same scripts as the counts.
* `{msg:ID}` — one message's delivery events, as written before issue 14 (read
  until they expire; nothing writes them any more).
* `{supp:USER}` — one account's suppression list.
* `{inbound:N}` — what MTA server N's inbound listener kept of the reports it
  could not attribute, and its counts of them.
* `{auth:N}` — the failed SMTP AUTHs of MTA server N's clients, one key per
  client, counted by every worker of the server.
* `{conn:N}` — the connections open now at each worker of MTA server N (one hash
  per worker and listener), summed by one Lua script for the connection caps.

A message index entry written before issue 14 (`message_index_key`) stands alone:
one key, read on its own, so it needs no tag; entries are written per server now
(`message_index_bucket_key`).

Part of `control.contract`: the control plane and the data plane both import it.
"""

import hashlib
import time
from dataclasses import dataclass

PREFIX = "poolmta"


def _server_tag(server_id: int) -> str:
    return f"{PREFIX}:{{srv:{int(server_id)}}}"


def snapshot_key(server_id: int, version: int) -> str:
    """Key holding the msgpack snapshot of `version` for `server_id`, one key per version:
    the layout before routing deltas. Workers still load it when neither the change log
    nor `snapshot_full_key` reaches `current` (a snapshot written by hand, by a test)."""
    return f"{_server_tag(server_id)}:snapshot:{int(version)}"


def snapshot_current_key(server_id: int) -> str:
    """Key holding the newest published snapshot version of `server_id`, as an integer."""
    return f"{_server_tag(server_id)}:snapshot:current"


def snapshot_channel(server_id: int) -> str:
    """Pub/sub channel on which a new version number of `server_id` is announced."""
    return f"{_server_tag(server_id)}:snapshot:notices"


def snapshot_full_key(server_id: int) -> str:
    """Hash version -> SNAPSHOT_FULL_IN_DATA_KEY (the snapshot is in
    `snapshot_full_data_key`) or, as written before chunked writes, the msgpack snapshot
    itself: the newest full snapshots of `server_id` (at most SNAPSHOT_FULLS_KEPT), for
    bootstrap and for a worker behind the change log."""
    return f"{_server_tag(server_id)}:snapshot:full"


def snapshot_full_data_key(server_id: int, version: int) -> str:
    """String holding the msgpack full snapshot of `version` for `server_id`, when the
    `snapshot_full_key` hash holds SNAPSHOT_FULL_IN_DATA_KEY for that version (a full
    snapshot is written in chunks, so no single Redis command carries the whole server)."""
    return f"{snapshot_full_data_prefix(server_id)}{int(version)}"


def snapshot_full_data_prefix(server_id: int) -> str:
    """What every `snapshot_full_data_key` of `server_id` starts with, its version
    following (the publish script names the data keys of the versions it drops)."""
    return f"{_server_tag(server_id)}:snapshot:full:"


def snapshot_full_staging_key(server_id: int, version: int, attempt: str) -> str:
    """String a full snapshot of `version` is appended to, chunk by chunk, before it is
    renamed to its `snapshot_full_data_key`; `attempt` is unique per write, so an attempt
    cut short (a crash between chunks) never mixes with another. Nothing reads it, and it
    expires after SNAPSHOT_FULL_STAGING_TTL_SECONDS."""
    return f"{_server_tag(server_id)}:snapshot:staging:{int(version)}:{attempt}"


def full_snapshot_in_data_key(field_value: bytes | None) -> bool:
    """True when a `snapshot_full_key` hash value is the marker naming the version's data
    key, False when it is the snapshot itself (written by a release before chunked writes)."""
    return field_value == SNAPSHOT_FULL_IN_DATA_KEY


def snapshot_changes_key(server_id: int) -> str:
    """Stream of `server_id`'s routing deltas (`control.contract.routing_delta`), entry
    id `<version>-0`, field `d` the encoded delta, oldest first. It holds the deltas
    newer than the last full snapshot dropped (or than the oldest kept): a worker at
    version V reads the entries after V; one that finds a gap loads a full snapshot
    and reads on from there."""
    return f"{_server_tag(server_id)}:snapshot:changes"


# Full snapshots kept per server (the newest ones) ...
SNAPSHOT_FULLS_KEPT = 1
# ... and how often one is written: after this many deltas (what a starting worker
# replays at most), or once the deltas since the last full snapshot weigh
# 1 / SNAPSHOT_FULL_DELTA_SHARE of it, whichever comes first. Redis then holds at
# most SNAPSHOT_FULLS_KEPT full snapshots plus the deltas since the full snapshot
# before them (two periods: half a full snapshot's bytes, and the stream's own
# overhead): with one kept, under twice a full snapshot (at 1k pools, a half share
# measured 2.31x after 1,402 changes). A full snapshot is O(server) to write (at
# 50k pools 56 MB, appended and fsynced to the AOF while Redis waits), so it is
# written rarely: a one-pool delta is about 1 KB.
SNAPSHOT_FULL_EVERY = 1024
SNAPSHOT_FULL_DELTA_SHARE = 4
# The value of a version's field in `snapshot_full_key` when its snapshot lives in
# `snapshot_full_data_key` (any other value is the snapshot itself: the older form).
SNAPSHOT_FULL_IN_DATA_KEY = b"@data-key"
# The largest piece of a full snapshot one Redis command writes: with `appendfsync
# always` Redis answers nobody until a command's effects are fsynced, so a 56 MB
# snapshot in one command stalled every client for half a second.
SNAPSHOT_FULL_CHUNK_BYTES = 1 << 20
# A full snapshot of at most this many chunks is written in one command (a few MB
# fsynced at once, tens of ms): a string grown by APPEND keeps up to 1 MB of spare
# room in Redis (measured 2.24 MB held for a 1.2 MB snapshot in two chunks).
SNAPSHOT_FULL_ONE_COMMAND_CHUNKS = 4
# A staging key left by a write cut short expires after this (a write takes seconds).
SNAPSHOT_FULL_STAGING_TTL_SECONDS = 3600
# A reader that finds a full snapshot's data key gone (dropped by a compaction
# between its read of the hash and of the key) reads the hash again, up to this
# many times: each miss means a newer full snapshot was put in place meanwhile.
SNAPSHOT_FULL_READ_ATTEMPTS = 3


def worker_acks_key(server_id: int) -> str:
    """Hash worker_id -> "version:heartbeat_unix_ms" of the data-plane workers of a server.

    A worker is live while its heartbeat is newer than its expiry (see
    WORKER_HEARTBEAT_TTL_MS); the control plane reads this to finish operations.
    """
    return f"{_server_tag(server_id)}:workers"


# A worker refreshes its ack at least this often; older entries are dead workers.
WORKER_HEARTBEAT_TTL_MS = 5_000

# How long a full snapshot under its own version key (`snapshot_key`, the layout before
# routing deltas) is kept after an upgrade: the first full publication gives it this expiry.
SNAPSHOT_RETENTION_SECONDS = 7 * 24 * 3600


# -- counters: `{stats:N}` ---------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """A size of counter bucket: how its name reads, how long it is and how long it is kept.

    A bucket holds the counts of [start, start + seconds), start a multiple of
    `seconds` in UTC, and lives until `retention_seconds` after its start.
    """

    name: str
    letter: str
    seconds: int
    retention_seconds: int
    label_format: str  # strftime of the bucket's start (UTC)

    def start(self, at: float) -> int:
        """The start (unix seconds) of the bucket holding time `at`."""
        return int(at // self.seconds) * self.seconds

    def label(self, at: float) -> str:
        """The bucket of `at` as its key names it, e.g. `202611272206` for a minute."""
        return time.strftime(self.label_format, time.gmtime(self.start(at)))

    def expires_at(self, at: float) -> int:
        """When the bucket holding `at` goes (unix seconds): its start plus the retention."""
        return self.start(at) + self.retention_seconds


# Trends: per minute for 48 h, per hour for 30 days (issue 9); days for the lifetime
# and rolling 30-day windows of GetPoolStats / GetIpStats (35 days: the window plus slack).
MINUTE = Resolution("minute", "m", 60, 48 * 3600, "%Y%m%d%H%M")
HOUR = Resolution("hour", "h", 3600, 30 * 86400, "%Y%m%d%H")
DAY = Resolution("day", "d", 86400, 35 * 86400, "%Y%m%d")
RESOLUTIONS = (DAY, HOUR, MINUTE)

# Daily buckets are kept this long (a rolling 30-day window plus slack).
STATS_DAY_RETENTION_SECONDS = DAY.retention_seconds

# `suppressed` counts RCPTs refused because the address is on the account's
# suppression list; it is counted per pool only (no source IP is picked for them).
# `dkim_unsigned` counts messages accepted without a DKIM signature (no key for the
# From domain nor a pool signing domain); per pool only, one per message.
STATS_FIELDS = ("sent", "delivered", "bounced", "deferred", "complaints", "suppressed", "dkim_unsigned")


def _stats_tag(server_id: int) -> str:
    return f"{PREFIX}:{{stats:{int(server_id)}}}"


# DSNs poolmta sends to senders (RFC 3464, from the null sender) are counted apart, in
# the same hashes, so they never inflate the Sent / Delivered / Bounced of the
# senders' own mail: dsn_sent when one is spooled, then its delivery outcome.
DSN_STATS_FIELDS = ("dsn_sent", "dsn_delivered", "dsn_bounced", "dsn_deferred")


def counter_key(server_id: int, smtp_id: int | None = None, address: str | None = None,
                resolution: Resolution | None = None, at: float | None = None) -> str:
    """The name of one counter hash (fields: STATS_FIELDS); every counter key is made here.

    Scope: a pool (`smtp_id`), an IP (`address`), or an IP within a pool (both: an IP
    that moved keeps its old counts under its old pool). Bucket: the lifetime totals
    when `resolution` is None, else the `resolution` bucket holding time `at`.
    Every key of MTA server `server_id` carries its tag `{stats:N}`: a pool and its
    IPs belong to one server, so one worker's batch stays on one Redis Cluster slot.

        poolmta:{stats:1}:pool:7                     pool 7, lifetime
        poolmta:{stats:1}:ip:192.0.2.1:h:2026112722  IP, the hour 22:00 UTC
        poolmta:{stats:1}:pool:7:ip:192.0.2.1:m:202611272206
    """
    if smtp_id is None and address is None:
        raise ValueError("a counter key needs a pool, an IP or both")
    scope = ":".join(
        ([f"pool:{int(smtp_id)}"] if smtp_id is not None else []) + ([f"ip:{address}"] if address is not None else [])
    )
    if resolution is None:
        return f"{_stats_tag(server_id)}:{scope}"
    if at is None:
        raise ValueError(f"a {resolution.name} bucket needs the time it holds")
    return f"{_stats_tag(server_id)}:{scope}:{resolution.letter}:{resolution.label(at)}"


def pool_stats_key(server_id: int, smtp_id: int, resolution: Resolution | None = None,
                   at: float | None = None) -> str:
    """A pool's counter hash: lifetime, or the `resolution` bucket holding `at`."""
    return counter_key(server_id, smtp_id=smtp_id, resolution=resolution, at=at)


def ip_stats_key(server_id: int, address: str, resolution: Resolution | None = None,
                 at: float | None = None) -> str:
    """One source IP's counter hash (every pool it has been in, complaints included)."""
    return counter_key(server_id, address=address, resolution=resolution, at=at)


def pool_ip_stats_key(server_id: int, smtp_id: int, address: str, resolution: Resolution | None = None,
                      at: float | None = None) -> str:
    """One IP's counter hash *within* one pool (an IP that moved keeps old counts
    under its old pool)."""
    return counter_key(server_id, smtp_id=smtp_id, address=address, resolution=resolution, at=at)


@dataclass(frozen=True)
class CountTarget:
    """One counter hash a count goes into, and when it expires (None: never)."""

    key: str
    expires_at: int | None


def count_targets(server_id: int, smtp_id: int, address: str, at: float,
                  now: float | None = None, finest: Resolution = MINUTE) -> tuple[CountTarget, ...]:
    """Every counter hash that a count for (server, pool, IP) at time `at` touches.

    This is THE definition of where a count lives; whoever changes counters uses it
    (the stats batcher, and any later correction such as an asynchronous bounce
    moving a recipient from delivered to bounced on the buckets of its delivery):

    * the pool, the IP and the pool+IP, in that order; for each the lifetime
      totals, then the day, hour and minute buckets holding `at` (12 targets);
    * all of them under `{stats:server_id}`: one Lua script can apply them together
      (the same Redis Cluster slot), which is how a count stays exactly-once;
    * a writer adds the same amount to the same field of every target, then sets
      each bucket's expiry with EXPIREAT `expires_at` (lifetime: None, no expiry).
      The expiry depends only on the bucket, so every writer sets the same one;
    * a bucket already gone by `now` (default: `at`) is left out, so a correction
      to an old count never re-creates an expired bucket (its totals still move);
    * buckets finer than `finest` are left out: a count known only to the hour
      (`finest=HOUR`) or the day (`DAY`) moves no minute bucket;
    * without an `address` (a complaint that names only its pool, a RCPT refused
      for the suppression list before an IP was picked) the pool's targets alone.
    """
    now = at if now is None else now
    targets = []
    scopes = ({"smtp_id": smtp_id}, {"address": address}, {"smtp_id": smtp_id, "address": address})
    for scope in scopes if address else scopes[:1]:
        targets.append(CountTarget(counter_key(server_id, **scope), None))
        for resolution in RESOLUTIONS:
            expires_at = resolution.expires_at(at)
            if expires_at > now and resolution.seconds >= finest.seconds:
                targets.append(CountTarget(counter_key(server_id, **scope, resolution=resolution, at=at), expires_at))
    return tuple(targets)


def stats_batch_marker_key(server_id: int, batch_id: str) -> str:
    """Marks a counter batch of MTA server `server_id` as applied, so a retried flush
    is not counted twice; in the server's `{stats:N}` slot, beside its counters."""
    return f"{_stats_tag(server_id)}:batch:{batch_id}"


# How long a one-off batch marker (`apply_counts_once` outside the journal) is kept:
# far longer than any retry of that batch.
STATS_BATCH_MARKER_TTL_SECONDS = 7 * 24 * 3600


def stats_journal_mark_key(server_id: int, token: str) -> str:
    """The highest segment number of stats journal `token` (one worker's run, see
    `dataplane.stats_journal`) applied to the counters of MTA server `server_id`: one
    key per worker run, whatever the traffic, where a marker per batch made a key per
    flush. A journal's segments are applied in order, so a segment numbered at most
    this was applied already and counts nothing when replayed."""
    return f"{_stats_tag(server_id)}:journal:{token}"


# How long a journal's mark is kept after its last segment was applied (refreshed at
# every apply). A segment waits on disk only while Redis is unreachable or while no
# worker of its server runs, and is deleted right after Redis acknowledged it; a
# segment replayed after its mark expired would count again. 45 days: past the
# 35 days of the day buckets, so by then only lifetime totals could move.
STATS_JOURNAL_MARK_TTL_SECONDS = 45 * 24 * 3600

# Before issue 9 every counter and batch marker shared one `{stats}` tag:
# `poolmta:{stats}:` + the same scope and bucket as counter_key (days only). The
# control plane moves such keys under their server's tag once, at start.
LEGACY_STATS_PREFIX = f"{PREFIX}:{{stats}}:"


def message_events_key(message_id: str) -> str:
    """List of one message's delivery events (JSON, oldest first) as written before
    issue 14: still read (`control.contract.event_log`) until it expires, never written."""
    return f"{PREFIX}:{{msg:{message_id}}}:events"


# -- the delivery event log: `{stats:N}` (see control.contract.event_log) ----------


def event_stream_key(server_id: int) -> str:
    """Stream of every delivery event of MTA server N (field "e": the event as
    `DeliveryEvent.encode` packs it; JSON in older entries), capped by length and age
    (`event_log.EventRetention`)."""
    return f"{_stats_tag(server_id)}:events"


def event_buckets_key(server_id: int) -> str:
    """Sorted set of the index buckets of MTA server N's event log that may still hold
    entries: member the bucket's name ("n<ms opened>"; older buckets: their start in
    unix seconds), score its latest write (older buckets: their end), unix seconds."""
    return f"{_stats_tag(server_id)}:events:buckets"


def event_index_bucket_key(server_id: int, bucket: int | str) -> str:
    """Hash our message id -> the ids (space-separated) of its events in the server's
    event stream, for the events written in bucket `bucket`; a bucket named "n..." has
    `event_log.INDEX_SHARDS` of them, `bucket` being "<name>:<shard>"."""
    return f"{_stats_tag(server_id)}:events:by-message:{bucket}"


def message_index_bucket_key(server_id: int, bucket: int | str) -> str:
    """Hash `message_index_field(Message-ID)` -> our message id, for the messages the
    server's Bridge accepted (and indexed) in bucket `bucket` (sharded like
    `event_index_bucket_key`)."""
    return f"{_stats_tag(server_id)}:msgid:{bucket}"


def suppression_key(user_id: int) -> str:
    """Hash of one account's suppressed recipients: `suppression.normalize_address(address)`
    -> `suppression.SuppressionEntry(...).encode()`, JSON {"reason", "at_ms", "message_id",
    "source", "detail"}. Bridges of the account refuse RCPT to any address in it;
    permanent bounces and complaints add to it (HSETNX: the first entry wins)."""
    return f"{PREFIX}:{{supp:{int(user_id)}}}:addresses"


def suppression_marker_key(user_id: int, subject: str) -> str:
    """Marks one report's suppression of a recipient as applied (`subject` as in
    `report_marker_key`), so that a report arriving again suppresses nothing an
    operator has removed since. In the account's `{supp:USER}` slot, beside its list:
    a Lua script sets the marker and the entry together, on one Redis Cluster node."""
    return f"{PREFIX}:{{supp:{int(user_id)}}}:report:{subject}"


def message_index_key(header_message_id: str) -> str:
    """(Before issue 14; read until it expires, never written.) String holding our message id for a Message-ID header value the Bridge accepted
    (its content between the angle brackets), so a report that returns only the
    original headers still finds its message. The value is hashed: it is whatever a
    sender wrote, and a key name stays short and plain."""
    return f"{PREFIX}:msgid:{message_index_field(header_message_id)}"


def message_index_field(header_message_id: str) -> str:
    """The name a Message-ID header value is indexed under (`message_index_bucket_key`
    and the older `message_index_key`): a digest, short and plain."""
    return hashlib.sha256(header_message_id.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def report_marker_key(server_id: int, subject: str) -> str:
    """Marks one recipient's asynchronous bounce or complaint as applied, so the same
    report arriving again (or another report about the same recipient) counts nothing.
    `subject` says what was counted, e.g. "bounce:<message id>:<recipient index>".
    Beside the counters it guards (`{stats:N}`), like the batch markers."""
    return f"{_stats_tag(server_id)}:report:{subject}"


# How long a report marker is kept: past the VERP address's maximum age (30 days), after
# which no report is attributed to that message any more, with room to spare.
REPORT_MARKER_TTL_SECONDS = 45 * 24 * 3600


def _inbound_tag(server_id: int) -> str:
    return f"{PREFIX}:{{inbound:{int(server_id)}}}"


def unattributed_reports_key(server_id: int) -> str:
    """List of the reports MTA server N's inbound listener accepted but could not
    attribute (or that counted nothing), newest first, JSON (see
    `control.contract.unattributed`), trimmed to the newest UNATTRIBUTED_KEPT."""
    return f"{_inbound_tag(server_id)}:unattributed"


def unattributed_marker_key(server_id: int, digest: str) -> str:
    """Marks a report (by the SHA-256 of its bytes) as kept, so a retransmission is
    neither kept nor counted twice."""
    return f"{_inbound_tag(server_id)}:seen:{digest}"


def inbound_counts_key(server_id: int) -> str:
    """Hash of MTA server N's inbound counters: INBOUND_FIELDS."""
    return f"{_inbound_tag(server_id)}:counts"


# unattributed: reports accepted that counted nothing (kept in the list above);
# too_big: reports refused with 552 for being over the inbound size cap.
INBOUND_FIELDS = ("unattributed", "too_big")

# Reports kept in the unattributed list (the newest ones).
UNATTRIBUTED_KEPT = 1000

# How long a kept report's marker lasts: longer than a sending MTA retries one message
# (RFC 5321 4.5.4.1 suggests 4-5 days).
UNATTRIBUTED_MARKER_TTL_SECONDS = 7 * 24 * 3600


# -- AUTH throttling: `{auth:N}` ----------------------------------------------------


def auth_failures_key(server_id: int, client: str) -> str:
    """Sorted set of one client's failed SMTP AUTHs at MTA server N, read and written by
    every worker of the server (so a limit means the same whatever the number of workers).

    `client` is what the throttle counts per: an IPv4 address, or an IPv6 /64 such as
    `2001:db8:1:2::/64` (`dataplane.bridge_auth.client_key`). One member per failure,
    scored by its time (unix ms); the set keeps at most the throttle's limit of members
    and expires one window after its last failure, so Redis holds only the clients that
    failed within the last window.
    """
    return f"{PREFIX}:{{auth:{int(server_id)}}}:failures:{client}"


# -- connection caps: `{conn:N}` ---------------------------------------------------


def connection_counts_key(server_id: int, listener: str, worker_index: int) -> str:
    """Hash of the connections open now at one worker's `listener` ("bridge" or
    "inbound") of MTA server N: client address -> count, CONNECTIONS_TOTAL_FIELD ->
    all of them. The worker refreshes its expiry (CONNECTION_COUNTS_TTL_MS); every
    worker's hash of a server shares the tag `{conn:N}`, so one Lua script sums them."""
    return f"{PREFIX}:{{conn:{int(server_id)}}}:{listener}:w{int(worker_index)}"


CONNECTIONS_TOTAL_FIELD = "*"
# A worker's connection counts vanish this long after its last refresh (a SIGKILLed
# worker's connections are gone with it).
CONNECTION_COUNTS_TTL_MS = 15_000


# -- queue control: `{srv:N}` (see control.contract.queue_commands) ------------------


def queue_commands_key(server_id: int) -> str:
    """Stream of queue commands (field "c": an encoded QueueCommand) for every worker of a server."""
    return f"{_server_tag(server_id)}:queue:commands"


def queue_results_key(server_id: int, command_id: str) -> str:
    """Hash worker_id -> encoded QueueResult: the workers' answers to one queue command."""
    return f"{_server_tag(server_id)}:queue:results:{command_id}"
