"""Egress: which source IP a message leaves from, and the connection slots of
each (destination, source IP) pair.

Source IP: one `SourceSelector` per snapshot, built by `routing.Routing` and
shared by acceptance (which picks each message's IP) and delivery: one rotation
per pool, not two. A job keeps the record's IP while it is usable in the
current snapshot, in whatever pool it is now (a message routed before its IP
moved keeps that IP and its original pool's attribution). An IP that is paused,
at weight 0, or gone from the snapshot (released) is replaced by a fresh pick
from the message's pool, which the message keeps for its later attempts (its
counts then go to the new IP, still under the message's pool). With no
snapshot loaded yet, the record's IP is used as it is. The job's return path
(`return_path.ReturnPaths`) is decided when its transaction is about to start.

Connection slots: a job gets its source IP, its destination
(`destinations.Destinations`), and waits in the queue of its (destination,
source IP) pair; its bytes (`DeliveryQueue.load_payload`) and its return path
are made only when a connection takes it, so a long queue waits without them. Connections are per pair, reused job after job, kept idle for
`idle_timeout`, and limited per source IP and per destination (the server-wide
limits split over the workers), so one slow destination holds at most its own
share of connections and never the others'. Fairness: a pair that cannot open
a connection is starved; an idle connection holding a slot it needs is closed,
a busy one gives its slot up after `YIELD_AFTER_JOBS` jobs, and a freed slot
goes to the pair that has waited longest.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from _fastpath import NoUsableIp
from control.contract.runtime import reraise_if_cancelling

from .. import metrics
from ..config import DataplaneConfig
from ..destinations import Destinations, LookupFailed
from ..return_path import ReturnPaths
from ..smtp_client import SmtpConnection
from ..smtp_reply import DEFERRED, NO_SOURCE_IP, STAGE_RCPT, classify, local_reply
from ..spool import SpoolCorrupt
from .dispatcher import Dispatcher, quit_quietly
from .outcomes import Outcomes
from .queue import DeliveryJob, DeliveryQueue, QueuedMessage
from .source_selector import SourceSelector

log = logging.getLogger("poolmta.dataplane.delivery")

# A busy connection gives its slot up after this many jobs when another
# destination or IP waits for one (fairness under sustained load).
YIELD_AFTER_JOBS = 20

Pair = tuple[str, str]  # (destination site, source IP)


@dataclass(eq=False)
class Session:
    """One outbound connection slot of a (destination, source IP) pair and its task."""

    key: Pair
    egress: Egress = field(repr=False)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    jobs: int = 0
    idle: bool = False
    evicted: bool = False
    in_transaction: bool = False  # an outcome is on its way to the spool: a stop waits for it
    task: asyncio.Task | None = None

    def take_waiting(self) -> list[DeliveryJob]:
        """Take every job waiting for this session's pair out of its queue."""
        return list(self.egress.take_waiting(self.key))


