"""The delivery queue of one worker: the messages and recipients it owns, when
each recipient is due, and when a message's time is up.

Ownership: of K workers, worker i delivers the records `spool.owner_of(id, K)
== i`. It gets the ones it accepts handed over in memory (`submit`), finds the
rest in its spool journal at start (a restarted worker recovers its set this
way) and every `rescan_interval` as a safety net. No record has two live owners.

Per message: the recipients are grouped by domain; each group (at most
`MAX_RCPTS_PER_TRANSACTION` recipients) is a job, handed to egress when due.
A message sent with VERP return paths (every message but those from the null
sender, `return_path`) has a return path per recipient, so each of its
recipients is a job of its own: one transaction each, on the connection its
destination's jobs share. A record's recorded attempts say which recipients are
final already and when the others are due again; a record read back owing DSNs
(`notices`) is settled at once.

Bytes: a message keeps what goes after DATA in memory only while the worker's
payload budget has room (`payload_budget`); the others are read back from the
spool when a transaction of theirs starts (`load_payload`).

Retry schedule and expiry: a deferred recipient is retried after the schedule's
delay for its number of attempts (the last delay repeats), but never after the
end of the queue lifetime (`received + queue_lifetime`, the message's
`deadline`): the last try is at it, and a deferral then is final (outcomes
bounces it).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from control.contract.runtime import pause

from ..config import DeliveryConfig, normalize_domain
from ..destinations import Destination
from ..return_path import uses_verp
from ..smtp_client import data_payload
from ..smtp_reply import BOUNCED, DELIVERED
from ..spool import Spool, SpoolCorrupt, SpoolRecord, owes_dsn, owner_of
from .payload_budget import PayloadBudget

log = logging.getLogger("poolmta.dataplane.delivery")

# Records read per trip to the spool's threads when scanning.
SCAN_BATCH = 64
# Recipients per transaction: the number every server must accept (RFC 5321 4.5.3.1.8).
MAX_RCPTS_PER_TRANSACTION = 100


def retry_delay(schedule: tuple[float, ...], attempts: int) -> float:
    """Seconds to wait after the `attempts`-th deferral (1-based); the last entry repeats."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def next_attempt_at(schedule: tuple[float, ...], attempts: int, last_at: float, deadline: float) -> float:
    """When to retry after the `attempts`-th deferral at `last_at`: the schedule's
    delay, but never after the end of the queue lifetime (the last try is at it)."""
    return min(last_at + retry_delay(schedule, attempts), deadline)


# Slots: a worker tracks every message of its backlog, tens of thousands of them
# while a destination is down; nothing needs their __dict__.
@dataclass(slots=True)
class Recipient:
    """One recipient of a queued message that is not final yet."""

    address: str
    domain: str
    index: int  # its position in the envelope (`rcpt_tos`): what a VERP return path names
    attempts: int = 0
    next_at: float = 0.0  # when it is due (Unix time)
    busy: bool = False  # in a job right now


