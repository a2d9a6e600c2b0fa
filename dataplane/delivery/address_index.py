"""Which pool an IP address belongs to, for every IP of a snapshot, without a
Python object per IP.

A dict keyed by address strings cost a worker ~100 bytes per IP (the string and
its slot); at 500k IPs that was a fifth of its memory, and the strings now live
only inside each pool's `IpList`. This is an open-addressing hash table in two flat
arrays: per slot 32 bits of the address's hash and its value (its pool and place; 12
bytes, at most two thirds full). A lookup probes by the hash and asks the caller
(`holds(value, address)`) whether the entry really is that exact address, so it
answers exactly as the dict of strings did; adding or removing an address costs
one probe sequence, so an in-place change costs what it touched (a growth, once
per doubling, rebuilds the arrays).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable

_EMPTY = -1  # a slot never used
_GONE = -2  # a slot whose address was removed (probing goes on past it)
_MIN_CAPACITY = 8


class AddressIndex:
    """address -> a non-negative int the caller gives (the last one set, when two are).

    `holds(value, address)` says whether the entry of `value` is that address (the
    source selector's values name a pool and the IP's position in it): while
    addresses are discarded it must answer for the pools they are removed from,
    while they are set for the pools they are set to."""

    __slots__ = ("_hashes", "_taken", "_used", "_values", "holds")

    def __init__(self, holds: Callable[[int, str], bool], entries: Iterable[tuple[str, int]] = (),
                 size: int = 0) -> None:
        self.holds = holds
        self._allocate(size)
        set_value = self.set
        for address, value in entries:
            set_value(address, value)

    def _allocate(self, size: int) -> None:
        capacity = _MIN_CAPACITY
        while capacity * 2 < size * 3:
            capacity *= 2
        self._hashes = array("I", bytes(4 * capacity))
        self._values = array("q", [_EMPTY]) * capacity
        self._used = 0  # slots with an entry
        self._taken = 0  # slots with an entry or removed (what slows probing)

    def copy(self, holds: Callable[[int, str], bool]) -> AddressIndex:
        """An independent index with the same entries, asking `holds` (the arrays copied)."""
        made = AddressIndex.__new__(AddressIndex)
        made.holds = holds
        made._hashes = array("I", self._hashes)
        made._values = array("q", self._values)
        made._used, made._taken = self._used, self._taken
        return made

    def _slot(self, address: str) -> tuple[int, int]:
        """(slot of `address`, or -1, first free slot of its probe sequence)."""
        full = hash(address)
        short = full & 0xFFFFFFFF
        hashes, pools, holds = self._hashes, self._values, self.holds
        mask = len(pools) - 1
        at = full & mask
        free = -1
        while True:
            value = pools[at]
            if value == _EMPTY:
                return -1, at if free < 0 else free
            if value == _GONE:
                if free < 0:
                    free = at
            elif hashes[at] == short and holds(value, address):
                return at, free
            at = (at + 1) & mask

    def get(self, address: str) -> int | None:
        """The value set for this address; None when it has none."""
        at, _ = self._slot(address)
        return None if at < 0 else self._values[at]

    def set(self, address: str, value: int) -> None:
        """`address` now has `value` (which `holds` must confirm)."""
        if (self._taken + 1) * 3 > len(self._values) * 2:
            self._grow()
        at, free = self._slot(address)
        if at >= 0:
            self._values[at] = value
            return
        if self._values[free] == _EMPTY:
            self._taken += 1
        self._used += 1
        self._hashes[free] = hash(address) & 0xFFFFFFFF
        self._values[free] = value

    def discard(self, address: str) -> None:
        """`address` has no value any more (nothing when it had none)."""
        at, _ = self._slot(address)
        if at >= 0:
            self._values[at] = _GONE
            self._used -= 1

    def __len__(self) -> int:
        return self._used

    def _grow(self) -> None:
        hashes, pools = self._hashes, self._values
        self._allocate(max(self._used * 2, _MIN_CAPACITY))
        mask = len(self._values) - 1
        for short, value in zip(hashes, pools):
            if value < 0:
                continue
            # Probing starts at the hash's low bits, which the short hash keeps.
            at = short & mask
            while self._values[at] != _EMPTY:
                at = (at + 1) & mask
            self._hashes[at] = short
            self._values[at] = value
            self._used += 1
            self._taken += 1
