"""The payload budget of one worker's delivery queue: how many bytes of message
content (what goes after DATA) it keeps in memory ahead of their transactions.

The spool on disk is the queue; memory holds what is about to be sent. A message
handed over at acceptance keeps its bytes while the budget has room, so a worker
that keeps up never reads the spool back; past the budget only its metadata is
kept, and its bytes are read from the spool when one of its transactions starts
(as every message's are after a restart). Bytes read back are kept too while
there is room (the other recipients of a VERP message share them), else they
live for their one transaction: what is in memory beyond the budget is bounded
by the open connections, never by the backlog.

Bytes leave the budget as soon as no job needs them: the last job of a round
ended with recipients left to retry, or the message left the queue. Every
payload a queued message holds goes through `keep` and `release`, so `held` is
exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .queue import QueuedMessage


class PayloadBudget:
    """Bytes of payload kept on queued messages (`held`), at most `limit`."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the payload budget must be 0 or more bytes, got {limit}")
        self.limit = limit
        self.held = 0

    def has_room(self, size: int) -> bool:
        """True when `size` more bytes would stay within the budget."""
        return self.held + size <= self.limit

    def keep(self, message: QueuedMessage, payload: bytes) -> bool:
        """Keep `payload` on `message` if the budget has room for it; True when the
        message holds its bytes now (kept before, or now). A message that left the
        queue keeps nothing: no release would ever come for it."""
        if message.payload is not None:
            return True
        if message.gone or not self.has_room(len(payload)):
            return False
        message.payload = payload
        self.held += len(payload)
        return True

    def release(self, message: QueuedMessage) -> None:
        """Drop the bytes `message` holds (if any) and give their room back."""
        payload = message.payload
        if payload is None:
            return
        message.payload = None
        self.held -= len(payload)
        assert self.held >= 0, "payload budget released more than it kept"
