"""Every Redis key and channel name poolmta uses, in one place.

Keys that are read or written together share a hash tag (`{...}`), so Lua
scripts and multi-key commands stay on one slot of a Redis Cluster:

* `{srv:N}` — everything about MTA server N's routing: snapshot versions, the
  `current` pointer, worker acks.
* `{stats}` — every counter hash, plus the applied-batch markers, so one Lua
  script can apply a whole batch of counts exactly once (idempotent flush). Flushes
  are batched (at most a few per second per worker), so one slot carries them easily.
* `{msg:ID}` — one message's delivery events.
* `{supp:USER}` — one account's suppression list.

Part of `control.contract`: the control plane and the data plane both import it.
"""

PREFIX = "poolmta"


def _server_tag(server_id: int) -> str:
    return f"{PREFIX}:{{srv:{int(server_id)}}}"


def snapshot_key(server_id: int, version: int) -> str:
    """Immutable key holding the msgpack snapshot of `version` for `server_id`."""
    return f"{_server_tag(server_id)}:snapshot:{int(version)}"


def snapshot_current_key(server_id: int) -> str:
    """Key holding the newest published snapshot version of `server_id`, as an integer."""
    return f"{_server_tag(server_id)}:snapshot:current"


def snapshot_channel(server_id: int) -> str:
    """Pub/sub channel on which a new version number of `server_id` is announced."""
    return f"{_server_tag(server_id)}:snapshot:notices"


def worker_acks_key(server_id: int) -> str:
    """Hash worker_id -> "version:heartbeat_unix_ms" of the data-plane workers of a server.

    A worker is live while its heartbeat is newer than its expiry (see
    WORKER_HEARTBEAT_TTL_MS); the control plane reads this to finish operations.
    """
    return f"{_server_tag(server_id)}:workers"


# A worker refreshes its ack at least this often; older entries are dead workers.
WORKER_HEARTBEAT_TTL_MS = 5_000

# How long an immutable snapshot version is kept after a newer one replaced it.
SNAPSHOT_RETENTION_SECONDS = 7 * 24 * 3600


def pool_stats_key(smtp_id: int, day: str | None = None) -> str:
    """Hash of counters (sent, delivered, bounced, deferred, complaints) for a pool.

    `day` (YYYYMMDD, UTC) selects a daily bucket; None the lifetime totals.
    """
    suffix = f":d:{day}" if day else ""
    return f"{PREFIX}:{{stats}}:pool:{int(smtp_id)}{suffix}"


def ip_stats_key(address: str, day: str | None = None) -> str:
    """Hash of counters for one source IP; `day` as for pool_stats_key."""
    suffix = f":d:{day}" if day else ""
    return f"{PREFIX}:{{stats}}:ip:{address}{suffix}"


def pool_ip_stats_key(smtp_id: int, address: str, day: str | None = None) -> str:
    """Hash of counters for one IP *within* one pool (an IP that moved keeps old counts
    under its old pool); `day` as for pool_stats_key."""
    suffix = f":d:{day}" if day else ""
    return f"{PREFIX}:{{stats}}:pool:{int(smtp_id)}:ip:{address}{suffix}"


STATS_FIELDS = ("sent", "delivered", "bounced", "deferred", "complaints")

# DSNs poolmta sends to senders (RFC 3464, from the null sender) are counted apart, in
# the same hashes, so they never inflate the Sent / Delivered / Bounced of the
# senders' own mail: dsn_sent when one is spooled, then its delivery outcome.
DSN_STATS_FIELDS = ("dsn_sent", "dsn_delivered", "dsn_bounced", "dsn_deferred")

# Daily buckets are kept this long (a rolling 30-day window plus slack).
STATS_DAY_RETENTION_SECONDS = 35 * 24 * 3600


def stats_batch_marker_key(batch_id: str) -> str:
    """Marks a counter batch as applied, so a retried flush is not counted twice."""
    return f"{PREFIX}:{{stats}}:batch:{batch_id}"


# How long an applied-batch marker is kept: far longer than any retry of that batch.
STATS_BATCH_MARKER_TTL_SECONDS = 7 * 24 * 3600


def message_events_key(message_id: str) -> str:
    """List of one message's delivery events (JSON, oldest first), for `message status`."""
    return f"{PREFIX}:{{msg:{message_id}}}:events"


def suppression_key(user_id: int) -> str:
    """Hash of one account's suppressed recipients: lower-cased address -> JSON
    {"reason", "at_ms", "message_id", "source"}. Bridges of the account refuse RCPT
    to any address in it; permanent bounces and complaints add to it."""
    return f"{PREFIX}:{{supp:{int(user_id)}}}:addresses"
