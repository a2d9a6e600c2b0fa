"""Source-IP rotation, pure Python: the specification `_rotation_c.pyx` follows.

Smooth weighted round robin, the nginx upstream algorithm: on every pick each
usable IP's running `current` grows by its weight, the IP with the largest
`current` wins (the first one in pool order on a tie), and the winner's
`current` drops by the pool's total weight. Over any W = sum(weights)
consecutive picks each IP is chosen exactly `weight` times, spread out rather
than bunched (weights 5, 1, 1 give a a b a c a a).

A table is built once per routing snapshot and never changes shape; a new
snapshot builds a new table while the old one keeps serving. Only the
`current` counters change, and a pick runs start to end without yielding to
other Python code, so a table is safe to share between tasks of one worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import index as _as_index

from . import _errors
from ._errors import NoUsableIp
from ._pools import flatten_pools, key_index

__all__ = ["NoUsableIp", "RotationTable"]


class RotationTable:
    """Every pool of one snapshot, ready to pick source IPs per message."""

    __slots__ = (
        "_choices",
        "_current",
        "_index",
        "_keys",
        "_size",
        "_starts",
        "_totals",
        "_weights",
    )

    def __init__(self, pools: Iterable[tuple[object, Sequence[tuple[str, int, bool]]]]) -> None:
        """Same as `RotationTable.from_pools(pools)`."""
        flat = flatten_pools(pools)
        self._keys = flat.keys
        self._index = None  # see _pools.key_index
        self._size = len(flat.keys)
        self._starts = flat.starts
        self._weights = flat.weights
        self._totals = flat.totals
        self._choices = flat.choices
        self._current = [0] * len(flat.weights)

    @classmethod
    def from_pools(
        cls, pools: Iterable[tuple[object, Sequence[tuple[str, int, bool]]]]
    ) -> RotationTable:
        """Build a table from `(pool_key, [(address, weight, active), ...])` pairs.

        Pools get dense indexes 0, 1, ... in the order given. Raises ValueError
        on a duplicate pool key or a malformed IP (see `_pools.flatten_pools`).
        """
        return cls(pools)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<RotationTable pools={self._size} usable_ips={len(self._weights)}>"

    def index_of(self, pool_key: object) -> int:
        """The dense index of `pool_key`; KeyError if the pool is not in the table."""
        if self._index is None:
            self._index = key_index(self._keys)
        index = self._index.get(pool_key)
        if index is None:
            raise _errors.unknown_pool(pool_key)
        return index

    def pick(self, index: int) -> int:
        """Pick the next source IP of pool `index`: its position in the list the
        pool was built from (an int).

        Raises IndexError for an index outside the table and NoUsableIp when the
        pool has no usable IP.
        """
        if type(index) is not int:
            # Mirrors the compiled twin: anything with __index__, nothing else.
            return self.pick(_as_index(index))
        if index < 0 or index >= self._size:
            raise _errors.pool_index_out_of_range(index, self._size)
        start = self._starts[index]
        end = self._starts[index + 1]
        if start == end:
            raise NoUsableIp(self._keys[index])
        weights = self._weights
        current = self._current
        best = start
        best_current = current[start] + weights[start]
        current[start] = best_current
        for position in range(start + 1, end):
            value = current[position] + weights[position]
            current[position] = value
            if value > best_current:  # strict: the earlier IP wins a tie
                best = position
                best_current = value
        current[best] = best_current - self._totals[index]
        return self._choices[best]

    def pick_key(self, pool_key: object) -> int:
        """`pick(index_of(pool_key))`."""
        return self.pick(self.index_of(pool_key))
