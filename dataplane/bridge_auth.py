"""SMTP AUTH of Bridges: credential checks against the snapshot, and throttling of
failed attempts per client, shared by every worker of the MTA server.

Throttling (`SharedAuthThrottle`)
---------------------------------
Counted: AUTH attempts whose credentials were checked and found wrong; not one that
aiosmtpd answered itself with a 501 (malformed, or abandoned with `*` as RFC 4954
section 4 allows), which reveals nothing about any secret. Per client (`client_key`):
an IPv4 address; an IPv6 /64, because whoever has one address of a /64 has all 2**64
of them (a /64 is one subnet, RFC 4291 section 2.5.4, and the least a site is given,
RFC 6177), so counting per IPv6 address would be no limit; an IPv4-mapped IPv6 address
(`::ffff:192.0.2.1`) as its IPv4 address.

Shared: one Redis sorted set per (MTA server, client) (`rediskeys.auth_failures_key`),
one member per failure scored by its time, and one Lua script per AUTH attempt
(`_ATTEMPT`): drop the failures older than the window and count the rest; at the limit,
record nothing and answer "blocked"; else record this attempt if it failed. A sliding
window rather than fixed buckets, because a fixed bucket lets almost twice the limit
through around a bucket boundary. The set is trimmed to `block_after` members and
expires one window after its last failure: its size is bounded by the limit, and
Redis keeps only the clients that failed within the last window.

The answer (`Verdict`) follows the shared count: below `delay_after` failures 535 at
once; from there, 535 after a delay doubling from `base_delay` up to `max_delay`; the
`block_after`-th failure, and any AUTH while the client stays at the limit, 421 and
the connection is closed.

Order: the credentials are checked in memory (one SHA-256) before the script runs, and
the script decides "blocked" and records the failure in one atomic step; a blocked
client gets 421 whether its credentials were right or wrong. However many connections
a client opens at once, on whichever workers, it learns the outcome of at most
`block_after` wrong guesses per window (a check before the exchange and a record after
it would let a burst of concurrent attempts all pass the check), and each attempt costs
one round trip, whatever its outcome.

A successful AUTH records nothing and clears nothing: the client's failures age out
with the window. Clearing them would let anyone holding one valid Bridge secret (any
tenant) reset its count between guesses at other Bridges, and a client sharing an
attacker's NAT address or /64 reset the attacker's count.

Proven credentials (`ProvenCredentials`, the REST Bridge)
-------------------------------------------------------
SMTP authenticates once per connection; the REST Bridge authenticates every request,
and the throttle's round trip to Redis was most of what a request cost beyond the
message itself. So a worker remembers, for `PROVEN_FOR` seconds, that a client
(`client_key`) passed the throttle with a Bridge's credentials, keyed by (client,
username, the secret hash they verified against). The credentials are still checked
against the current snapshot on every request (one SHA-256, in memory): a revoked
Bridge, or a rotated secret, fails at the first snapshot without it, goes through the
throttle like any failure, and never reaches what was remembered; a Bridge moved to
another pool is routed by the current snapshot. Only a request whose credentials are
right, from a client that proved those very credentials within `PROVEN_FOR` seconds,
skips the round trip: a blocked client learns nothing from it that it did not know
(it cannot test a guess that way), and every failed attempt is counted as before, for
every worker. At most `PROVEN_MAX` entries per worker, the least recently used go first.

Redis unreachable (or slower than `REDIS_TIMEOUT`): the worker counts in its own
memory (`AuthThrottle`: the same rules, per worker, at most `max_tracked_addresses`
clients), says so once in its log, tries Redis again `REDIS_RETRY_AFTER` later (what it
counted meanwhile is not carried over to Redis), and logs once when Redis answers again.
The AUTH path never raises because of the throttle.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from redis import exceptions as redis_errors

from control.contract import rediskeys
from control.contract.runtime import reraise_if_cancelling
from control.contract.secrets import hash_secret, verify_secret
from control.contract.snapshot import BridgeRoute

from .config import AuthThrottleConfig
from .routing import Routing, client_key

log = logging.getLogger("poolmta.dataplane.auth")

# Checked when the username is unknown, so a miss costs what a wrong secret costs
# and response times do not tell which usernames exist.
_DUMMY_HASH = hash_secret("poolmta: no such bridge")


@dataclass(frozen=True, slots=True)
class BridgeIdentity:
    """What an authenticated session is bound to. The session keeps working only
    while the current snapshot still has this Bridge with this secret hash."""

    bridge_id: int
    username: str
    secret_hash: str


# How long a worker lets a client's proven credentials skip the throttle's round trip,
# and how many (client, Bridge, secret hash) it remembers (see "Proven credentials").
PROVEN_FOR = 30.0
PROVEN_MAX = 4096


class ProvenCredentials:
    """Which clients passed the throttle with which Bridge credentials, in this worker's
    memory, for `ttl` seconds each, at most `capacity` of them (see "Proven credentials")."""

    def __init__(self, ttl: float = PROVEN_FOR, capacity: int = PROVEN_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._until: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def proven(self, client: str, bridge: BridgeRoute) -> bool:
        """True when `client` (a `client_key`) passed the throttle with `bridge`'s username
        and current secret hash less than `ttl` seconds ago."""
        key = (client, bridge.username, bridge.secret_hash)
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[key]
            return False
        self._until.move_to_end(key)
        return True

    def remember(self, client: str, bridge: BridgeRoute) -> None:
        """Note that `client` just passed the throttle with `bridge`'s credentials."""
        self._until[(client, bridge.username, bridge.secret_hash)] = self._clock() + self._ttl
        self._until.move_to_end((client, bridge.username, bridge.secret_hash))
        while len(self._until) > self._capacity:
            self._until.popitem(last=False)


