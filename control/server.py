"""The control plane process: gRPC server, snapshot publisher, reconciler and health.

Health (grpc.health.v1) is SERVING, for "" and every service, only while Redis
and SQLite answer (`control.health_watch`), and NOT_SERVING from stop() on.
With `metrics_listen` set, its Prometheus metrics (`control.metrics`) are served
there; `metrics_address` says where.

    cp = ControlPlane(config)
    await cp.start()      # serving; cp.grpc_address says where
    await cp.stop()       # health NOT_SERVING, drain, stop
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

from . import grpc_tls, reflection
from .auth import Authenticator, load_or_create_admin_token
from .config import ControlConfig
from .contract import dkim_seal, file_modes
from .contract.metrics_http import MetricsHttpServer
from .contract.redis_client import redis_client
from .health_watch import HealthWatch
from .metrics import ControlMetrics
from .publisher import SnapshotPublisher
from .reconciler import ChangeFeed, Reconciler
from .registry import Registry
from .servicers import Services, add_servicers
from .stats_migration import migrate_legacy_counters, migrate_when_redis_answers
from .store import Store

log = logging.getLogger(__name__)


class ControlPlane:
    """One running control plane. Not reusable after stop()."""

    def __init__(self, config: ControlConfig):
        self.config = config
        self.grpc_address = ""
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._tasks: list[asyncio.Task] = []
        self._store: Store | None = None
        self._publisher: SnapshotPublisher | None = None
        self._redis: aioredis.Redis | None = None
        self._service_names: list[str] = []
        self.metrics = ControlMetrics()
        self.metrics_address = ""
        self._metrics_server: MetricsHttpServer | None = None

    @property
    def admin_token_path(self):
        return self.config.admin_token_path

    async def start(self) -> None:
        """Open the store, bind the gRPC port and start serving and publishing."""
        cfg = self.config
        file_modes.private_dir(cfg.data_dir)
        self._store = Store.open(cfg.db_path)
        registry = Registry(self._store, min_trusted_prefix_v4=cfg.min_trusted_prefix_v4,
                            min_trusted_prefix_v6=cfg.min_trusted_prefix_v6,
                            dkim_master_key=dkim_seal.load_or_create_master_key(cfg.data_dir))
        admin_token = load_or_create_admin_token(cfg.admin_token_path, cfg.admin_token)
        self._redis = redis_client(cfg.redis_url, socket_timeout=5, socket_connect_timeout=5)
        publisher = self._publisher = SnapshotPublisher(self._store, self._redis, self.metrics)
        feed = ChangeFeed()
        services = Services(registry, Authenticator(registry, admin_token), publisher, self._redis, feed,
                            self.metrics)

        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._service_names = add_servicers(server, services)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable(server, [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
        # Counters under the old single `{stats}` tag move under their server's tag
        # before StatsService answers; if Redis is down, as soon as it answers.
        try:
            await migrate_legacy_counters(self._redis, self._store)
        except (RedisError, OSError) as exc:
            log.error("Redis unreachable at start (%s); old counters will be moved when it answers", exc)
            self._tasks.append(asyncio.create_task(migrate_when_redis_answers(self._redis, self._store),
                                                   name="stats-migration"))
        if cfg.metrics_listen is not None:
            host, _, port = cfg.metrics_listen.rpartition(":")
            try:
                self._metrics_server = MetricsHttpServer(host.strip("[]"), int(port), self.metrics.registry)
            except OSError as exc:
                raise RuntimeError(f"cannot serve metrics on {cfg.metrics_listen}: {exc.strerror or exc}") from None
            self.metrics_address = self._metrics_server.listen
        bound = grpc_tls.bind(server, cfg.grpc_listen, cfg.grpc_tls, insecure=cfg.grpc_insecure)
        self.grpc_address = f"{cfg.grpc_listen.rpartition(':')[0]}:{bound}"
        await server.start()
        self._server = server

        try:
            await publisher.republish()
        except (RedisError, OSError) as exc:
            log.error("Redis unreachable at start (%s); snapshots will be published when it answers", exc)
        self._tasks += [
            asyncio.create_task(publisher.run(cfg.publish_check_interval), name="publisher"),
            asyncio.create_task(
                Reconciler(registry, publisher, self._redis, feed).run(cfg.reconcile_interval), name="reconciler"
            ),
        ]
        # SERVING only while Redis and SQLite answer, from the first check on.
        watch = HealthWatch(self._health, self._service_names, cfg.redis_url, self._store,
                            on_recovered=publisher.wake, metrics=self.metrics)
        await watch.check()
        self._tasks.append(asyncio.create_task(watch.run(cfg.health_check_interval), name="health"))
        log.info("control plane serving gRPC on %s", self.grpc_address)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish within the grace period, stop."""
        grace = self.config.grace_seconds if grace is None else grace
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=max(grace, 1.0))
            for task in pending:
                log.error("background task %s did not stop within %.1fs", task.get_name(), max(grace, 1.0))
        self._tasks = []
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
