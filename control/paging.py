"""Paging of the List RPCs: `page_size`, an opaque `page_token`, `next_page_token`.

Every list is ordered by a key that never changes (an id, an address, a creation
time with the id as tie-break), and a token names the last key a page gave out:
the next page starts after it (keyset paging), so a listing interrupted by inserts
or deletes never repeats or skips an object present throughout. A token is bound to
its listing (the RPC and its filter): one given out by another listing, made up or
edited (a check over the rest fails), is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_VERSION = 2  # 2: with a check of the rest (_check)
_CHECK_BYTES = 8

T = TypeVar("T")
Key = list  # the JSON form of an ordering key: [id] or [create_time, id]


@dataclass(frozen=True)
class PageRequest:
    """What one List call asks for: `size` objects after `after` (None: from the start)."""

    listing: str
    size: int
    after: Key | None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the token of the next one ("" after the last)."""

    items: list[T]
    next_page_token: str


def request(listing: str, page_size: int, page_token: str) -> PageRequest:
    """The page a List call asks for; `page_size` 0 means DEFAULT_PAGE_SIZE.

    INVALID_ARGUMENT for a size outside 0-MAX_PAGE_SIZE or a token this listing did
    not give out.
    """
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be 1 to {MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE}), got {page_size}")
    return PageRequest(listing, page_size or DEFAULT_PAGE_SIZE, _decode(listing, page_token) if page_token else None)


def checked_after(wanted: PageRequest, *types: type) -> Key | None:
    """The request's `after` key when it has one part of each of `types` (int also
    passes for float), None on the first page; INVALID_ARGUMENT otherwise."""
    key = wanted.after
    if key is None:
        return None
    if len(key) != len(types) or not all(
            isinstance(part, kind) or (kind is float and isinstance(part, int)) for part, kind in zip(key, types)):
        raise _foreign_token()
    return key


def page(wanted: PageRequest, rows: Sequence[T], key: Callable[[T], Key]) -> Page[T]:
    """The page of `rows` that `wanted` names.

    `rows` are in key order and hold every row after `wanted.after`, or at least
    `wanted.size + 1` of them (a store query with that LIMIT), so whether a next page
    exists is known without another query.
    """
    items = list(rows[: wanted.size])
    more = len(rows) > wanted.size
    return Page(items, _encode(wanted.listing, key(items[-1])) if more and items else "")


def fetched(wanted: PageRequest, types: tuple[type, ...], fetch: Callable[[Key | None, int], Sequence[T]],
            key: Callable[[T], Key]) -> Page[T]:
    """The page `wanted` names, read in SQL: `fetch(after, limit)` returns at most `limit`
    rows after the key `after` (None: from the first), in key order, and is called with
    `wanted.size + 1` so the last page is known as such. INVALID_ARGUMENT when the token's
    key is not one part of each of `types`."""
    return page(wanted, fetch(checked_after(wanted, *types), wanted.size + 1), key)


def _encode(listing: str, key: Key) -> str:
    data = json.dumps([_TOKEN_VERSION, listing, key], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(data + _check(data)).decode("ascii").rstrip("=")


def _check(data: bytes) -> bytes:
    # Not a secret: a token only places the caller in lists of its own objects (every
    # query filters by the account), so the check is there to refuse an edited or cut
    # token with a clear INVALID_ARGUMENT rather than to keep anyone out.
    return hashlib.blake2b(data, digest_size=_CHECK_BYTES, person=b"poolmta-page").digest()


def _decode(listing: str, token: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
        if not hmac.compare_digest(check, _check(data)):
            raise ValueError("edited")
        version, given_listing, key = json.loads(data)
        if version != _TOKEN_VERSION or given_listing != listing or not isinstance(key, list) or not key:
            raise ValueError(version)
        if not all(isinstance(part, (int, float, str)) and not isinstance(part, bool) for part in key):
            raise ValueError(key)
        return key
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise _foreign_token() from None


def _foreign_token() -> InvalidArgument:
    return InvalidArgument("page_token is not one this list gave out: pass the next_page_token of the "
                           "previous page of the same list (same filter), or none for the first page")
