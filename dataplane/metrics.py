"""The data plane's Prometheus metrics: every one is defined here, once.

Worker processes count into prometheus-client's multiprocess mode: each writes its
values to memory-mapped files in the server's metrics directory
(`DataplaneConfig.metrics_dir`, `<data-dir>/metrics/server-N/`, named by
PROMETHEUS_MULTIPROC_DIR, which the supervisor sets before it starts the workers),
and the supervisor serves the merged figures (`serve`): counters and the
histogram summed over every worker that ever ran since the data plane started
(a restarted worker's counts are kept), gauges over the live workers only (a
dead worker's are dropped when it is reaped, `process_died`). The supervisor
empties the directory when it starts (`reset_directory`): counters restart from
zero with the process, as Prometheus expects.

Labels are pools (their internal name) and source IPs, both bounded by the routing
snapshot; never message ids, addresses or domains. The hot path pays one dict
lookup and one increment per count: a labelled child is made once per label values
and kept (`LabelledCounter`).

Counts are made where the stats batcher's are (the Bridge's acceptance, each
delivery outcome), so `poolmta_recipients_accepted_total` is StatsService's `sent`
and `poolmta_deliveries_total` its delivered / bounced / deferred (since the
data plane started); the gauges are sampled every `SAMPLE_INTERVAL` seconds
(`sample`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from control.contract.metrics_http import MetricsHttpServer

from . import spool

# The variable prometheus-client reads, at import, to count in multiprocess mode.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds between two samples of the gauges (spool, payload memory, snapshot, stats flush lag).
SAMPLE_INTERVAL = 1.0

POOL_IP = ("pool", "source_ip")

# The metrics are not in prometheus-client's global registry: tests and benches that
# run data-plane parts in their own process read them here, and a worker never
# serves them itself (the supervisor reads the files).
REGISTRY = CollectorRegistry(auto_describe=True)


class LabelledCounter:
    """A Counter with labels whose children are made once per label values and kept:
    `inc(*values, n)` costs a dict lookup more than the increment itself."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Counter] = {}

    def inc(self, *values: str, n: float = 1) -> None:
        """Add `n` to the series of these label values."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        child.inc(n)


class LabelledGauge:
    """A Gauge with labels whose children are made once per label values and kept."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Gauge) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Gauge] = {}

    def _child(self, values: tuple[str, ...]) -> Gauge:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child

    def inc(self, *values: str) -> None:
        """Add 1 to the series of these label values."""
        self._child(values).inc()

    def dec(self, *values: str) -> None:
        """Take 1 from the series of these label values."""
        self._child(values).dec()


# -- acceptance -------------------------------------------------------------------

messages_accepted = LabelledCounter(Counter(
    "poolmta_messages_accepted", "Messages the Bridge accepted into the spool (250 sent), by pool and the "
    "source IP rotation chose", POOL_IP, registry=REGISTRY))
recipients_accepted = LabelledCounter(Counter(
    "poolmta_recipients_accepted", "Distinct recipients of the accepted messages: StatsService's sent",
    POOL_IP, registry=REGISTRY))
auth_failures = Counter(
    "poolmta_auth_failures", "SMTP AUTH attempts and REST requests whose credentials name no Bridge of the snapshot",
    registry=REGISTRY)

# -- delivery -----------------------------------------------------------------------

deliveries = LabelledCounter(Counter(
    "poolmta_deliveries", "Recipient delivery outcomes (delivered, bounced, deferred) of senders' mail, by the "
    "pool recorded at acceptance and the source IP of the attempt", (*POOL_IP, "outcome"), registry=REGISTRY))
dsn_deliveries = LabelledCounter(Counter(
    "poolmta_dsn_deliveries", "Delivery outcomes of the DSNs sent to senders about their bounces (counted apart "
    "from their mail)", (*POOL_IP, "outcome"), registry=REGISTRY))