def check_credentials(routing: Routing | None, login: bytes, password: bytes) -> BridgeRoute | None:
    """The Bridge these AUTH credentials belong to, or None.

    The secret is compared in constant time (control.contract.secrets.verify_secret), and
    an unknown username is compared against a dummy hash.
    """
    try:
        username = login.decode("utf-8")
        secret = password.decode("utf-8")
    except UnicodeDecodeError:
        return None
    bridge = routing.bridges_by_username.get(username) if routing is not None else None
    ok = verify_secret(secret, bridge.secret_hash if bridge is not None else _DUMMY_HASH)
    return bridge if ok and bridge is not None else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """How to answer one AUTH attempt: wait `delay` seconds, then the mechanism's own
    answer (235 or 535); or, if `block`, answer 421 and close the connection."""

    delay: float = 0.0
    block: bool = False


# Past this many doublings any delay is at max_delay (and 2**steps stays a float).
_MAX_DOUBLINGS = 60


def verdict_for(config: AuthThrottleConfig, count: int, failed: bool) -> Verdict:
    """The answer to an attempt after which the client has `count` failures in the
    window (this one included when it `failed`): blocked at `block_after`; a failure
    from `delay_after` on is delayed, doubling from `base_delay` up to `max_delay`."""
    if count >= config.block_after:
        return Verdict(block=True)
    if failed and count >= config.delay_after:
        steps = min(count - config.delay_after, _MAX_DOUBLINGS)
        return Verdict(delay=min(config.base_delay * (2**steps), config.max_delay))
    return Verdict()


