"""SMTP AUTH of Bridges: credential checks against the snapshot, and throttling
of failed attempts per client address."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from control.contract.secrets import hash_secret, verify_secret
from control.contract.snapshot import BridgeRoute

from .config import AuthThrottleConfig
from .routing import Routing

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
    """What to do with one failed AUTH: wait `delay` seconds, then 535; or, if
    `block`, answer 421 and close the connection."""

    delay: float = 0.0
    block: bool = False


class AuthThrottle:
    """Failed AUTH attempts per client address, in a sliding window (one per worker).

    Memory is bounded: at most `max_tracked_addresses` addresses are remembered,
    the least recently failing are forgotten first.
    """

    def __init__(self, config: AuthThrottleConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = now - self._config.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def blocked(self, address: str) -> bool:
        """True while `address` is over the failure limit: AUTH is refused with 421."""
        failures = self._recent(address, self._clock())
        return failures is not None and len(failures) >= self._config.block_after

    def record_failure(self, address: str) -> Verdict:
        """Count a failed AUTH from `address` and say how to answer it."""
        config = self._config
        now = self._clock()
        failures = self._recent(address, now)
        if failures is None:
            failures = self._failures[address] = deque(maxlen=config.block_after)
            while len(self._failures) > config.max_tracked_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        failures.append(now)
        count = len(failures)
        if count >= config.block_after:
            return Verdict(block=True)
        if count >= config.delay_after:
            steps = count - config.delay_after
            return Verdict(delay=min(config.base_delay * (2**steps), config.max_delay))
        return Verdict()
