"""The delivery engine of one worker: it consumes the worker's share of the
spool and delivers each recipient from the message's source IP.

Ownership: of K workers, worker i delivers the records `spool.owner_of(id, K)
== i`. It gets the ones it accepts handed over in memory, finds the rest by
scanning `queue/` at start (a restarted worker recovers its set this way) and
every `rescan_interval` as a safety net. No record has two live owners.

Per message: the recipients are grouped by domain; each group is a job. A job
gets its source IP (the record's, unless that IP is no longer usable: see
`_source_for`), its destination (`destinations.Destinations`), and waits in the
queue of its (destination, source IP) pair. Connections are per pair, reused
job after job, kept idle for `idle_timeout`, and limited per source IP and per
destination (the server-wide limits split over the workers), so one slow
destination holds at most its own share of connections and never the others'.

Outcomes, per recipient: 2yz delivered, 5yz bounced (the reply kept), 4yz or a
failed connection deferred and retried on the retry schedule until the queue
lifetime ends, then bounced (`smtp_reply.classify`). Each outcome is counted
(delivered / bounced / deferred, under the record's pool and the IP the
attempt used) and becomes an event in the message's Redis list; both go out
with the stats batcher's next flush. The record is rewritten with its attempts
when recipients remain, and deleted once every recipient is final.

At-least-once: a recipient's outcome is made durable in the spool right after
its reply, before the connection carries anything else. A crash (even SIGKILL)
therefore repeats only deliveries in flight at that moment: a transaction
under way, or one whose reply had come but whose spool update had not finished;
at most one per open connection. Their recipients are delivered again after
the restart (and counted again: the counts follow what destinations received).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field, replace

from _fastpath import NoUsableIp, RotationTable
from control.contract.runtime import reraise_if_cancelling

from .config import DataplaneConfig, format_duration, normalize_domain
from .destinations import Destination, Destinations, LookupFailed, family_of
from .smtp_client import (
    BindError,
    ConnectError,
    SessionError,
    SmtpConnection,
    client_tls_context,
    data_payload,
)
from .smtp_reply import (
    BAD_ADDRESS,
    BIND_FAILED,
    BOUNCED,
    CONNECT_FAILED,
    CONNECTION_LOST,
    DEFERRED,
    DELIVERED,
    EXPIRED,
    LOCAL_ERROR,
    NEEDS_SMTPUTF8,
    NO_ADDRESS,
    NO_SOURCE_IP,
    PROTOCOL_ERROR,
    SESSION_REFUSED,
    STAGE_DATA,
    STAGE_MAIL,
    STAGE_RCPT,
    TIMED_OUT,
    TOO_BIG,
    Reply,
    classify,
    local_reply,
)
from .spool import Spool, SpoolCorrupt, SpoolError, SpoolRecord, owner_of

log = logging.getLogger("poolmta.dataplane.delivery")

# Records read per trip to the spool's threads when scanning.
SCAN_BATCH = 64
# A busy connection gives its slot up after this many jobs when another
# destination or IP waits for one (fairness under sustained load).
YIELD_AFTER_JOBS = 20
# Recipients per transaction: the number every server must accept (RFC 5321 4.5.3.1.8).
MAX_RCPTS_PER_TRANSACTION = 100
# Connection attempts per job over all hosts and addresses (Postfix's smtp_mx_address_limit).
MAX_CONNECT_ATTEMPTS = 5
# A host whose TLS handshake failed is reached in plaintext for this long.
NO_TLS_SECONDS = 3600.0
METRICS_LOG_INTERVAL = 60.0
_CONTROL = frozenset(chr(c) for c in (*range(32), 127)) | {"<", ">"}


def retry_delay(schedule: tuple[float, ...], attempts: int) -> float:
    """Seconds to wait after the `attempts`-th deferral (1-based); the last entry repeats."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def next_attempt_at(schedule: tuple[float, ...], attempts: int, last_at: float, deadline: float) -> float:
    """When to retry after the `attempts`-th deferral at `last_at`: the schedule's
    delay, but never after the end of the queue lifetime (the last try is at it)."""
    return min(last_at + retry_delay(schedule, attempts), deadline)


