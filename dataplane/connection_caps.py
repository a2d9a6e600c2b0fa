"""Connection admission for one listener of an MTA server (the SMTP Bridge, the
inbound listener): at most `per_address` open connections from one client address
and `total` in all, counted across all the server's workers. SO_REUSEPORT spreads
one address's connections over the workers, so a count per worker would let
workers x N through.

Each worker keeps its own open-connection counts and mirrors them in a Redis hash
of its own (`rediskeys.connection_counts_key`: address -> count, and the total),
which expires unless the worker refreshes it: a SIGKILLed worker's counts vanish
within CONNECTION_COUNTS_TTL_MS, and its restarted successor clears them at start.
Admission is one Lua script (the sum over the server's workers' hashes, then a
refusal or an HINCRBY on the worker's own); a release is a script sent in the
background, never holding up the close. Each refresh rewrites the hash from the
local counts, so a release lost with Redis, or admissions made without it, are
mended within one refresh.

The counts are never written to Redis's append-only file or replicas (the scripts
turn replication off, `redis.set_repl(redis.REPL_NONE)`): with `appendfsync always`
every admission and release would otherwise wait for an fsync before its reply (an
admission plus its release took 2.2-2.7 ms against the embedded Redis on the
benchmark VM, 0.6-1.0 ms without; the banner waits on the admission). Nothing is
lost by it: a Redis that restarts or fails over comes back without the hashes (or
with ones about to expire, from an AOF rewrite), and each worker's next refresh
writes its own again, as it already does after a release lost with Redis.

An IPv6 client counts by its /64: one host is usually given a whole /64 (RFC 7934),
so counting single IPv6 addresses would let it open N connections per address of
it. Clients on `exempt` networks (none by default) are never counted.

Redis unreachable (or slower than ADMIT_TIMEOUT): each worker admits within its own
share of each cap (cap / workers, rounded up), says so in the log once, and asks
Redis again after FALLBACK_RETRY.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
from collections import Counter

from redis import exceptions as redis_errors

from control.contract.rediskeys import (
    CONNECTION_COUNTS_TTL_MS,
    CONNECTIONS_TOTAL_FIELD,
    connection_counts_key,
)
from control.contract.runtime import pause, reraise_if_cancelling

from .config import worker_share
from .routing import client_key, in_networks

log = logging.getLogger("poolmta.dataplane.connections")

# Admission waits this long for Redis before it decides with the local share: a
# connection's banner must not wait on a Redis that is down.
ADMIT_TIMEOUT = 0.5
# After a Redis failure, admissions use the local shares this long before Redis is tried again.
FALLBACK_RETRY = 5.0
REFRESH_INTERVAL = CONNECTION_COUNTS_TTL_MS / 1000 / 3

# KEYS: every worker's hash of this listener; ARGV: own key's position (1-based),
# address, per-address cap, total cap, TTL ms. 0 = admitted, 1 = address over, 2 = total over.
_ADMIT = """
redis.set_repl(redis.REPL_NONE)
local own = KEYS[tonumber(ARGV[1])]
local from, total = 0, 0
for _, key in ipairs(KEYS) do
  local counts = redis.call('HMGET', key, ARGV[2], ARGV[6])
  from = from + (tonumber(counts[1]) or 0)
  total = total + (tonumber(counts[2]) or 0)
end
if from >= tonumber(ARGV[3]) then return 1 end
if total >= tonumber(ARGV[4]) then return 2 end
redis.call('HINCRBY', own, ARGV[2], 1)
redis.call('HINCRBY', own, ARGV[6], 1)
redis.call('PEXPIRE', own, ARGV[5])
return 0
"""
# KEYS[1]: own hash; ARGV: address, total field. An expired hash stays gone (the refresh rebuilds it).
_RELEASE = """
redis.set_repl(redis.REPL_NONE)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
return 1
"""
# KEYS[1]: own hash; ARGV: TTL ms, then field, count pairs.
_REPLACE = """
redis.set_repl(redis.REPL_NONE)
redis.call('DEL', KEYS[1])
if #ARGV > 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


class Admission(enum.Enum):
    """What `ConnectionCaps.admit` decided."""

    ADMITTED = 0
    ADDRESS_FULL = 1  # `per_address` connections from this address are open
    SERVER_FULL = 2  # `total` connections are open