delivery_attempt_duration = Histogram(
    "poolmta_delivery_attempt_duration_seconds", "Time one delivery attempt (a job: the recipients of one "
    "message at one destination) took, connecting included", registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
outbound_connections = LabelledGauge(Gauge(
    "poolmta_outbound_connections", "Outbound SMTP connections open (or opening, or idle) from each source IP",
    ("source_ip",), registry=REGISTRY, multiprocess_mode="livesum"))

# -- feedback (the inbound listener) ----------------------------------------------------

inbound_reports = LabelledCounter(Counter(
    "poolmta_inbound_reports", "Reports the inbound listener took, by kind (dsn, arf, nonstandard, unknown)",
    ("kind",), registry=REGISTRY))
complaints = LabelledCounter(Counter(
    "poolmta_complaints", "Complaints (ARF reports) counted, by pool and source IP", POOL_IP, registry=REGISTRY))
report_bounces = LabelledCounter(Counter(
    "poolmta_report_bounces", "Recipients an asynchronous bounce moved from delivered to bounced, by pool and "
    "source IP", POOL_IP, registry=REGISTRY))

# -- sampled state (see `sample`) ---------------------------------------------------------

spool_messages = Gauge(
    "poolmta_spool_messages", "Messages in the spool that are not final yet", registry=REGISTRY,
    multiprocess_mode="livesum")
delivery_payload_bytes = Gauge(
    "poolmta_delivery_payload_bytes", "Bytes of message content the delivery queues keep in memory for mail "
    "waiting to be sent (each worker's at most --delivery-payload-memory)", registry=REGISTRY,
    multiprocess_mode="livesum")
spool_oldest_age = Gauge(
    "poolmta_spool_oldest_age_seconds", "Age of the oldest message in the spool (0 when it is empty)",
    registry=REGISTRY, multiprocess_mode="livemax")
snapshot_version = Gauge(
    "poolmta_snapshot_version", "Routing snapshot version every worker serves at least (0: none loaded)",
    registry=REGISTRY, multiprocess_mode="livemin")
snapshot_age = Gauge(
    "poolmta_snapshot_age_seconds", "Time since the oldest snapshot a worker serves was published",
    registry=REGISTRY, multiprocess_mode="livemax")
stats_flush_lag = Gauge(
    "poolmta_stats_flush_lag_seconds", "Time since the stats batcher last flushed to Redis while counts wait "
    "(0 when none wait; grows while Redis is unreachable)", registry=REGISTRY, multiprocess_mode="livemax")


def sample(*, now: float, queued: int, oldest_queued_at: float | None, payload_bytes: int, version: int,
           published_at: float | None, flush_lag: float) -> None:
    """Set the sampled gauges of this worker at unix time `now`: `queued` messages of
    the spool that are its to deliver, the oldest one's acceptance time (None: it has
    none), the bytes of content its delivery queue keeps in memory, the snapshot
    `version` it serves and when that was published, and the stats flush lag in seconds."""
    spool_messages.set(queued)
    delivery_payload_bytes.set(payload_bytes)
    spool_oldest_age.set(max(0.0, now - oldest_queued_at) if oldest_queued_at is not None else 0.0)
    snapshot_version.set(version)
    if published_at is not None:
        snapshot_age.set(max(0.0, now - published_at))
    stats_flush_lag.set(flush_lag)


def undelivered_share(root: Path, owner: int, owners: int) -> tuple[int, float | None]:
    """(how many records of the spool at `root` are worker `owner`'s of `owners`
    (`spool.owner_of`), when the oldest of them was accepted, unix seconds, or None):
    the spool gauges of a worker that delivers nothing (`--no-delivery`), so that they
    say what waits there, as a delivering worker's do. Lists the directory: call it
    off the event loop."""
    count, oldest_ms = 0, None
    for message_id in spool.queued_ids(root):  # oldest first
        try:
            mine = spool.owner_of(message_id, owners) == owner
            # The id starts with 12 hex digits of its acceptance time in ms (`spool.directory`).
            accepted_ms = int(message_id[:12], 16)
        except ValueError:  # not a name the spool writes; the spool's own checks deal with it
            continue
        if mine:
            count += 1
            if oldest_ms is None:
                oldest_ms = accepted_ms
    return count, (oldest_ms / 1000 if oldest_ms is not None else None)


# -- the supervisor's side -----------------------------------------------------------------


def reset_directory(directory: Path) -> None:
    """Empty (or make) the server's metrics directory, before any worker starts: the
    files of an earlier run would add its counts to this one's."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)


def process_died(pid: int, directory: Path) -> None:
    """Forget the gauges of a worker that exited (its counters keep counting in the sum)."""
    mark_process_dead(pid, str(directory))


def merged_registry(directory: Path) -> CollectorRegistry:
    """A registry that reads every worker's metrics files in `directory`, summed."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


def serve(host: str, port: int, directory: Path) -> MetricsHttpServer:
    """Serve the merged metrics of every worker (the files in `directory`) at
    `http://host:port/metrics`, in a thread of the supervisor. OSError when the
    address cannot be bound."""
    return MetricsHttpServer(host, port, merged_registry(directory))


def exposition(directory: Path) -> tuple[bytes, str]:
    """The merged metrics in Prometheus's text format, and its content type: what a
    worker's HTTP port answers at /metrics, the same figures as the supervisor's."""
    return generate_latest(merged_registry(directory)), CONTENT_TYPE_LATEST