@dataclass
class _Rcpt:
    address: str
    domain: str
    attempts: int = 0
    next_at: float = 0.0
    busy: bool = False  # in a job right now


@dataclass
class _Message:
    """A queued message as the engine tracks it (the bytes only while jobs need them)."""

    record: SpoolRecord  # metadata; `message` may be b"" (read from disk when due)
    pending: dict[str, _Rcpt]
    deadline: float
    ip: str
    helo: str
    attempts: list[dict] = field(default_factory=list)
    payload: bytes | None = None
    jobs: int = 0
    heap_due: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gone: bool = False

    @property
    def id(self) -> str:
        return self.record.id


@dataclass
class _Job:
    message: _Message
    domain: str
    rcpts: list[_Rcpt]
    ip: str = ""
    helo: str = ""
    destination: Destination | None = None


@dataclass(eq=False)
class _Session:
    """One outbound connection slot of a (site, source IP) pair and its task."""

    key: tuple[str, str]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    jobs: int = 0
    idle: bool = False
    evicted: bool = False
    in_transaction: bool = False
    task: asyncio.Task | None = None


class DeliveryEngine:
    """Delivers one worker's share of the spool (see the module docstring)."""

    def __init__(self, config: DataplaneConfig, *, loader, spool: Spool, stats, index: int) -> None:
        self.config = config
        self.delivery = delivery = config.delivery
        self.loader = loader
        self.spool = spool
        self.stats = stats
        self.index = index
        self.owners = config.workers
        self.max_per_ip = delivery.share(delivery.max_conn_per_ip, config.workers)
        self.max_per_site = delivery.share(delivery.max_conn_per_destination, config.workers)
        self.destinations = Destinations(delivery)
        self.tls_context = client_tls_context()
        self.metrics: Counter[str] = Counter()
        self._messages: dict[str, _Message] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._queues: dict[tuple[str, str], deque[_Job]] = {}
        self._sessions: dict[tuple[str, str], set[_Session]] = {}
        self._per_ip: Counter[str] = Counter()
        self._per_site: Counter[str] = Counter()
        self._starved: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._no_tls: dict[tuple[str, int], float] = {}
        self._tasks: list[asyncio.Task] = []
        self._side_tasks: set[asyncio.Task] = set()
        self._scan_removed: set[str] | None = None
        self._rotation: tuple[object, RotationTable, dict[str, tuple[bool, str]]] | None = None
        self._stopping = False

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Recover this worker's records from the spool, then run."""
        found = await self._scan()
        log.info("delivery: worker %d of %d recovered %d queued message(s); limits %d connection(s) per IP, "
                 "%d per destination", self.index, self.owners, found, self.max_per_ip, self.max_per_site)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._scheduler(), name="delivery-scheduler"),
            loop.create_task(self._rescan_loop(), name="delivery-rescan"),
            loop.create_task(self._metrics_loop(), name="delivery-metrics"),
        ]

    async def stop(self, grace: float) -> None:
        """Stop: transactions under way get up to `grace` seconds to finish; connections
        still being opened or idle are closed at once. What is left stays in the spool."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in list(self._side_tasks):
            task.cancel()
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
        await asyncio.gather(*self._tasks, *self._side_tasks, return_exceptions=True)
        self._log_metrics("stopped")

    # -- intake ---------------------------------------------------------------

    def accepted(self, record: SpoolRecord) -> None:
        """A record this worker just spooled (and owns): deliver it."""
        if not self._stopping:
            self._submit(record, now=time.time())

    def _submit(self, record: SpoolRecord, now: float) -> None:
        if record.id in self._messages:
            return
        final: set[str] = set()
        attempts: Counter[str] = Counter()
        last: dict[str, float] = {}
        for entry in record.attempts:
            rcpt = entry.get("rcpt", "")
            attempts[rcpt] += 1
            last[rcpt] = entry.get("at_ms", 0) / 1000.0
            if entry.get("outcome") in (DELIVERED, BOUNCED):
                final.add(rcpt)
        deadline = record.received_ms / 1000.0 + self.delivery.queue_lifetime
        pending: dict[str, _Rcpt] = {}
        for address in record.rcpt_tos:
            if address in final or address in pending:
                continue
            state = _Rcpt(address, normalize_domain(address.rpartition("@")[2]), attempts[address])
            state.next_at = (next_attempt_at(self.delivery.retry_schedule, state.attempts, last[address], deadline)
                             if state.attempts else now)
            pending[address] = state
        message = _Message(record=record, pending=pending, deadline=deadline, ip=record.ip,
                           helo=record.ip_hostname, attempts=list(record.attempts))
        if record.message:
            message.payload = data_payload(record.message)
            message.record = _without_bytes(record)
        self._messages[record.id] = message
        if not pending:  # every recipient final before a crash: only the removal was missing
            self._spawn(self._finish_message(message))
            return
        self._schedule(message)

    async def _scan(self) -> int:
        """Submit every owned record in `queue/` not known yet; how many were new."""
        self._scan_removed = set()
        found = 0
        try:
            ids = [i for i in await self.spool.list_ids()
                   if owner_of(i, self.owners) == self.index and i not in self._messages]
            for start in range(0, len(ids), SCAN_BATCH):
                chunk = ids[start:start + SCAN_BATCH]
                for message_id, record in zip(chunk, await self.spool.read_many(chunk), strict=True):
                    if isinstance(record, SpoolCorrupt):
                        log.error("delivery: spool record %s is damaged (%s); moved to corrupt/", message_id, record)
                        self.spool.quarantine(message_id)
                        continue
                    if isinstance(record, FileNotFoundError):
                        continue  # consumed meanwhile
                    if isinstance(record, OSError):
                        log.error("delivery: cannot read spool record %s: %s", message_id, record)
                        continue
                    if message_id in self._scan_removed or message_id in self._messages:
                        continue  # delivered and removed while this scan read it
                    self._submit(_without_bytes(record), now=time.time())
                    found += 1
        except OSError as exc:
            log.error("delivery: cannot scan the spool: %s", exc)
        finally:
            self._scan_removed = None
        return found

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.delivery.rescan_interval)
            found = await self._scan()
            if found:
                log.warning("delivery: the spool scan found %d owned message(s) not handed over at acceptance", found)

    # -- scheduling -------------------------------------------------------------

    def _schedule(self, message: _Message) -> None:
        waiting = [r.next_at for r in message.pending.values() if not r.busy]
        if not waiting or message.gone:
            return
        due = min(waiting)
        if message.heap_due is None or due < message.heap_due:
            message.heap_due = due
            heapq.heappush(self._heap, (due, next(self._seq), message.id))
            if self._heap[0][2] == message.id:
                self._wakeup.set()

    async def _scheduler(self) -> None:
        while True:
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                due, _, message_id = heapq.heappop(self._heap)
                message = self._messages.get(message_id)
                if message is None or message.heap_due != due:
                    continue  # a stale entry
                message.heap_due = None
                self._start_due(message, now)
            self._wakeup.clear()
            timeout = self._heap[0][0] - time.time() if self._heap else None
            if timeout is None or timeout > 0:
                try:
                    async with asyncio.timeout(timeout):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass

    def _start_due(self, message: _Message, now: float) -> None:
        groups: dict[str, list[_Rcpt]] = {}
        for rcpt in message.pending.values():
            if not rcpt.busy and rcpt.next_at <= now:
                groups.setdefault(rcpt.domain, []).append(rcpt)
        for domain, rcpts in groups.items():
            for rcpt in rcpts:
                rcpt.busy = True
            for start in range(0, len(rcpts), MAX_RCPTS_PER_TRANSACTION):
                message.jobs += 1
                self._spawn(self._prepare(_Job(message, domain, rcpts[start:start + MAX_RCPTS_PER_TRANSACTION])))
        self._schedule(message)  # recipients not due yet

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery: internal error", exc_info=task.exception())

    async def _prepare(self, job: _Job) -> None:
        """Source IP, destination and bytes of a job, then into its connection queue."""
        try:
            await self._prepare_job(job)
        except Exception:
            reraise_if_cancelling()
            log.exception("delivery: %s: internal error preparing delivery to %s", job.message.id, job.domain)
            await self._internal_error(job)

    async def _internal_error(self, job: _Job) -> None:
        """A job hit a bug: defer it (the retry schedule applies), never strand it."""
        reply = local_reply(LOCAL_ERROR)
        try:
            await self._finish_job(job, [(r, reply, DEFERRED) for r in job.rcpts if r.busy], "")
        except Exception:
            log.exception("delivery: %s: internal error recording a deferral", job.message.id)

    async def _prepare_job(self, job: _Job) -> None:
        message = job.message
        source = self._source_for(message)
        if source is None:
            reply = local_reply(NO_SOURCE_IP, pool=message.record.pool)
            await self._finish_job(job, [(r, reply, DEFERRED) for r in job.rcpts], "")
            return
        job.ip, job.helo = source
        try:
            job.destination = await self.destinations.find(job.domain)
        except LookupFailed as failure:
            self.metrics["dns_failures"] += 1
            outcome = classify(failure.reply, STAGE_RCPT)
            await self._finish_job(job, [(r, failure.reply, outcome) for r in job.rcpts], "")
            return
        if message.payload is None:
            try:
                record = await self.spool.read(message.id)
            except (FileNotFoundError, SpoolCorrupt) as exc:
                self._lost(message, exc)
                return
            if message.payload is None:
                message.payload = data_payload(record.message)
        key = (job.destination.site, job.ip)
        self._queues.setdefault(key, deque()).append(job)
        self._kick(key)

    def _lost(self, message: _Message, exc: BaseException) -> None:
        if isinstance(exc, SpoolCorrupt):
            log.error("delivery: spool record %s is damaged (%s); moved to corrupt/", message.id, exc)
            self.spool.quarantine(message.id)
        else:
            log.warning("delivery: spool record %s disappeared (removed by hand?); forgetting it", message.id)
        message.gone = True
        self._messages.pop(message.id, None)

    # -- source IPs -------------------------------------------------------------

    def _source_for(self, message: _Message) -> tuple[str, str] | None:
        """(source IP, its HELO name) for the next attempt of `message`, None if its pool has none.

        The record's IP while it is usable in the current snapshot, in whatever
        pool it is now (a message routed before its IP moved keeps that IP and
        its original pool's attribution). An IP that is paused, at weight 0, or
        gone from the snapshot (released) is replaced by a fresh pick from the
        message's pool, which the message keeps for its later attempts (its
        counts then go to the new IP, still under the message's pool). With no
        snapshot loaded yet, the record's IP is used as it is.
        """
        routing = self.loader.current
        if routing is None:
            return message.ip, message.helo
        table, ips = self._rotation_of(routing)
        state = ips.get(message.ip)
        if state is not None and state[0]:
            return message.ip, state[1] or message.helo
        try:
            pool = routing.snapshot.pool(message.record.smtp_id)
            address, ip_index = table.pick(table.index_of(message.record.smtp_id))
        except (KeyError, NoUsableIp):
            return None
        why = "released" if state is None else "paused or at weight 0"
        log.info("delivery: %s: source IP %s is %s; now sending from %s of pool %s",
                 message.id, message.ip, why, address, message.record.pool)
        self.metrics["ip_repicks"] += 1
        message.ip, message.helo = address, pool.ips[ip_index].hostname
        return message.ip, message.helo

    def _rotation_of(self, routing) -> tuple[RotationTable, dict[str, tuple[bool, str]]]:
        """The delivery engine's own rotation (acceptance's stays exact) and IP states, per snapshot."""
        cached = self._rotation
        if cached is None or cached[0] is not routing:
            pools = routing.snapshot.pools
            table = RotationTable.from_pools(
                [(p.smtp_id, [(ip.address, ip.weight, ip.usable) for ip in p.ips]) for p in pools])
            ips = {ip.address: (ip.usable, ip.hostname) for p in pools for ip in p.ips}
            cached = self._rotation = (routing, table, ips)
        return cached[1], cached[2]

    # -- connections --------------------------------------------------------------

    def _can_open(self, key: tuple[str, str]) -> bool:
        site, ip = key
        return self._per_ip[ip] < self.max_per_ip and self._per_site[site] < self.max_per_site

    def _kick(self, key: tuple[str, str]) -> None:
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

    def _open_session(self, key: tuple[str, str]) -> None:
        site, ip = key
        self._per_ip[ip] += 1
        self._per_site[site] += 1
        session = _Session(key)
        self._sessions.setdefault(key, set()).add(session)
        session.task = asyncio.get_running_loop().create_task(self._run_session(session), name=f"smtp-{site}-{ip}")

    def _evict_idle_for(self, key: tuple[str, str]) -> None:
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

    def _someone_waits_for(self, key: tuple[str, str]) -> bool:
        """True when another (destination, IP) pair waits for a slot this session holds."""
        site, ip = key
        return any(other != key and (other[0] == site or other[1] == ip) and self._queues.get(other)
                   for other in self._starved)

    def _session_ended(self, session: _Session) -> None:
        site, ip = session.key
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

    async def _next_job(self, session: _Session, *, wait: bool) -> _Job | None:
        """The next job of the session's queue; when there is none, wait for one up to
        the idle timeout if `wait` (an open connection worth keeping), else None."""
        queue = self._queues.get(session.key)
        while not queue:
            if self._stopping or session.evicted or not wait:
                return None
            session.idle = True
            session.wake.clear()
            try:
                async with asyncio.timeout(self.delivery.idle_timeout):
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

    async def _run_session(self, session: _Session) -> None:
        connection: SmtpConnection | None = None
        try:
            while not self._stopping:
                job = await self._next_job(session, wait=connection is not None)
                if job is None:
                    break
                try:
                    connection = await self._deliver(session, job, connection)
                except Exception:
                    reraise_if_cancelling()
                    log.exception("delivery: %s: internal error delivering to %s", job.message.id, job.domain)
                    if connection is not None:
                        connection.abort()
                        connection = None
                    await self._internal_error(job)
                finally:
                    session.in_transaction = False
                session.jobs += 1
                if session.jobs % YIELD_AFTER_JOBS == 0 and self._someone_waits_for(session.key):
                    break  # give the slot to a waiting destination or IP (it is requeued behind it)
        except asyncio.CancelledError:
            pass
        finally:
            if connection is not None:
                await _quietly(connection.quit())
            self._session_ended(session)

    async def _connect(self, job: _Job) -> tuple[SmtpConnection | None, Reply | None]:
        """A ready connection for the job's destination from its source IP, or the reply
        that says why there is none."""
        destination = job.destination
        assert destination is not None
        family = family_of(job.ip)
        failure: Reply | None = None
        tried = 0
        names: list[str] = []
        for hop in destination.hops:
            names.append(hop.name)
            try:
                addresses = await self.destinations.addresses(destination, hop, family)
            except LookupFailed as exc:
                failure = exc.reply
                continue
            for address in addresses:
                if tried >= MAX_CONNECT_ATTEMPTS:
                    break
                tried += 1
                shown = f"{hop.name}[{address}]:{hop.port}" if hop.name != address else f"{address}:{hop.port}"
                tls_key = (address, hop.port)
                use_tls = self._no_tls.get(tls_key, 0.0) < time.monotonic()
                for with_tls in ((True, False) if use_tls else (False,)):
                    try:
                        connection = await SmtpConnection.open(
                            address, hop.port, source_ip=job.ip, helo_name=job.helo or _literal(job.ip),
                            timeouts=self.delivery.timeouts, server_name=hop.name,
                            tls_context=self.tls_context if with_tls else None)
                    except BindError as exc:
                        self.metrics["bind_failures"] += 1
                        log.error("delivery: source IP %s cannot be bound (%s): not on this host? Deferring; "
                                  "never sending from another address", job.ip, exc)
                        return None, local_reply(BIND_FAILED, ip=job.ip, error=exc)
                    except ConnectError as exc:
                        failure = local_reply(CONNECT_FAILED, host=shown, error=exc)
                        break
                    except SessionError as exc:
                        if exc.tls_failed and with_tls:
                            log.info("delivery: TLS with %s failed (%s); using plaintext with it for %s",
                                     shown, exc, format_duration(NO_TLS_SECONDS))
                            self._no_tls[tls_key] = time.monotonic() + NO_TLS_SECONDS
                            self.metrics["tls_failures"] += 1
                            continue
                        failure = _session_failure(exc, shown)
                        break
                    self.metrics["connections"] += 1
                    if connection.tls:
                        self.metrics["tls_connections"] += 1
                    return connection, None
        if failure is None:
            failure = local_reply(NO_ADDRESS, family=family, domain=job.domain, hosts=", ".join(names) or "none")
        return None, failure

    async def _deliver(self, session: _Session, job: _Job, connection: SmtpConnection | None
                       ) -> SmtpConnection | None:
        """Run one job on the session's connection (opened or renewed as needed); the
        connection to keep for the next job, or None."""
        message = job.message
        record = message.record
        payload = message.payload
        assert payload is not None
        bad = next((a for a in (record.mail_from, *(r.address for r in job.rcpts)) if _CONTROL.intersection(a)), None)
        if bad is not None:
            reply = local_reply(BAD_ADDRESS, address=bad)
            session.in_transaction = True
            await self._finish_job(job, [(r, reply, BOUNCED) for r in job.rcpts], "")
            return connection
        if connection is not None and (connection.closed
                                       or connection.transactions >= self.delivery.max_messages_per_connection):
            await _quietly(connection.quit())
            connection = None
        for _ in range(2):  # a reused connection the server closed meanwhile: once more on a new one
            reused = connection is not None
            if connection is None:
                connection, failure = await self._connect(job)
                if connection is None:
                    assert failure is not None
                    session.in_transaction = True
                    await self._fail_queue(job, failure)
                    return None
            # From here until the outcome is in the spool, a stop waits (up to its grace)
            # rather than cancel: a cancelled transaction would be repeated after a restart.
            session.in_transaction = True
            problem = self._precheck(connection, message, job, payload)
            if problem is not None:
                await self._finish_job(job, [(r, problem, classify(problem)) for r in job.rcpts], connection.host)
                return connection
            try:
                result = await connection.transaction(
                    record.mail_from, [r.address for r in job.rcpts], payload,
                    mail_params=self._mail_params(connection, record, job, payload),
                    utf8=self._needs_utf8(record, job))
            except SessionError as exc:
                connection.abort()
                if reused and exc.when == "after MAIL" and not exc.timeout:
                    connection = None
                    continue
                reply = _session_failure(exc, connection.host)
                await self._finish_job(job, [(r, reply, DEFERRED) for r in job.rcpts], connection.host)
                return None
            await self._finish_job(job, _judge(job, result), connection.host)
            return None if connection.closed else connection
        return None

    def _precheck(self, connection: SmtpConnection, message: _Message, job: _Job, payload: bytes) -> Reply | None:
        limit = connection.size_limit()
        if limit is not None and len(payload) > limit:
            return local_reply(TOO_BIG, size=len(payload), limit=limit, host=connection.host)
        if self._needs_utf8(message.record, job) and "SMTPUTF8" not in connection.extensions:
            return local_reply(NEEDS_SMTPUTF8, host=connection.host)
        return None

    @staticmethod
    def _needs_utf8(record: SpoolRecord, job: _Job) -> bool:
        return not record.mail_from.isascii() or any(not r.address.isascii() for r in job.rcpts)

    def _mail_params(self, connection: SmtpConnection, record: SpoolRecord, job: _Job, payload: bytes) -> list[str]:
        params = []
        extensions = connection.extensions
        if "SIZE" in extensions:
            params.append(f"SIZE={len(payload)}")
        if "8BITMIME" in extensions and any(o.upper() == "BODY=8BITMIME" for o in record.mail_options):
            params.append("BODY=8BITMIME")
        if self._needs_utf8(record, job):
            params.append("SMTPUTF8")
        return params

    async def _fail_queue(self, job: _Job, failure: Reply) -> None:
        """No connection: this job, and every job waiting for the same destination and
        IP (they would fail alike), get `failure`."""
        jobs = [job]
        queue = self._queues.pop((job.destination.site, job.ip), None) if job.destination else None
        if queue:
            jobs.extend(queue)
        outcome = classify(failure, STAGE_MAIL)
        for each in jobs:
            await self._finish_job(each, [(r, failure, outcome) for r in each.rcpts], "")

    # -- outcomes -----------------------------------------------------------------

    async def _finish_job(self, job: _Job, results: list[tuple[_Rcpt, Reply, str]], mx: str) -> None:
        """Record the outcome of each recipient of a job: count it, make it an event,
        make it durable in the spool, and schedule what is left."""
        message = job.message
        record = message.record
        now = time.time()
        ip = job.ip or message.ip
        entries = []
        for rcpt, reply, outcome in results:
            rcpt.attempts += 1
            rcpt.busy = False
            if outcome == DEFERRED and now >= message.deadline:
                reply = local_reply(EXPIRED, lifetime=format_duration(self.delivery.queue_lifetime),
                                    attempts=rcpt.attempts, last=reply)
                outcome = BOUNCED
            final = outcome != DEFERRED
            if final:
                message.pending.pop(rcpt.address, None)
            else:
                rcpt.next_at = next_attempt_at(self.delivery.retry_schedule, rcpt.attempts, now, message.deadline)
            self.metrics[outcome] += 1
            self.stats.count(outcome, record.smtp_id, ip)
            self.stats.event(record.id, json.dumps({
                "ts_ms": int(now * 1000), "message_id": record.id, "user_id": record.user_id,
                "bridge_id": record.bridge_id, "rcpt": rcpt.address, "outcome": outcome,
                "smtp_id": record.smtp_id, "pool": record.pool, "ip": ip, "reply": str(reply),
                "attempt": rcpt.attempts, "final": final,
            }, separators=(",", ":")))
            entries.append({"at_ms": int(now * 1000), "rcpt": rcpt.address, "outcome": outcome,
                            "code": reply.code, "text": reply.text, "ip": ip, "mx": mx, "attempt": rcpt.attempts})
            log.info("%s to=<%s> pool=%s ip=%s relay=%s attempt=%d %s: %s",
                     record.id, rcpt.address, record.pool, ip, mx or "none", rcpt.attempts, outcome, reply)
        message.attempts.extend(entries)
        message.jobs -= 1
        if message.jobs == 0 and message.pending:
            message.payload = None  # read again when the retry is due
        await self._persist(message)
        if message.pending and not message.gone:
            self._schedule(message)

    async def _persist(self, message: _Message) -> None:
        """Make the message's state durable: remove the record when every recipient is
        final and no job is running, else rewrite it with its attempts."""
        async with message.lock:
            if message.gone:
                return
            if not message.pending and message.jobs == 0:
                await self._finish_message(message)
                return
            try:
                await self.spool.rewrite_attempts(message.id, tuple(message.attempts))
            except FileNotFoundError as exc:
                self._lost(message, exc)
            except SpoolCorrupt as exc:
                self._lost(message, exc)
            except SpoolError as exc:
                log.error("delivery: %s: cannot record its attempts in the spool (%s); a restart "
                          "may repeat them", message.id, exc)

    async def _finish_message(self, message: _Message) -> None:
        # Known (in _messages) until its file is gone, and remembered by a scan under
        # way: a spool scan never takes a finished message for a new one.
        message.gone = True
        if self._scan_removed is not None:
            self._scan_removed.add(message.id)
        try:
            await self.spool.remove(message.id)
        except OSError as exc:
            log.error("delivery: %s is final but its spool record could not be removed (%s); "
                      "a restart would deliver it again", message.id, exc)
        finally:
            self._messages.pop(message.id, None)
            if self._scan_removed is not None:
                self._scan_removed.add(message.id)

    # -- metrics -------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._messages)

    async def _metrics_loop(self) -> None:
        last: dict[str, int] = {}
        while True:
            await asyncio.sleep(METRICS_LOG_INTERVAL)
            now = dict(self.metrics) | {f"stats_{k}": v for k, v in self.stats.metrics.items()}
            if now != last:
                self._log_metrics("running")
                last = now

    def _log_metrics(self, state: str) -> None:
        stats = self.stats.metrics
        log.info("delivery %s: %d message(s) queued, %d connection(s) open; delivered %d, bounced %d, "
                 "deferred %d; connections %d (TLS %d), bind_failures %d, dns_failures %d, ip_repicks %d; "
                 "events_dropped %d",
                 state, self.queued, sum(self._per_ip.values()), self.metrics[DELIVERED], self.metrics[BOUNCED],
                 self.metrics[DEFERRED], self.metrics["connections"], self.metrics["tls_connections"],
                 self.metrics["bind_failures"], self.metrics["dns_failures"], self.metrics["ip_repicks"],
                 stats["events_dropped"])


def _literal(ip: str) -> str:
    """An IP as an EHLO address literal (RFC 5321 4.1.3), for an IP without a hostname."""
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def _without_bytes(record: SpoolRecord) -> SpoolRecord:
    return replace(record, message=b"")


def _session_failure(exc: SessionError, host: str) -> Reply:
    if exc.reply is not None:
        return local_reply(SESSION_REFUSED, host=host, reply=exc.reply)
    if exc.timeout:
        return local_reply(TIMED_OUT, when=exc.when, host=host)
    if str(exc).startswith(("malformed", "reply l")):
        return local_reply(PROTOCOL_ERROR, when=exc.when, host=host, error=exc)
    return local_reply(CONNECTION_LOST, host=host, when=exc.when, error=exc)


def _judge(job: _Job, result) -> list[tuple[_Rcpt, Reply, str]]:
    """Each recipient's reply and outcome from a finished transaction (RFC 5321:
    a refusal of MAIL or DATA applies to every recipient of the transaction, a
    refused RCPT only to its recipient)."""
    if not result.mail.positive:
        outcome = classify(result.mail, STAGE_MAIL)
        return [(r, result.mail, outcome) for r in job.rcpts]
    judged: list[tuple[_Rcpt, Reply, str]] = []
    accepted: list[_Rcpt] = []
    for rcpt, reply in zip(job.rcpts, result.rcpts, strict=True):
        if reply is None:
            continue
        if reply.positive:
            accepted.append(rcpt)
        else:
            judged.append((rcpt, reply, classify(reply, STAGE_RCPT)))
    if not accepted:
        return judged
    data = result.data
    if data is not None and data.code != 354:
        # A positive reply to DATA other than 354 is a protocol error: not a delivery.
        outcome = DEFERRED if data.positive else classify(data, STAGE_DATA)
        return judged + [(r, data, outcome) for r in accepted]
    final = result.final
    assert final is not None
    outcome = classify(final, STAGE_DATA)
    return judged + [(r, final, outcome) for r in accepted]


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception:  # closing a connection must never fail a delivery
        pass