class AuthThrottle:
    """Failed AUTH attempts per client, in a sliding window, in this worker's memory:
    `SharedAuthThrottle`'s fallback while Redis does not answer.

    Memory is bounded: at most `max_tracked_addresses` clients are remembered, the
    least recently failing are forgotten first.
    """

    def __init__(self, config: AuthThrottleConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        horizon = now - self._config.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures

    @property
    def tracked(self) -> int:
        """How many clients have failures remembered."""
        return len(self._failures)

    def attempt(self, client: str, failed: bool) -> Verdict:
        """Count an AUTH attempt of `client` (a `client_key`) and say how to answer it;
        a failure is recorded unless the client is already at the limit."""
        config = self._config
        now = self._clock()
        failures = self._recent(client, now)
        count = len(failures) if failures is not None else 0
        if count >= config.block_after or not failed:
            return verdict_for(config, count, failed=False)
        if failures is None:
            failures = self._failures[client] = deque(maxlen=config.block_after)
            while len(self._failures) > config.max_tracked_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(client)
        failures.append(now)
        return verdict_for(config, count + 1, failed=True)


# KEYS[1] the client's failures (rediskeys.auth_failures_key); ARGV: now (unix ms),
# window (ms), limit (block_after), "1" when this attempt failed, a unique member.
# Returns the client's failures in the window, this one included when it was
# recorded; at the limit nothing is recorded (so a blocked client cannot grow the set).
_ATTEMPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit or ARGV[4] ~= '1' then
  return count
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(limit + 1))
redis.call('PEXPIRE', KEYS[1], window)
return count + 1
"""

# Longest wait for the throttle's Redis round trip before this worker counts on its
# own: a client waits for the AUTH reply, and a stuck Redis must not hold it long.
REDIS_TIMEOUT = 1.0
# Round trips in flight at once per worker: a burst of AUTHs waits its turn (within
# REDIS_TIMEOUT) rather than take every connection of the worker's Redis pool, which
# the stats, snapshot and suppression lookups share (redis-py refuses past 100); an
# attempt still waiting at the timeout is counted in memory, Redis is not deemed down.
MAX_ROUND_TRIPS_IN_FLIGHT = 8
# After a failed round trip, attempts are counted in memory this long before Redis
# is tried again, so an outage does not add a timeout to every AUTH.
REDIS_RETRY_AFTER = 2.0

_REDIS_FAILURES = (redis_errors.RedisError, OSError, TimeoutError, TypeError, ValueError)


class SharedAuthThrottle:
    """Failed AUTH attempts per client, counted in Redis for every worker of MTA server
    `server_id` (see the module docstring), with `AuthThrottle` in memory as the fallback."""

    def __init__(self, redis, server_id: int, config: AuthThrottleConfig, *, clock: Callable[[], float] = time.time,
                 timeout: float = REDIS_TIMEOUT, retry_after: float = REDIS_RETRY_AFTER) -> None:
        self._server_id = server_id
        self._config = config
        self._clock = clock
        self.timeout = timeout
        self.retry_after = retry_after
        self._script = redis.register_script(_ATTEMPT)
        self._window_ms = max(1, round(config.window * 1000))
        self._members = (f"{secrets.token_hex(6)}:{n}" for n in itertools.count())
        self.local = AuthThrottle(config)
        self._in_flight = asyncio.Semaphore(MAX_ROUND_TRIPS_IN_FLIGHT)
        self._redis_retry_at = 0.0  # time.monotonic() before which Redis is not tried
        self.shared = True  # False while counting in memory

    async def attempt(self, peer_address: str, failed: bool) -> Verdict:
        """Count an AUTH attempt from `peer_address` (a failure unless the client is
        already at the limit) and say how to answer it: blocked when the client is at
        the limit, whether or not this attempt `failed`. Never raises for Redis."""
        client = client_key(peer_address)
        if time.monotonic() >= self._redis_retry_at:
            queued = True
            try:
                async with asyncio.timeout(self.timeout), self._in_flight:
                    queued = False
                    count = int(await self._script(
                        keys=[rediskeys.auth_failures_key(self._server_id, client)],
                        args=[int(self._clock() * 1000), self._window_ms, self._config.block_after,
                              "1" if failed else "0", next(self._members)],
                    ))
            except _REDIS_FAILURES as exc:
                reraise_if_cancelling()
                if queued:  # a burst longer than the timeout, not an outage: this attempt alone
                    return self.local.attempt(client, failed)
                self._redis_retry_at = time.monotonic() + self.retry_after
                if self.shared:
                    self.shared = False
                    log.warning("AUTH throttle: Redis did not answer (%s); counting failed AUTHs in this "
                                "worker only until it does", str(exc)[:200] or type(exc).__name__)
            else:
                if not self.shared:
                    self.shared = True
                    log.info("AUTH throttle: Redis answers again; failed AUTHs are counted for every worker")
                return verdict_for(self._config, count, failed)
        return self.local.attempt(client, failed)
