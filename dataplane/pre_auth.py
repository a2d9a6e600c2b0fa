"""How long the SMTP Bridge keeps a session that has not authenticated (and is not
from a Bridge's trusted network): `pre_auth_timeout` idle seconds (aiosmtpd's idle
timer, re-armed after each command, with the shorter duration), and at most
PRE_AUTH_LIFETIME of them since it connected however busy it keeps itself; then
421 4.4.2 and the connection is closed. An idle session without AUTH holds a
connection slot and a worker's memory for nothing, so it gets seconds where an
authenticated one gets aiosmtpd's `timeout`.

`PreAuthLimit` is a mixin for a `ListenerSMTP` subclass (the Bridge's), which
says when a session is past AUTH (`past_auth`). `BridgeSession` lets the timer
switch to the longer timeout the moment AUTH succeeds, not at the next command.

This relies on aiosmtpd 1.4's idle timer: `_reset_timeout(duration)`, called at
connect and before each recognised command, and the session it makes in
`_create_session`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiosmtpd.smtp import Session

# A session that keeps itself alive without AUTH (a NOOP before each idle timeout)
# still ends this many pre-AUTH timeouts after it connected: 5 min by default,
# where a client's EHLO, STARTTLS, EHLO, AUTH take well under a second.
PRE_AUTH_LIFETIME = 10

REPLY_PRE_AUTH_TIMEOUT = "421 4.4.2 {host} Too long without AUTH; closing connection (timeout)"


class BridgeSession(Session):
    """An aiosmtpd Session that calls `on_authenticated` when AUTH succeeds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_authenticated: Callable[[], None]) -> None:
        self._on_authenticated = on_authenticated
        self._authenticated: bool | None = None
        super().__init__(loop)

    @property
    def authenticated(self) -> bool | None:
        return self._authenticated

    @authenticated.setter
    def authenticated(self, value: bool | None) -> None:
        self._authenticated = value
        if value:
            self._on_authenticated()


class PreAuthLimit:
    """The pre-AUTH timeouts of a `ListenerSMTP` subclass, which provides
    `pre_auth_timeout` (seconds) and `past_auth()`."""

    pre_auth_timeout: float
    _pre_auth_deadline: float | None = None  # loop time, set at connect

    def past_auth(self) -> bool:
        """True once the session may keep the longer timeout."""
        raise NotImplementedError

    def _create_session(self) -> BridgeSession:
        return BridgeSession(self.loop, self._reset_timeout)

    def _reset_timeout(self, duration: float | None = None) -> None:
        if duration is None and not self.past_auth():
            timeout = self.pre_auth_timeout
            now = self.loop.time()
            if self._pre_auth_deadline is None:
                self._pre_auth_deadline = now + PRE_AUTH_LIFETIME * timeout
            # aiosmtpd reads a duration of 0 as "the default": never pass one.
            duration = max(1e-3, min(timeout, self._pre_auth_deadline - now))
        super()._reset_timeout(duration)

    def idle_reply(self) -> str:
        """The 421 before an idle session is closed: the pre-AUTH one until it is past AUTH."""
        return super().idle_reply() if self.past_auth() else REPLY_PRE_AUTH_TIMEOUT.format(host=self.hostname)