@dataclass(slots=True)
class QueuedMessage:
    """A queued message as the engine tracks it (the bytes only while jobs need them
    and the payload budget has room: set and dropped by `PayloadBudget` alone)."""

    record: SpoolRecord  # metadata; `message` may be b"" (read from disk when due)
    pending: dict[str, Recipient]  # by address: the recipients not final yet
    deadline: float  # the end of the queue lifetime (Unix time)
    ip: str  # source IP of the next attempt (the record's, until egress re-picks)
    helo: str
    attempts: list[dict] = field(default_factory=list)  # the spool record's attempt entries
    persisted: int = 0  # how many of them the record in the spool holds
    payload: bytes | None = None  # what goes after DATA, while jobs need it
    jobs: int = 0  # jobs started and not finished
    heap_due: float | None = None  # its entry in the scheduler heap
    _lock: asyncio.Lock | None = None  # made on first use: most messages never wait for one
    gone: bool = False  # removed from the spool, or lost: nothing more to do
    held: bool = False  # held by the operator (queue control): no job starts until released

    @property
    def id(self) -> str:
        """The message id (the spool record's)."""
        return self.record.id

    @property
    def lock(self) -> asyncio.Lock:
        """The lock that makes the message's spool updates one at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def expired(self, now: float) -> bool:
        """True when the queue lifetime has ended: a deferral now is final."""
        return now >= self.deadline


@dataclass(slots=True)
class DeliveryJob:
    """Recipients of one message at one domain, delivered in one transaction. The
    queue fills in what to deliver; egress adds where from and where to."""

    message: QueuedMessage
    domain: str
    rcpts: list[Recipient]
    ip: str = ""  # source IP
    helo: str = ""  # its HELO name
    destination: Destination | None = None
    sender: str = ""  # the return path (MAIL FROM) of its transaction


class DeliveryQueue:
    """The messages this worker owns, and a scheduler that starts each recipient's
    job when it is due (see the module docstring).

    `start_job` receives each job as it becomes due; `settle` receives a message
    whose recipients were all final before it was submitted (a crash came between
    the last outcome and the record's removal), or that owes its sender a DSN.
    Both must return at once.
    """

    def __init__(self, delivery: DeliveryConfig, spool: Spool, *, owners: int, index: int,
                 start_job: Callable[[DeliveryJob], None], settle: Callable[[QueuedMessage], None]) -> None:
        self.delivery = delivery
        self.spool = spool
        self.owners = owners
        self.index = index
        self._start_job = start_job
        self._settle = settle
        self._messages: dict[str, QueuedMessage] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._scan_removed: set[str] | None = None
        self.payloads = PayloadBudget(delivery.payload_memory)

    def __len__(self) -> int:
        return len(self._messages)

    def oldest_received(self) -> float | None:
        """When the oldest tracked message was accepted (unix seconds); None when none
        is tracked. A pass over the messages: for a periodic sample, not per message."""
        if not self._messages:
            return None
        return min(message.record.received_ms for message in self._messages.values()) / 1000

    # -- intake ---------------------------------------------------------------

    def submit(self, record: SpoolRecord, now: float) -> None:
        """Track an owned record (once; a known id is ignored) and schedule its recipients."""
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
        pending: dict[str, Recipient] = {}
        for index, address in enumerate(record.rcpt_tos):
            if address in final or address in pending:
                continue
            # Interned: the recipients of a backlog share a few domains, one string each.
            domain = sys.intern(normalize_domain(address.rpartition("@")[2]))
            state = Recipient(address, domain, index, attempts[address])
            state.next_at = (next_attempt_at(self.delivery.retry_schedule, state.attempts, last[address], deadline)
                             if state.attempts else now)
            pending[address] = state
        content = record.message
        if content:
            record = without_bytes(record)
        message = QueuedMessage(record=record, pending=pending, deadline=deadline, ip=record.ip,
                                helo=record.ip_hostname, attempts=list(record.attempts),
                                persisted=len(record.attempts), held=record.held)
        # data_payload only adds bytes: a message too big for the room left is not worth
        # converting.
        if content and self.payloads.has_room(len(content)):
            self.payloads.keep(message, data_payload(content))
        self._messages[record.id] = message
        if not pending or owes_dsn(record.attempts):
            # Every recipient final before a crash (only the removal was missing), or
            # bounces whose DSN was not spooled yet: settle that first.
            self._settle(message)
        self.schedule(message)

    async def scan(self) -> int:
        """Submit every owned record in the spool not known yet; how many were new."""
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
                    self.submit(without_bytes(record), now=time.time())
                    found += 1
        except OSError as exc:
            log.error("delivery: cannot scan the spool: %s", exc)
        finally:
            self._scan_removed = None
        return found

    async def rescan_forever(self) -> None:
        """Scan the spool every `rescan_interval`, for records acceptance did not hand over."""
        while True:
            await pause(self.delivery.rescan_interval)
            found = await self.scan()
            if found:
                log.warning("delivery: the spool scan found %d owned message(s) not handed over at acceptance", found)

    async def load_payload(self, message: QueuedMessage) -> bytes:
        """What goes after DATA for a transaction of the message about to start: the
        bytes it keeps, else read back from the spool (and kept if the payload budget
        has room). Raises FileNotFoundError or SpoolCorrupt when the record is lost."""
        payload = message.payload
        if payload is None:
            record = await self.spool.read(message.id)
            if message.payload is not None:  # another job read it meanwhile
                return message.payload
            payload = data_payload(record.message)
            self.payloads.keep(message, payload)
        return payload

    def release_payload(self, message: QueuedMessage) -> None:
        """No job of the message needs its bytes now: drop them (read again when due)."""
        self.payloads.release(message)

    @property
    def payload_bytes(self) -> int:
        """Bytes of payload the queued messages keep in memory now (within the budget)."""
        return self.payloads.held

    # -- leaving the queue ------------------------------------------------------

    # A finished message stays known (in `_messages`) until its file is gone, and
    # is remembered by a scan under way: a scan never takes it for a new one.

    def removing(self, message: QueuedMessage) -> None:
        """The message is final and its record is about to be removed."""
        message.gone = True
        self._note_removed(message.id)

    def removed(self, message: QueuedMessage) -> None:
        """The removal of the message's record is over (done or failed): stop tracking it."""
        self._messages.pop(message.id, None)
        self.payloads.release(message)
        self._note_removed(message.id)

    def forget(self, message: QueuedMessage) -> None:
        """Stop tracking a message whose record is lost (gone, or damaged)."""
        message.gone = True
        self._messages.pop(message.id, None)
        self.payloads.release(message)

    def _note_removed(self, message_id: str) -> None:
        if self._scan_removed is not None:
            self._scan_removed.add(message_id)

    # -- scheduling -------------------------------------------------------------

    def schedule(self, message: QueuedMessage) -> None:
        """Put the message in the scheduler heap for its earliest waiting recipient."""
        waiting = [r.next_at for r in message.pending.values() if not r.busy]
        if not waiting or message.gone or message.held:
            return
        due = min(waiting)
        if message.heap_due is None or due < message.heap_due:
            message.heap_due = due
            heapq.heappush(self._heap, (due, next(self._seq), message.id))
            if self._heap[0][2] == message.id:
                self._wakeup.set()

    async def run_scheduler(self) -> None:
        """Start the jobs of every message as its recipients come due, forever."""
        while True:
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                due, _, message_id = heapq.heappop(self._heap)
                message = self._messages.get(message_id)
                if message is None or message.heap_due != due:
                    continue  # a stale entry
                message.heap_due = None
                if message.held:
                    continue  # released later: `schedule` puts it back
                self._start_due(message, now)
            self._wakeup.clear()
            timeout = self._heap[0][0] - time.time() if self._heap else None
            if timeout is None or timeout > 0:
                try:
                    async with asyncio.timeout(timeout):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass

    def messages(self) -> list[QueuedMessage]:
        """The messages tracked now (final ones being removed excluded), for queue control."""
        return [m for m in self._messages.values() if not m.gone]

    def reschedule(self, message: QueuedMessage, due: float) -> None:
        """Make every waiting recipient not in a job due at `due` (retry now, release)."""
        for rcpt in message.pending.values():
            if not rcpt.busy:
                rcpt.next_at = due
        message.heap_due = None  # older heap entries become stale
        self.schedule(message)

    def _start_due(self, message: QueuedMessage, now: float) -> None:
        groups: dict[str, list[Recipient]] = {}
        for rcpt in message.pending.values():
            if not rcpt.busy and rcpt.next_at <= now:
                groups.setdefault(rcpt.domain, []).append(rcpt)
        per_job = 1 if uses_verp(message.record) else MAX_RCPTS_PER_TRANSACTION
        for domain, rcpts in groups.items():
            for rcpt in rcpts:
                rcpt.busy = True
            for start in range(0, len(rcpts), per_job):
                message.jobs += 1
                self._start_job(DeliveryJob(message, domain, rcpts[start:start + per_job]))
        self.schedule(message)  # recipients not due yet


def without_bytes(record: SpoolRecord) -> SpoolRecord:
    """The record without its message bytes (kept only while a job needs them)."""
    # Interned: acceptance makes these strings anew for each message (a slice of the
    # pool's IP list, the client's HELO as sent), though a backlog holds a handful of
    # distinct ones.
    return replace(record, message=b"", ip=sys.intern(record.ip), ip_hostname=sys.intern(record.ip_hostname),
                   client_address=sys.intern(record.client_address), client_helo=sys.intern(record.client_helo))
