"""The per-account suppression list as the control plane serves it: one page of
it, one entry, adding an address by hand, lifting a suppression.

The list is the Redis hash `rediskeys.suppression_key(user_id)` that the data
plane reads at every RCPT and adds bounced recipients to (the format is
`control.contract.suppression`). It lives in Redis rather than SQLite because
the data plane writes it at line rate, in its batched flushes, and reads it once
per RCPT without asking the control plane; the embedded Redis runs with
`appendfsync always`, so an entry that was written survives a Redis crash.

Paging walks the hash with HSCAN. A page token carries the cursor the page's
scan started from, the COUNT it used, the cursor that scan returned and the
last address already given out of that scan's batch; the next page repeats the
scan and gives out the addresses after that one, in address order. If the
repeated scan returns another cursor, the hash changed in between: the whole
batch is given out again (duplicates, never gaps). So every entry present for
the whole listing is returned at least once, and exactly once when nothing is
added or removed meanwhile; a page holds at most `page_size` entries, and may
hold fewer only when the scans it may make (`MAX_SCANS_PER_PAGE`) met too few
entries; only an empty next token ends the list.

Every function takes the authenticated Account: one account never sees another's
list. Nothing here imports grpc; errors are DomainErrors.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .contract import rediskeys
from .contract.runtime import reraise_if_cancelling
from .contract.suppression import (
    MAX_DETAIL,
    REASON_MANUAL,
    SOURCE_API,
    AddressError,
    SuppressionEntry,
    SuppressionEntryError,
    normalize_address,
)
from .errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from .models import Account

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Scans one page may make to fill itself, before it answers with fewer entries
# (maybe none: a stretch of the hash that holds nothing new) and a token to go on.
MAX_SCANS_PER_PAGE = 16
_TOKEN_VERSION = "s1"

log = logging.getLogger("poolmta.control.suppressions")


@dataclass(frozen=True)
class Suppression:
    """One suppressed address (normalised) and why."""

    address: str
    entry: SuppressionEntry


@dataclass(frozen=True)
class Page:
    """One page of a list: its entries and the token of the next page ("" after the last)."""

    suppressions: list[Suppression]
    next_page_token: str


@dataclass(frozen=True)
class _Position:
    cursor: int  # where this page's scan starts
    count: int  # the COUNT every scan of this listing uses
    seen_next: int | None  # the cursor that scan returned before (None: not scanned yet)
    after: str  # the last address already given out of that scan's batch ("" none)


class SuppressionList:
    """The accounts' suppression lists in Redis."""

    def __init__(self, redis: aioredis.Redis):
        self._redis = redis

    async def page(self, account: Account, page_size: int, page_token: str) -> Page:
        """One page of the account's list (see the module docstring); `page_size` 0 means
        DEFAULT_PAGE_SIZE. InvalidArgument for a size outside 0-MAX_PAGE_SIZE or a token
        this service did not give out."""
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be 1 to {MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE}), "
                                  f"got {page_size}")
        size = page_size or DEFAULT_PAGE_SIZE
        at = _decode_token(page_token) if page_token else _Position(0, size, None, "")
        key = rediskeys.suppression_key(account.user_id)
        found: list[Suppression] = []
        with _redis_errors("the list could not be read"):
            for _ in range(MAX_SCANS_PER_PAGE):
                next_cursor, batch = await self._redis.hscan(key, cursor=at.cursor, count=at.count)
                after = at.after if at.seen_next in (None, next_cursor) else ""  # changed: give it all again
                fields = sorted(f for f in map(_text, batch) if f > after)
                room = size - len(found)
                if len(fields) > room:
                    taken = fields[:room]
                    found += _entries(taken, batch)
                    return Page(found, _encode_token(_Position(at.cursor, at.count, next_cursor, taken[-1])))
                found += _entries(fields, batch)
                if next_cursor == 0:
                    return Page(found, "")
                at = _Position(next_cursor, at.count, None, "")
                if len(found) == size:
                    break
        return Page(found, _encode_token(at))

    async def get(self, account: Account, address: str) -> Suppression:
        """The entry for `address`; NotFound when the account has not suppressed it."""
        field = _normalized(address)
        with _redis_errors("the list could not be read"):
            raw = await self._redis.hget(rediskeys.suppression_key(account.user_id), field)
        if raw is None:
            raise NotFound(f"{field} is not on this account's suppression list")
        return Suppression(field, _decoded(raw))

    async def add(self, account: Account, address: str, note: str) -> Suppression:
        """Suppress `address` by hand (reason manual, `note` kept as the detail); AlreadyExists,
        naming the entry that stays, when it is suppressed already."""
        field = _normalized(address)
        note = note.strip()
        if len(note) > MAX_DETAIL or any(not c.isprintable() for c in note):
            raise InvalidArgument(f"the note must be at most {MAX_DETAIL} printable characters (no line breaks)")
        entry = SuppressionEntry(reason=REASON_MANUAL, at_ms=int(time.time() * 1000), source=SOURCE_API,
                                 detail=note)
        key = rediskeys.suppression_key(account.user_id)
        with _redis_errors("nothing was changed"):
            added = await self._redis.hsetnx(key, field, entry.encode())
            existing = None if added else await self._redis.hget(key, field)
        if not added and existing is not None:
            old = _decoded(existing)
            raise AlreadyExists(f"{field} is already suppressed ({old.reason or 'unknown reason'} since "
                                f"{old.since}); remove it first to replace its entry")
        return Suppression(field, entry)

    async def remove(self, account: Account, address: str) -> None:
        """Lift the suppression of `address`; NotFound when it is not suppressed."""
        field = _normalized(address)
        with _redis_errors("nothing was changed"):
            removed = await self._redis.hdel(rediskeys.suppression_key(account.user_id), field)
        if not removed:
            raise NotFound(f"{field} is not on this account's suppression list")