class ConnectionCaps:
    """The caps of one listener (`listener`: "bridge" or "inbound") of one worker
    (`index` of `workers`) of MTA server `server_id`."""

    def __init__(self, redis, *, server_id: int, listener: str, index: int, workers: int,
                 per_address: int, total: int, exempt: tuple[str, ...] = ()) -> None:
        self.listener = listener
        self._exempt = tuple(ipaddress.ip_network(n, strict=False) for n in exempt)
        self.per_address = per_address
        self.total = total
        self._redis = redis
        self._keys = [connection_counts_key(server_id, listener, i) for i in range(workers)]
        self._own = index
        self._local_per_address = worker_share(per_address, workers)
        self._local_total = worker_share(total, workers)
        self._open: Counter[str] = Counter()
        self._open_total = 0
        self._admit_script = redis.register_script(_ADMIT)
        self._release_script = redis.register_script(_RELEASE)
        self._replace_script = redis.register_script(_REPLACE)
        self._redis_back_at = 0.0  # loop time before which the local shares decide
        self._background: set[asyncio.Task] = set()
        self._refresher: asyncio.Task | None = None

    async def start(self) -> None:
        """Clear what a previous worker of this index left, and keep this worker's counts alive."""
        try:
            await asyncio.wait_for(self._refresh(), ADMIT_TIMEOUT)
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            reraise_if_cancelling()
            log.warning("%s connection counts not cleared at start, Redis unreachable: %s", self.listener, exc)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stop refreshing and remove this worker's counts (best effort)."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await asyncio.wait_for(self._redis.delete(self._keys[self._own]), ADMIT_TIMEOUT)
        except (TimeoutError, redis_errors.RedisError, OSError):
            reraise_if_cancelling()

    def counted(self, peer_address: str) -> bool:
        """False for a client on an exempt network: never counted, never refused."""
        return not (self._exempt and in_networks(peer_address, self._exempt))

    async def admit(self, peer_address: str) -> Admission:
        """Count a new connection from `peer_address` in, or say which cap it is past."""
        if not self.counted(peer_address):
            return Admission.ADMITTED
        address = client_key(peer_address)
        loop = asyncio.get_running_loop()
        verdict = None
        if loop.time() >= self._redis_back_at:
            try:
                found = await asyncio.wait_for(self._admit_script(
                    keys=self._keys,
                    args=[self._own + 1, address, self.per_address, self.total, CONNECTION_COUNTS_TTL_MS,
                          CONNECTIONS_TOTAL_FIELD]), ADMIT_TIMEOUT)
                verdict = Admission(int(found))
                if self._redis_back_at:
                    log.info("%s connection caps counted across workers again (Redis reachable)", self.listener)
                    self._redis_back_at = 0.0
            except (TimeoutError, redis_errors.RedisError, OSError) as exc:
                reraise_if_cancelling()
                if not self._redis_back_at:
                    log.warning("%s connection caps: Redis unreachable (%s); each worker admits its share "
                                "(%d per address, %d in all) until it is back", self.listener,
                                type(exc).__name__, self._local_per_address, self._local_total)
                self._redis_back_at = loop.time() + FALLBACK_RETRY
        if verdict is None:
            verdict = self._local_verdict(address)
        if verdict is Admission.ADMITTED:
            self._open[address] += 1
            self._open_total += 1
        return verdict

    def release(self, peer_address: str) -> None:
        """Count a connection admitted from `peer_address` out (its Redis count in the background)."""
        if not self.counted(peer_address):
            return
        address = client_key(peer_address)
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
        self._open_total -= 1
        task = asyncio.get_running_loop().create_task(self._release(address))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _local_verdict(self, address: str) -> Admission:
        if self._open[address] >= self._local_per_address:
            return Admission.ADDRESS_FULL
        if self._open_total >= self._local_total:
            return Admission.SERVER_FULL
        return Admission.ADMITTED

    async def _release(self, address: str) -> None:
        try:
            await self._release_script(keys=[self._keys[self._own]], args=[address, CONNECTIONS_TOTAL_FIELD])
        except (redis_errors.RedisError, OSError):
            reraise_if_cancelling()  # the next refresh mends the count

    async def _refresh(self) -> None:
        pairs: list[object] = []
        for address, count in self._open.items():
            pairs += [address, count]
        if self._open_total:
            pairs += [CONNECTIONS_TOTAL_FIELD, self._open_total]
        await self._replace_script(keys=[self._keys[self._own]], args=[CONNECTION_COUNTS_TTL_MS, *pairs])

    async def _refresh_forever(self) -> None:
        while True:
            await pause(REFRESH_INTERVAL)
            try:
                await self._refresh()
            except (redis_errors.RedisError, OSError) as exc:
                reraise_if_cancelling()
                log.debug("%s connection counts not refreshed: %s", self.listener, exc)
