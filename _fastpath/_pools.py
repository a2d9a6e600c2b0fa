"""Validation and flattening of a snapshot's pools, shared by both rotation twins.

Building a table happens once per snapshot, never per message, so it is plain
Python in one place: both twins then accept and reject exactly the same input
with the same messages, and differ only in how they store the flat arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from . import _errors


class FlatPools(NamedTuple):
    """Every pool's usable IPs laid end to end, pools addressed by dense index.

    Pool `i` owns the usable IPs `starts[i]:starts[i + 1]` of `weights` and
    `choices`; an empty range means the pool has no usable IP. A choice is the IP's
    position in its pool's list (an int, no object per IP: a worker holds hundreds of
    thousands), which is what a pick returns.
    """

    keys: list  # pool key per dense index
    index: dict  # pool key -> dense index
    starts: list[int]  # len(keys) + 1 offsets into weights / choices
    weights: list[int]  # weight of each usable IP (always > 0)
    totals: list[int]  # sum of the usable weights per pool
    choices: list[int]  # position in the pool's IP list


def flatten_pools(pools: Iterable[tuple[object, Sequence[tuple[str, int, bool]]]]) -> FlatPools:
    """Validate `pools` and lay out their usable IPs for rotation.

    An IP is usable when it is active with a weight above zero; the others stay
    out of the arrays but keep their position, so a pick reports the IP's index
    in the list it was given in. Raises ValueError on a duplicate pool key or a
    malformed IP (address not a str, weight not an int in 0..MAX_WEIGHT, active
    not a bool).
    """
    keys: list = []
    index: dict = {}
    starts = [0]
    weights: list[int] = []
    totals: list[int] = []
    choices: list[int] = []
    for pool_key, ips in pools:
        if pool_key in index:
            raise _errors.duplicate_pool(pool_key)
        index[pool_key] = len(keys)
        keys.append(pool_key)
        total = 0
        for position, entry in enumerate(ips):
            if not isinstance(entry, (tuple, list)) or len(entry) != 3:
                raise _errors.bad_ip_entry(pool_key, entry)
            address, weight, active = entry
            if not isinstance(address, str):
                raise _errors.bad_address(pool_key, address)
            if (
                not isinstance(weight, int)
                or isinstance(weight, bool)
                or not 0 <= weight <= _errors.MAX_WEIGHT
            ):
                raise _errors.bad_weight(pool_key, address, weight)
            if not isinstance(active, bool):
                raise _errors.bad_active(pool_key, address, active)
            if active and weight > 0:
                weights.append(int(weight))
                choices.append(position)
                total += weight
        starts.append(len(weights))
        totals.append(total)
    return FlatPools(keys, index, starts, weights, totals, choices)


def key_index(keys: list) -> dict:
    """pool key -> dense index, for keys `flatten_pools` found unique. A table builds it
    on its first `index_of`: a worker holds a one-pool table per pool and picks by
    index, so most tables never need it."""
    return {key: index for index, key in enumerate(keys)}
