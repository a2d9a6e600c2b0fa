"""Replies to a client that pipelines (RFC 2920) go out in one write: `PipelinedReplies`,
a mixin of `dataplane.smtp_wire.WireSMTP`, so both SMTP listeners and the sink have it.

A reply is held while the client's next command line is already buffered (it is about
to be answered without waiting on the client), and the held replies are sent with the
first reply given when no whole line is waiting, or before the reader waits for the
client in any case (a buffered line may get no reply of its own, like the rest of an
overlong line being dropped): the server never waits for input with a reply unsent
(RFC 2920 section 3.1). Never held: 354, 334, 220, 221 and 421
(the client must see them before it may go on, or the connection ends) and any reply
within DATA (a message's 250 goes out as soon as it is spooled).

This replaces aiosmtpd 1.4's `push` (its encoding, write, DEBUG line and drain).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

CRLF = b"\r\n"
ALWAYS_SENT = (b"354", b"334", b"220", b"221", b"421")
# aiosmtpd's own logger: each reply is logged there at DEBUG, as aiosmtpd's push did.
_wire_log = logging.getLogger("mail.log")


class PipelinedReplies:
    """Mixin for an aiosmtpd SMTP protocol class (before it in the bases) whose
    `line_reader` has `holds_command_line()` (`smtp_wire.CommandLineReader`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._held_replies: list[bytes] = []
        self._in_data = False

    @contextlib.contextmanager
    def replies_in_data(self) -> Iterator[None]:
        """Within it (a DATA command), every reply is sent at once."""
        self._in_data = True
        try:
            yield
        finally:
            self._in_data = False

    async def push(self, status: str | bytes) -> None:
        """Send `status` (str: encoded as aiosmtpd does), or hold it for the next write
        while the client's next command is already buffered (see the module docstring)."""
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        self._held_replies.append(status + CRLF)
        if _wire_log.isEnabledFor(logging.DEBUG):
            peer = self.session.peer if self.session is not None else None
            _wire_log.debug("%r << %r", peer, status)
        if self._in_data or status.startswith(ALWAYS_SENT) or not self.line_reader.holds_command_line():
            self.send_held_replies()
            await self._writer.drain()

    def send_held_replies(self) -> None:
        """Write every reply held back, in order (nothing when none is): called before
        the reader waits for the client, so a buffered line that is answered by no reply
        of its own (the rest of an overlong line, dropped) never leaves one waiting."""
        if self._held_replies and getattr(self, "_writer", None) is not None:
            replies = b"".join(self._held_replies)
            self._held_replies.clear()
            self._writer.write(replies)
