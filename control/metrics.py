"""The control plane's Prometheus metrics: every one is defined here, once.

Each running control plane has its own registry (`ControlMetrics`), served on
`--metrics-listen` (`control.contract.metrics_http`): RPCs by service, method and
status code (a counter, and a latency histogram), through the one wrapper every
servicer method goes through (`control.rpc.rpc`); snapshot publications and the
version published, per MTA server; the gRPC health it reports. The process
collectors add its CPU, memory and open files.

Labels are bounded: services and methods of the proto, gRPC status codes, MTA
server ids.
"""

from __future__ import annotations

import asyncio
import functools
import time
from types import TracebackType

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

__all__ = ["ControlMetrics", "RpcTimer", "service_of"]

# gRPC calls answer in milliseconds; a stream (WatchPoolStats) lasts as long as its client.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@functools.cache
def service_of(servicer_class: type) -> str:
    """The gRPC service (`PoolService`) a servicer class implements: the generated base
    class it derives from, without its `Servicer` suffix."""
    for base in servicer_class.__mro__:
        if base.__module__.endswith("_pb2_grpc"):
            return base.__name__.removesuffix("Servicer")
    return servicer_class.__name__


class RpcTimer:
    """One RPC being served (`ControlMetrics.rpc`): counted and timed when the block
    ends. `code` is OK unless set; a block left by cancellation counts CANCELLED, by
    any other exception with `code` still OK, UNKNOWN (what gRPC answers then)."""

    __slots__ = ("_metrics", "_service", "_method", "_started", "code")

    def __init__(self, metrics: ControlMetrics, service: str, method: str) -> None:
        self._metrics = metrics
        self._service = service
        self._method = method
        self._started = 0.0
        self.code = grpc.StatusCode.OK

    def __enter__(self) -> RpcTimer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None and self.code == grpc.StatusCode.OK:
            # A stream whose client went away is closed with GeneratorExit.
            gone = issubclass(kind, (asyncio.CancelledError, GeneratorExit))
            self.code = grpc.StatusCode.CANCELLED if gone else grpc.StatusCode.UNKNOWN
        metrics = self._metrics
        metrics.rpcs.labels(self._service, self._method, self.code.name).inc()
        metrics.rpc_duration.labels(self._service, self._method).observe(time.perf_counter() - self._started)


class ControlMetrics:
    """The metrics of one control plane, in their own `registry`."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        self.rpcs = Counter(
            "poolmta_control_rpcs", "RPCs answered, by service, method and gRPC status code",
            ("service", "method", "code"), registry=registry)
        self.rpc_duration = Histogram(
            "poolmta_control_rpc_duration_seconds", "Time from an RPC's arrival to its answer (a stream: its "
            "whole life), by service and method", ("service", "method"), buckets=RPC_BUCKETS, registry=registry)
        self.snapshot_publishes = Counter(
            "poolmta_control_snapshot_publishes", "Routing snapshots published to Redis, by MTA server",
            ("server_id",), registry=registry)
        self.snapshot_version = Gauge(
            "poolmta_control_snapshot_version", "The routing version Redis's current pointer holds after the "
            "last publication, by MTA server", ("server_id",), registry=registry)
        self.health_serving = Gauge(
            "poolmta_control_health_serving", "1 while gRPC health says SERVING (Redis and SQLite answer), "
            "0 while NOT_SERVING", registry=registry)

    def rpc(self, servicer_class: type, method: str) -> RpcTimer:
        """A block that counts and times one call of `method` of the servicer class."""
        return RpcTimer(self, service_of(servicer_class), method)

    def published(self, server_id: int, version: int) -> None:
        """A snapshot of `server_id` was published; Redis's current pointer is at `version`."""
        self.snapshot_publishes.labels(str(server_id)).inc()
        self.snapshot_version.labels(str(server_id)).set(version)

    def health(self, serving: bool) -> None:
        """The gRPC health just changed to SERVING (True) or NOT_SERVING."""
        self.health_serving.set(1 if serving else 0)