class Egress:
    """Source IPs and connection slots of one worker's delivery (see the module docstring)."""

    def __init__(self, config: DataplaneConfig, *, loader, destinations: Destinations, queue: DeliveryQueue,
                 outcomes: Outcomes, dispatcher: Dispatcher, return_paths: ReturnPaths,
                 metrics: Counter[str]) -> None:
        delivery = config.delivery
        self.idle_timeout = delivery.idle_timeout
        self.max_per_ip = delivery.share(delivery.max_conn_per_ip, config.workers)
        self.max_per_site = delivery.share(delivery.max_conn_per_destination, config.workers)
        self.loader = loader
        self.destinations = destinations
        self.queue = queue
        self.outcomes = outcomes
        self.dispatcher = dispatcher
        self.return_paths = return_paths
        self.metrics = metrics
        self._queues: dict[Pair, deque[DeliveryJob]] = {}
        self._sessions: dict[Pair, set[Session]] = {}
        self._per_ip: Counter[str] = Counter()
        self._per_site: Counter[str] = Counter()
        self._starved: OrderedDict[Pair, None] = OrderedDict()
        self._stopping = False

    @property
    def open_connections(self) -> int:
        """Connection slots in use (open, opening or idle)."""
        return sum(self._per_ip.values())

    # -- admission -------------------------------------------------------------

    async def admit(self, job: DeliveryJob) -> None:
        """Source IP and destination of a due job, then into its pair's queue (its bytes
        and return path are made when a connection takes it: a backlog waits without
        them). A job that cannot get them is finished with the reason (never stranded)."""
        try:
            await self._admit(job)
        except Exception:
            reraise_if_cancelling()
            log.exception("delivery: %s: internal error preparing delivery to %s", job.message.id, job.domain)
            await self.outcomes.internal_error(job)

    async def _admit(self, job: DeliveryJob) -> None:
        message = job.message
        source = self.source_for(message)
        if source is None:
            await self.outcomes.finish_all(job, local_reply(NO_SOURCE_IP, pool=message.record.pool), DEFERRED)
            return
        job.ip, job.helo = source
        try:
            job.destination = await self.destinations.find(job.domain)
        except LookupFailed as failure:
            self.metrics["dns_failures"] += 1
            await self.outcomes.finish_all(job, failure.reply, classify(failure.reply, STAGE_RCPT))
            return
        key = (job.destination.site, job.ip)
        self._queues.setdefault(key, deque()).append(job)
        self._kick(key)

    def source_for(self, message: QueuedMessage) -> tuple[str, str] | None:
        """(source IP, its HELO name) for the next attempt of `message`, None if its
        pool has none: the record's IP or a re-pick, by the rules of the module docstring."""
        routing = self.loader.current
        if routing is None:
            return message.ip, message.helo
        sources: SourceSelector = routing.sources
        state = sources.ip(message.ip)
        if state is not None and state.usable:
            # Interned: the snapshot makes the name anew for each call, and a job keeps
            # it while it waits behind a backlog.
            return message.ip, sys.intern(state.hostname) if state.hostname else message.helo
        try:
            address, hostname = sources.pick(message.record.smtp_id)
        except (KeyError, NoUsableIp):
            return None
        why = "released" if state is None else "paused or at weight 0"
        log.info("delivery: %s: source IP %s is %s; now sending from %s of pool %s",
                 message.id, message.ip, why, address, message.record.pool)
        self.metrics["ip_repicks"] += 1
        message.ip, message.helo = address, hostname
        return message.ip, message.helo

    # -- connection slots ---------------------------------------------------------

    def take_waiting(self, key: Pair) -> deque[DeliveryJob]:
        """Take every job waiting for `key` out of its queue (they will not get a connection)."""
        return self._queues.pop(key, None) or deque()

    def _can_open(self, key: Pair) -> bool:
        site, ip = key
        return self._per_ip[ip] < self.max_per_ip and self._per_site[site] < self.max_per_site

    def _kick(self, key: Pair) -> None:
        """A job waits in `key`'s queue: wake an idle session of it, or open one if the limits allow."""
        if self._stopping:
            return
        for session in self._sessions.get(key, ()):
            if session.idle and not session.wake.is_set():
                session.wake.set()
                return
        if self._can_open(key):
            self._open_session(key)
            return
        self._starved[key] = None
        self._evict_idle_for(key)

    def _open_session(self, key: Pair) -> None:
        site, ip = key
        metrics.outbound_connections.inc(ip)
        self._per_ip[ip] += 1
        self._per_site[site] += 1
        session = Session(key, self)
        self._sessions.setdefault(key, set()).add(session)
        session.task = asyncio.get_running_loop().create_task(self._run_session(session), name=f"smtp-{site}-{ip}")

    def _evict_idle_for(self, key: Pair) -> None:
        """Close an idle connection that holds a slot `key` needs (same IP or same destination)."""
        site, ip = key
        for other_key, sessions in self._sessions.items():
            if other_key == key or (other_key[1] != ip and other_key[0] != site):
                continue
            for session in sessions:
                if session.idle and not session.evicted:
                    session.evicted = True
                    session.wake.set()
                    return

    def _someone_waits_for(self, key: Pair) -> bool:
        """True when another (destination, IP) pair waits for a slot this session holds."""
        site, ip = key
        return any(other != key and (other[0] == site or other[1] == ip) and self._queues.get(other)
                   for other in self._starved)

    def _session_ended(self, session: Session) -> None:
        site, ip = session.key
        metrics.outbound_connections.dec(ip)
        self._per_ip[ip] -= 1
        self._per_site[site] -= 1
        group = self._sessions.get(session.key)
        if group is not None:
            group.discard(session)
            if not group:
                del self._sessions[session.key]
        if self._stopping:
            return
        if self._queues.get(session.key):
            self._starved[session.key] = None
        for key in list(self._starved):
            if not self._queues.get(key):
                del self._starved[key]
            elif self._can_open(key):
                del self._starved[key]
                self._open_session(key)

    async def _next_job(self, session: Session, *, wait: bool) -> DeliveryJob | None:
        """The next job of the session's queue; when there is none, wait for one up to
        the idle timeout if `wait` (an open connection worth keeping), else None."""
        queue = self._queues.get(session.key)
        while not queue:
            if self._stopping or session.evicted or not wait:
                return None
            session.idle = True
            session.wake.clear()
            try:
                async with asyncio.timeout(self.idle_timeout):
                    await session.wake.wait()
            except TimeoutError:
                return None
            finally:
                session.idle = False
            queue = self._queues.get(session.key)
        job = queue.popleft()
        if not queue:
            del self._queues[session.key]
        return job

    async def _prepare(self, job: DeliveryJob) -> bytes | None:
        """The bytes of the job's transaction, and its return path (`job.sender`), made
        when a connection takes the job: a job waiting behind a backlog holds neither.
        None when the job is done without them: its record is lost (the message is
        forgotten), or making them failed otherwise (the job is deferred, never stranded)."""
        try:
            # One recipient per job for a VERP message (the queue's rule): its address names it.
            job.sender = self.return_paths.sender(job.message.record, job.rcpts[0].index, self.loader.current)
            return await self.queue.load_payload(job.message)
        except (FileNotFoundError, SpoolCorrupt) as exc:
            self.outcomes.lost(job.message, exc)
        except Exception:
            reraise_if_cancelling()
            log.exception("delivery: %s: internal error preparing its transaction", job.message.id)
            await self.outcomes.internal_error(job)
        return None

    async def _run_session(self, session: Session) -> None:
        connection: SmtpConnection | None = None
        try:
            while not self._stopping:
                job = await self._next_job(session, wait=connection is not None)
                if job is None:
                    break
                payload = await self._prepare(job)
                if payload is None:
                    continue
                started = time.monotonic()
                try:
                    connection = await self.dispatcher.deliver(session, job, connection, payload)
                except Exception:
                    reraise_if_cancelling()
                    log.exception("delivery: %s: internal error delivering to %s", job.message.id, job.domain)
                    if connection is not None:
                        connection.abort()
                        connection = None
                    await self.outcomes.internal_error(job)
                finally:
                    session.in_transaction = False
                    metrics.delivery_attempt_duration.observe(time.monotonic() - started)
                session.jobs += 1
                if session.jobs % YIELD_AFTER_JOBS == 0 and self._someone_waits_for(session.key):
                    break  # give the slot to a waiting destination or IP (it is requeued behind it)
        except asyncio.CancelledError:
            pass
        finally:
            if connection is not None:
                await quit_quietly(connection)
            self._session_ended(session)

    # -- stop -------------------------------------------------------------------------

    async def close(self, grace: float) -> None:
        """Open no more connections; transactions under way get up to `grace` seconds
        to finish, connections still being opened or idle are closed at once."""
        self._stopping = True
        sessions = [s for group in self._sessions.values() for s in group]
        for session in sessions:
            if session.idle:
                session.wake.set()
            elif not session.in_transaction and session.task is not None:
                session.task.cancel()
        busy = [s.task for s in sessions if s.task is not None and not s.task.done()]
        if busy:
            _, late = await asyncio.wait(busy, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2.0)
