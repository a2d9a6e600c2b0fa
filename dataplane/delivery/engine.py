"""The delivery engine of one worker: it consumes the worker's share of the
spool and delivers each recipient from the message's source IP.

It composes the stages, each in its own module, each handing the next a typed
record:

* `queue` — the messages this worker owns (`QueuedMessage`), their recipients
  (`Recipient`), the retry schedule and expiry; due recipients become jobs
  (`DeliveryJob`).
* `egress` — a job's source IP (the rotation shared with acceptance) and its
  destination, then the connection slots per (destination, source IP) pair.
* `dispatcher` — the SMTP transaction of a job on a slot's connection; one
  `RecipientOutcome` per recipient.
* `outcomes` — classification applied, counts, delivery events, and the spool
  record updated or removed;
* `notices` — the DSNs senders get for their bounced recipients, spooled as
  messages of their own (handed back to the queue).

The engine itself starts and stops them, takes what acceptance hands over, logs
its metrics, and gives memory back after a large backlog drained (`memory_return`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from control.contract.runtime import pause

from ..config import DataplaneConfig
from ..destinations import Destinations
from ..return_path import ReturnPaths
from ..smtp_reply import BOUNCED, DEFERRED, DELIVERED
from ..spool import Spool, SpoolRecord
from .dispatcher import Dispatcher
from .egress import Egress
from .memory_return import DrainWatch, give_back
from .notices import Notices
from .outcomes import Outcomes
from .queue import DeliveryJob, DeliveryQueue, QueuedMessage

log = logging.getLogger("poolmta.dataplane.delivery")

METRICS_LOG_INTERVAL = 60.0
# Seconds between two looks at the queue's length for a drained backlog.
DRAIN_CHECK_INTERVAL = 5.0


class DeliveryEngine:
    """Delivers one worker's share of the spool (see the module docstring)."""

    def __init__(self, config: DataplaneConfig, *, loader, spool: Spool, stats, index: int,
                 return_paths: ReturnPaths) -> None:
        self.config = config
        self.stats = stats
        self.index = index
        self.owners = config.workers
        self.metrics: Counter[str] = Counter()
        destinations = Destinations(config.delivery)
        self.queue = DeliveryQueue(config.delivery, spool, owners=self.owners, index=index,
                                   start_job=self._start_job, settle=self._settle)
        self.notices = Notices(config, loader=loader, spool=spool, queue=self.queue, stats=stats,
                               metrics=self.metrics)
        self.outcomes = Outcomes(config.delivery, queue=self.queue, spool=spool, stats=stats, notices=self.notices,
                                 metrics=self.metrics)
        self.dispatcher = Dispatcher(config.delivery, destinations=destinations, outcomes=self.outcomes,
                                     metrics=self.metrics)
        self.egress = Egress(config, loader=loader, destinations=destinations, queue=self.queue,
                             outcomes=self.outcomes, dispatcher=self.dispatcher, return_paths=return_paths,
                             metrics=self.metrics)
        self._tasks: list[asyncio.Task] = []
        self._side_tasks: set[asyncio.Task] = set()
        self._stopping = False

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Recover this worker's records from the spool, then run."""
        found = await self.queue.scan()
        log.info("delivery: worker %d of %d recovered %d queued message(s); limits %d connection(s) per IP, "
                 "%d per destination", self.index, self.owners, found, self.egress.max_per_ip,
                 self.egress.max_per_site)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.queue.run_scheduler(), name="delivery-scheduler"),
            loop.create_task(self.queue.rescan_forever(), name="delivery-rescan"),
            loop.create_task(self._metrics_loop(), name="delivery-metrics"),
            loop.create_task(self._memory_loop(), name="delivery-memory"),
        ]

    async def stop(self, grace: float) -> None:
        """Stop: transactions under way get up to `grace` seconds to finish; connections
        still being opened or idle are closed at once. What is left stays in the spool."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in list(self._side_tasks):
            task.cancel()
        await self.egress.close(grace)
        await asyncio.gather(*self._tasks, *self._side_tasks, return_exceptions=True)
        self._log_metrics("stopped")

    def accepted(self, record: SpoolRecord) -> None:
        """A record this worker just spooled (and owns): deliver it."""
        if not self._stopping:
            self.queue.submit(record, now=time.time())

    # -- between the stages ---------------------------------------------------

    def _start_job(self, job: DeliveryJob) -> None:
        self._spawn(self.egress.admit(job))

    def _settle(self, message: QueuedMessage) -> None:
        self._spawn(self.outcomes.settle(message))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery: internal error", exc_info=task.exception())

    # -- metrics -------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Messages this worker is delivering (owned and not final)."""
        return len(self.queue)

    def oldest_queued_at(self) -> float | None:
        """When the oldest message this worker is delivering was accepted (unix
        seconds); None when it delivers none."""
        return self.queue.oldest_received()

    async def _memory_loop(self) -> None:
        """Give memory back to the system each time the queue drained from a large
        backlog (`memory_return`)."""
        watch = DrainWatch()
        while True:
            await pause(DRAIN_CHECK_INTERVAL)
            if watch.drained(len(self.queue)):
                await asyncio.to_thread(give_back)

    async def _metrics_loop(self) -> None:
        last: dict[str, int] = {}
        while True:
            await pause(METRICS_LOG_INTERVAL)
            now = dict(self.metrics) | {f"stats_{k}": v for k, v in self.stats.metrics.items()}
            if now != last:
                self._log_metrics("running")
                last = now

    def _log_metrics(self, state: str) -> None:
        stats = self.stats.metrics
        log.info("delivery %s: %d message(s) queued, %d connection(s) open; delivered %d, bounced %d, "
                 "deferred %d; DSNs to senders %d; connections %d (TLS %d), bind_failures %d, dns_failures %d, "
                 "ip_repicks %d; events_dropped %d",
                 state, self.queued, self.egress.open_connections, self.metrics[DELIVERED], self.metrics[BOUNCED],
                 self.metrics[DEFERRED], self.metrics["dsn_sent"], self.metrics["connections"],
                 self.metrics["tls_connections"],
                 self.metrics["bind_failures"], self.metrics["dns_failures"], self.metrics["ip_repicks"],
                 stats["events_dropped"])
