"""A pool's source IPs in a few flat objects (the snapshot's `PoolRoute.ips`).

A worker holds every pool of its MTA server: at 50k pools that is 500k IPs, and
an object per IP (an `IpRoute` with its address and hostname strings, ~210 bytes)
was the largest part of its memory. An `IpList` keeps a pool's addresses and HELO
hostnames in one string with their offsets, and its weights and states as one
value when every IP shares it (the usual case) or a tuple otherwise. It is still a
sequence of `IpRoute`s for code that wants one (`pool.ips[0]`, `for ip in
pool.ips`): they are made on access. The per-message path reads the columns
directly (`source`).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from sys import intern

IP_ACTIVE = "active"
IP_PAUSED = "paused"

# Offsets fit two bytes for any realistic pool (a hundred IPs with 253-character
# hostnames is 27 KB); a larger pool's take four.
_SHORT_TEXT = 1 << 16


@dataclass(frozen=True, slots=True)
class IpRoute:
    """A source IP of a pool as the rotation sees it."""

    address: str
    weight: int
    state: str  # IP_ACTIVE | IP_PAUSED
    hostname: str

    @property
    def usable(self) -> bool:
        """True when rotation may pick this IP."""
        return self.state == IP_ACTIVE and self.weight > 0


class IpList(Sequence):
    """A pool's IPs, in order: a read-only sequence of `IpRoute` stored column-wise.

    Equal to another `IpList` or to a tuple or list of the same `IpRoute`s; `+` joins
    it with another sequence of `IpRoute`s into a tuple, as the tuple it replaces did."""

    __slots__ = ("_ends", "_states", "_text", "_weights")

    def __init__(self, ips: Iterable[IpRoute] = ()) -> None:
        self._set((ip.address, ip.weight, ip.state, ip.hostname) for ip in ips)

    @classmethod
    def from_fields(cls, ips: Iterable[tuple[str, int, str, str]]) -> IpList:
        """The list of (address, weight, state, hostname) in order, no `IpRoute` made
        (the snapshot decoder's way in)."""
        made = cls.__new__(cls)
        made._set(ips)
        return made

    def _set(self, ips: Iterable[tuple[str, int, str, str]]) -> None:
        parts: list[str] = []
        ends = [0]
        weights: list[int] = []
        states: list[str] = []
        at = 0
        for address, weight, state, hostname in ips:
            if not isinstance(address, str) or not isinstance(hostname, str) or not isinstance(state, str):
                raise TypeError(f"IP fields must be str: {address!r}, {state!r}, {hostname!r}")
            if not isinstance(weight, int) or isinstance(weight, bool):
                raise TypeError(f"IP weight must be an int: {weight!r}")
            parts += (address, hostname)
            at += len(address)
            ends.append(at)
            at += len(hostname)
            ends.append(at)
            weights.append(weight)
            states.append(intern(state))
        self._text = "".join(parts)
        self._ends = array("H" if at < _SHORT_TEXT else "I", ends)
        self._weights = _column(weights)
        self._states = _column(states)

    def __len__(self) -> int:
        return len(self._ends) // 2

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("IP index out of range")
        address, hostname = self.source(index)
        return IpRoute(address, self.weight(index), self.state(index), hostname)

    def __iter__(self) -> Iterator[IpRoute]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        if isinstance(other, IpList):
            return (self._text == other._text and self._ends == other._ends
                    and self._weights == other._weights and self._states == other._states)
        if isinstance(other, (tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __add__(self, other) -> tuple[IpRoute, ...]:
        if not isinstance(other, (IpList, tuple, list)):
            return NotImplemented
        return tuple(self) + tuple(other)

    def __radd__(self, other) -> tuple[IpRoute, ...]:
        if not isinstance(other, (tuple, list)):
            return NotImplemented
        return tuple(other) + tuple(self)

    def __hash__(self) -> int:
        return hash(tuple(self))  # as the tuple of its IpRoutes, which it equals

    def __repr__(self) -> str:
        return f"IpList({tuple(self)!r})"

    def __reduce__(self):
        return IpList, (tuple(self),)

    def source(self, index: int) -> tuple[str, str]:
        """(address, HELO hostname) of the IP at `index` (0 <= index < len): what a
        message leaving from it needs, read from the columns without an `IpRoute`."""
        ends = self._ends
        at = 2 * index
        middle = ends[at + 1]
        text = self._text
        return text[ends[at]:middle], text[middle:ends[at + 2]]

    def address(self, index: int) -> str:
        """The address of the IP at `index`."""
        return self._text[self._ends[2 * index]:self._ends[2 * index + 1]]

    def hostname(self, index: int) -> str:
        """The HELO hostname of the IP at `index`."""
        return self._text[self._ends[2 * index + 1]:self._ends[2 * index + 2]]

    def weight(self, index: int) -> int:
        """The rotation weight of the IP at `index`."""
        weights = self._weights
        return weights if isinstance(weights, int) else weights[index]

    def state(self, index: int) -> str:
        """The state (IP_ACTIVE | IP_PAUSED) of the IP at `index`."""
        states = self._states
        return states if isinstance(states, str) else states[index]

    def usable(self, index: int) -> bool:
        """True when rotation may pick the IP at `index` (as `IpRoute.usable`)."""
        return self.state(index) == IP_ACTIVE and self.weight(index) > 0

    def addresses(self) -> list[str]:
        """Every IP's address, in order."""
        text, ends = self._text, self._ends
        return [text[ends[at]:ends[at + 1]] for at in range(0, len(ends) - 1, 2)]

    def fields(self) -> list[tuple[str, int, str, str]]:
        """(address, weight, state, hostname) of every IP, in order, no `IpRoute` made
        (what the wire form is written from)."""
        text, ends, size = self._text, self._ends, len(self)
        weights = (self._weights,) * size if isinstance(self._weights, int) else self._weights
        states = (self._states,) * size if isinstance(self._states, str) else self._states
        return [(text[ends[2 * i]:ends[2 * i + 1]], weights[i], states[i], text[ends[2 * i + 1]:ends[2 * i + 2]])
                for i in range(size)]

    def position(self, address: str) -> int:
        """The index of the IP with this address; -1 when the pool has none."""
        text, ends = self._text, self._ends
        found = text.find(address)
        while found >= 0:
            # A match counts only where an address starts and ends (not inside a hostname).
            # (An empty hostname repeats an offset: look at every entry equal to it.)
            at = bisect_left(ends, found)
            while at + 1 < len(ends) and ends[at] == found:
                if at % 2 == 0 and ends[at + 1] == found + len(address):
                    return at // 2
                at += 1
            found = text.find(address, found + 1)
        return -1

    def rotation_entries(self) -> list[tuple[str, int, bool]]:
        """(address, weight, usable) per IP, in order: what a rotation table is built from."""
        return [(address, weight, state == IP_ACTIVE and weight > 0) for address, weight, state, _ in self.fields()]


def _column(values: list):
    """One value when every entry has it (an int or str, shared), else a tuple."""
    if values and all(v == values[0] for v in values):
        return values[0]
    return tuple(values)
