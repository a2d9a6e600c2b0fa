"""One data-plane worker process: an asyncio loop serving the SMTP Bridge and the
inbound listener, each on its own SO_REUSEPORT socket (the kernel spreads
connections over the workers), with its snapshot loader, spool writer, delivery
engine and stats batcher.

SIGTERM or SIGINT stops it gracefully: it stops accepting, lets messages and
reports whose DATA is in progress finish (up to `shutdown_grace`), answers 421 to
the idle sessions, lets outbound transactions under way finish (up to `shutdown_grace`),
flushes stats and events (what Redis cannot take stays in the stats journal
for the next start), and removes its ack. Its stats journal, and any a dead
worker left, is replayed by the stats batcher from its start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time

from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from _fastpath import IMPLEMENTATION
from control.contract.redis_client import redis_client
from control.contract.runtime import die_with_parent, pause

from . import event_loop, logs, metrics
from .bridge_auth import SharedAuthThrottle
from .config import DataplaneConfig, format_listen
from .connection_caps import ConnectionCaps
from .delivery import DeliveryEngine
from .delivery.queue_control import QueueControl
from .dkim_keys import DkimKeyCache
from .inbound import Accounting, Attributor, InboundHandler, InboundSMTP, ReportIntake
from .rest import Health, RestBridge, build_app
from .return_path import ReturnPaths, open_codec
from .smtp_bridge import BridgeHandler, BridgeSMTP
from .smtp_listener import REPLY_SHUTTING_DOWN
from .snapshot_loader import SnapshotLoader
from .spool import Spool
from .stats_batcher import StatsBatcher
from .suppression import SuppressionLookup
from .tls import server_context

log = logging.getLogger("poolmta.dataplane.worker")

LISTEN_BACKLOG = 1024


def listening_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (and listening, by default)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# A stop that has not finished this long after the grace period is a bug; the worker
# exits anyway rather than linger (every 250-acknowledged message is in the spool).
HARD_STOP_AFTER_GRACE = 10.0


def _arm_hard_stop(index: int, seconds: float) -> None:
    def hard_exit() -> None:
        os.write(2, f"worker {index}: shutdown did not finish within {seconds:.0f}s; exiting\n".encode())
        os._exit(70)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True
    timer.start()


def worker_main(config: DataplaneConfig, index: int, worker_id: str, ready, log_level: str,
                log_format: str = "text") -> None:
    """Process entry point (multiprocessing target): serve until signalled."""
    stop_with_supervisor = die_with_parent(os.getppid())
    if stop_with_supervisor is not None:  # SIGTERM when the supervisor dies, even by SIGKILL
        stop_with_supervisor()
    logs.configure(log_level, f"w{index}", log_format)
    try:
        event_loop.run(Worker(config, index, worker_id).run(ready), config.event_loop)
    except KeyboardInterrupt:
        pass


async def _sample_metrics(loader: SnapshotLoader, stats: StatsBatcher, delivery: DeliveryEngine | None,
                          spool: Spool) -> None:
    """Set this worker's sampled gauges (`metrics.sample`) every `metrics.SAMPLE_INTERVAL` seconds;
    without delivery, the spool gauges count what waits in the spool for this worker."""
    while True:
        routing = loader.current
        published_ms = routing.snapshot.published_at_ms if routing is not None else 0
        try:
            payload_bytes = 0
            if delivery is not None:
                queued, oldest = delivery.queued, delivery.oldest_queued_at()
                payload_bytes = delivery.queue.payload_bytes
            else:
                queued, oldest = await asyncio.to_thread(metrics.undelivered_share, spool.root, spool.owner,
                                                         spool.owners)
            metrics.sample(
                now=time.time(), queued=queued, oldest_queued_at=oldest, payload_bytes=payload_bytes,
                version=loader.version, published_at=published_ms / 1000 if published_ms else None,
                flush_lag=stats.flush_lag(),
            )
        except Exception:
            log.exception("worker: sampling the metrics failed")
        await pause(metrics.SAMPLE_INTERVAL)


class Worker:
    def __init__(self, config: DataplaneConfig, index: int, worker_id: str) -> None:
        self.config = config
        self.index = index
        self.worker_id = worker_id

    def _hostname(self, loader: SnapshotLoader) -> str:
        if self.config.hostname:
            return self.config.hostname
        routing = loader.current
        if routing is not None and routing.snapshot.hostname:
            return routing.snapshot.hostname
        return self._fallback_hostname

    async def run(self, ready) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def request_stop() -> None:
            if not stop.is_set():
                stop.set()
                _arm_hard_stop(self.index, config.shutdown_grace + HARD_STOP_AFTER_GRACE)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        self._fallback_hostname = socket.gethostname()
        log.info("worker %d starting: server %d, fast path %s, spool %s",
                 self.index, config.server_id, IMPLEMENTATION, config.spool_dir)

        redis = redis_client(
            config.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=10,
            # Fail fast while Redis is down: every caller retries on its own schedule.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        )
        loader = SnapshotLoader(redis, config.server_id, self.worker_id,
                                heartbeat_interval=config.heartbeat_interval,
                                dkim_keys=DkimKeyCache(config.data_dir))
        spool = Spool(config.spool_dir, owner=self.index, owners=config.workers)
        spool.open()
        delivery_config = config.delivery
        stats = StatsBatcher(
            redis, config.stats_flush_interval, server_id=config.server_id, journal_dir=config.stats_journal_dir,
            max_batch_events=delivery_config.flush_max_events, journal_max_bytes=config.stats_journal_max_bytes,
            event_ttl=delivery_config.event_retention, max_events=delivery_config.events_max,
        )
        delivery = None
        if delivery_config.enabled:
            # The supervisor made the key file before starting the workers.
            delivery = DeliveryEngine(config, loader=loader, spool=spool, stats=stats, index=self.index,
                                      return_paths=ReturnPaths(open_codec(config.data_dir)))
        else:
            log.info("worker %d: delivery is off (--no-delivery): messages stay in the spool", self.index)
        caps = [self._caps(redis, "bridge", config.max_connections)]
        handler = BridgeHandler(
            config, loader=loader, spool=spool, stats=stats,
            throttle=SharedAuthThrottle(redis, config.server_id, config.auth_throttle), worker_id=self.worker_id,
            suppressions=SuppressionLookup(redis, stats), delivery=delivery, caps=caps[0],
        )
        assert config.tls_cert is not None and config.tls_key is not None, "the supervisor resolves TLS files"
        tls_context = server_context(config.tls_cert, config.tls_key)
        await loader.start()
        stats.start()
        if config.inbound.enabled:
            caps.append(self._caps(redis, "inbound", config.inbound.max_connections))
        for cap in caps:
            await cap.start()
        sock = listening_socket(config.smtp_host, config.smtp_port)
        server = await loop.create_server(
            lambda: BridgeSMTP(handler, hostname=self._hostname(loader), tls_context=tls_context),
            sock=sock,
        )
        listeners = [(server, handler)]
        if config.inbound.enabled:
            inbound = self._inbound_handler(redis, loader, caps[-1])
            inbound_server = await loop.create_server(
                lambda: InboundSMTP(inbound, hostname=self._hostname(loader), tls_context=tls_context),
                sock=listening_socket(config.inbound.host, config.inbound.port),
            )
            listeners.append((inbound_server, inbound))
        http_runner = await self._start_http(handler, redis, loader) if config.http.enabled else None
        log.info("worker %d pid %d listening on %s%s (snapshot version %d)",
                 self.index, os.getpid(), format_listen(config.smtp_host, config.smtp_port),
                 (f", inbound {config.inbound.listen}" if config.inbound.enabled else "")
                 + (f", http {config.http.listen}" if config.http.enabled else ""), loader.version)
        ready.send(("ready", self.index, os.getpid(), loader.version))
        ready.close()
        queue_control = loop.create_task(QueueControl(
            redis, server_id=config.server_id, worker_id=self.worker_id,
            queue=delivery.queue if delivery else None, outcomes=delivery.outcomes if delivery else None,
        ).run(), name="queue-control")
        sampler = loop.create_task(_sample_metrics(loader, stats, delivery, spool), name="metrics-sampler")
        try:
            if delivery is not None:
                await delivery.start()
            await stop.wait()
        finally:
            sampler.cancel()
            queue_control.cancel()
            await asyncio.gather(queue_control, return_exceptions=True)
            if http_runner is not None:
                await http_runner.cleanup()  # stops taking requests; those under way finish first
            await self._shutdown(listeners, loader, stats, spool, redis, delivery, caps)

    async def _start_http(self, handler: BridgeHandler, redis, loader: SnapshotLoader) -> web.AppRunner:
        """The REST Bridge and health endpoints on the shared HTTP port (`dataplane.rest`)."""
        config = self.config
        bridge = RestBridge(config, handler=handler, throttle=handler.throttle, redis=redis,
                            hostname=lambda: self._hostname(loader))
        health = Health(redis=redis, loader=loader, spool_dir=config.spool_dir,
                        min_free_disk=config.http.min_free_disk)
        app = build_app(bridge, health)
        if config.metrics_listen is not None:  # the workers count into the shared metrics directory
            app.router.add_get("/metrics", self._metrics_page)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_grace)
        await runner.setup()
        await web.SockSite(runner, listening_socket(config.http.host, config.http.port)).start()
        return runner

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        """/metrics on the HTTP port: every worker's figures merged, as the supervisor's
        --metrics-listen serves them (read in a thread: it reads one file per worker)."""
        body, content_type = await asyncio.to_thread(metrics.exposition, self.config.metrics_dir)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _caps(self, redis, listener: str, total: int) -> ConnectionCaps:
        config = self.config
        return ConnectionCaps(redis, server_id=config.server_id, listener=listener, index=self.index,
                              workers=config.workers, per_address=config.max_connections_per_address, total=total,
                              exempt=config.connection_cap_exempt)

    def _inbound_handler(self, redis, loader: SnapshotLoader, caps: ConnectionCaps) -> InboundHandler:
        config = self.config
        intake = ReportIntake(
            Attributor(redis, open_codec(config.data_dir)),
            Accounting(redis, server_id=config.server_id, event_ttl=config.delivery.event_retention,
                       max_events=config.delivery.events_max),
        )
        return InboundHandler(config, loader=loader, intake=intake, caps=caps)

    async def _shutdown(self, listeners: list[tuple], loader, stats, spool, redis,
                        delivery: DeliveryEngine | None, caps: list[ConnectionCaps]) -> None:
        handlers = [handler for _, handler in listeners]
        bridge, *inbound = handlers
        log.info("worker %d stopping: %d session(s), %d message(s) in DATA%s", self.index, len(bridge.sessions),
                 bridge.in_flight, "".join(f"; inbound: {len(h.sessions)} session(s), {h.in_flight} report(s) in DATA"
                                           for h in inbound))
        for server, _ in listeners:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_grace
        while any(h.in_flight for h in handlers) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        goodbye = (REPLY_SHUTTING_DOWN.format(host=self._hostname(loader)) + "\r\n").encode()
        for session in [s for h in handlers for s in h.sessions]:
            transport = session.transport
            if transport is not None and not transport.is_closing():
                transport.write(goodbye)
                transport.close()
        await asyncio.sleep(0)  # let connection_lost run
        if delivery is not None:
            await delivery.stop(max(0.0, deadline - loop.time()) + 1.0)
        for cap in caps:
            await cap.close()
        await stats.close()
        await loader.stop()
        spool.close()
        await redis.aclose()
        log.info("worker %d stopped", self.index)