def _normalized(address: str) -> str:
    try:
        return normalize_address(address)
    except AddressError as exc:
        raise InvalidArgument(str(exc)) from None


@contextlib.contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    """Redis failing inside the block becomes Unavailable with a message a person can act on."""
    try:
        yield
    except (RedisError, OSError) as exc:
        reraise_if_cancelling()
        # The exception's text (socket paths, addresses) is for the log, not the caller.
        log.warning("suppression list unavailable (%s): %s", what, exc)
        raise Unavailable(f"Redis, which holds the suppression lists, is unreachable ({what}); "
                          "nothing was read or changed: retry shortly") from None


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


def _decoded(raw: bytes | str) -> SuppressionEntry:
    """An entry as stored; one that cannot be read is shown as such, never hidden."""
    try:
        return SuppressionEntry.decode(raw)
    except SuppressionEntryError:
        return SuppressionEntry(reason="", at_ms=0, detail="(unreadable entry)")


def _entries(fields: list[str], batch: dict) -> list[Suppression]:
    by_text = {_text(f): v for f, v in batch.items()}
    return [Suppression(f, _decoded(by_text[f])) for f in fields]


def _encode_token(at: _Position) -> str:
    data = json.dumps([_TOKEN_VERSION, str(at.cursor), at.count,
                       None if at.seen_next is None else str(at.seen_next), at.after])
    return base64.urlsafe_b64encode(data.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_token(token: str) -> _Position:
    """The position a page token names; InvalidArgument for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, cursor, count, seen_next, after = json.loads(raw)
        position = _Position(int(cursor), int(count), None if seen_next is None else int(seen_next), after)
        if (version != _TOKEN_VERSION or not isinstance(after, str) or not 0 < position.count <= MAX_PAGE_SIZE
                or position.cursor < 0 or (position.seen_next or 0) < 0):
            raise ValueError(version)
        return position
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise InvalidArgument("page_token is not one this service gave out: pass the next_page_token of "
                              "the previous page, or none for the first page") from None
