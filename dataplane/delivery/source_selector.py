"""Source-IP selection for every pool of one snapshot (see `SourceSelector`): the
rotation each message's IP is picked by, at acceptance and at a delivery re-pick,
and each IP's state and pool by address.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from _fastpath import RotationTable

from .address_index import AddressIndex

# The picked pools whose IPs' (address, HELO name) pairs are kept as made, and the
# addresses whose (pool, position) is kept: bounded (emptied when full), so a worker
# that sends for every one of its 50k pools holds what a few thousand need (~5 MB).
_PICKED_POOLS = 2048
_RECENT_IPS = 8192
# The address index keeps per address smtp_id << _POSITION_BITS | its position in the
# pool's IPs (an IP found without a scan); a position beyond the field is looked up.
_POSITION_BITS = 16
_NO_POSITION = (1 << _POSITION_BITS) - 1


def _entries(pool) -> list[tuple[str, int]]:
    """(address, address index value) of every IP of `pool`."""
    base = pool.smtp_id << _POSITION_BITS
    return [(address, base | min(position, _NO_POSITION)) for position, address in enumerate(pool.ips.addresses())]


class IpState(NamedTuple):
    """A source IP as one snapshot has it."""

    usable: bool  # active and weight > 0: rotation may pick it
    hostname: str  # its HELO name


class SourceSelector:
    """Source-IP selection for every pool of one snapshot: each pool's smooth
    weighted rotation (a `_fastpath.RotationTable` of its own) and each IP's state.

    Built once per snapshot, off the hot path; then only the rotations' positions
    change. `pools` are the snapshot's pools (`smtp_id`, and `ips` with `address`,
    `weight`, `usable`, `hostname`). Given the `previous` snapshot's selector, a pool
    that did not change (the same `PoolRoute`) keeps its rotation table, position
    included: a change to one pool leaves every other pool's rotation exact to the
    message, and only the changed pools are rebuilt.

    Per IP it keeps no object of its own (a worker holds hundreds of thousands): a
    pick is a position in the pool's `ips` (columns: `control.contract.ip_list`), and
    the address index (`address_index.AddressIndex`, flat arrays) maps each address
    to its pool and its position there (`pool_of`, which inbound attribution reads
    too). The pools built together share one rotation table (each at its own index: their rotations stay
    independent), so a pool costs its IPs' slots in flat arrays, not a table object of
    its own; a table lives as long as one of its pools is served.

    So that a pick costs no more than it did with an object per IP, the (address, HELO
    name) pairs of the IPs picked lately are kept as made (`_picked`, by pool), and so
    are the pool and position of addresses asked about lately (`_recent`): both are
    bounded, and a change drops the entries of the pools it touched.
    """

    __slots__ = ("_ips", "_picked", "_pools", "_recent")

    def __init__(self, pools: Iterable, previous: SourceSelector | None = None) -> None:
        pools = tuple(pools)
        self._picked: dict[int, list] = {}  # smtp_id -> (address, hostname) or None per position
        self._recent: dict[str, tuple] = {}  # address -> (PoolRoute, position)
        if previous is None:
            self._pools = _rotations(pools)
            self._ips = AddressIndex(self._holds, (entry for p in pools for entry in _entries(p)),
                                     size=sum(len(p.ips) for p in pools))
            return
        kept = previous._pools
        changed = [p for p in pools if not _same(kept.get(p.smtp_id), p)]
        fresh = _rotations(changed)
        self._pools = {p.smtp_id: fresh.get(p.smtp_id) or kept[p.smtp_id] for p in pools}
        gone = [entry[0] for smtp_id, entry in kept.items() if self._pools.get(smtp_id, (None,))[0] is not entry[0]]
        self._ips = previous._ips
        if gone or changed:
            ips = previous._ips.copy(previous._holds)
            for pool in gone:  # the IPs of changed and removed pools, as they were
                for address in pool.ips.addresses():
                    ips.discard(address)
            ips.holds = self._holds
            for pool in changed:
                for address, value in _entries(pool):
                    ips.set(address, value)
            self._ips = ips

    def prepare(self, pools: dict) -> dict:
        """The entries `replace` will install for `pools` (smtp_id -> its new PoolRoute, or
        None when it went): each changed pool's new rotation table, an equal pool's kept
        one. May raise (a table the fast path refuses) without changing anything."""
        fresh = _rotations([p for p in pools.values() if p is not None and not _same(self._pools.get(p.smtp_id), p)])
        return {smtp_id: None if pool is None else fresh.get(smtp_id) or self._pools[smtp_id]
                for smtp_id, pool in pools.items()}

    def replace(self, prepared: dict) -> None:
        """Install entries from `prepare`, in place, in time proportional to them (the
        other pools and their rotation positions are untouched). Plain updates that
        cannot fail: the caller runs it on the event loop with no await, so a message
        sees the selector before or after, never between."""
        ips, recent = self._ips, self._recent
        for smtp_id in prepared:  # the IPs of changed and removed pools, as they were
            self._picked.pop(smtp_id, None)
            entry = self._pools.get(smtp_id)
            if entry is not None:
                for address in entry[0].ips.addresses():
                    ips.discard(address)
                    recent.pop(address, None)
        for smtp_id, entry in prepared.items():
            if entry is None:
                self._pools.pop(smtp_id, None)
                continue
            self._pools[smtp_id] = entry
            for address, value in _entries(entry[0]):
                ips.set(address, value)
                recent.pop(address, None)

    def pick(self, smtp_id: int) -> tuple[str, str]:
        """The pool's next source IP and its HELO name (advances the pool's rotation).

        Raises KeyError when the snapshot has no such pool, NoUsableIp when none of
        its IPs is usable.
        """
        pool, table, index = self._pools[smtp_id]
        position = table.pick(index)
        picked = self._picked.get(smtp_id)
        if picked is not None:
            source = picked[position]
            if source is not None:
                return source
        else:
            if len(self._picked) >= _PICKED_POOLS:
                self._picked.clear()
            picked = self._picked[smtp_id] = [None] * len(pool.ips)
        # Made from the columns once, then kept for the next picks of this IP.
        source = picked[position] = pool.ips.source(position)
        return source

    def _note(self, address: str, pool, position: int) -> tuple:
        if len(self._recent) >= _RECENT_IPS:
            self._recent.clear()
        found = self._recent[address] = (pool, position)
        return found

    def _locate(self, address: str) -> tuple | None:
        """(PoolRoute, position in its IPs) of the IP `address`; None when no pool has it."""
        found = self._recent.get(address)
        if found is not None:
            return found
        value = self._ips.get(address)
        if value is None:
            return None
        entry = self._pools.get(value >> _POSITION_BITS)
        if entry is None:
            return None
        position = value & _NO_POSITION
        if position == _NO_POSITION:
            position = entry[0].ips.position(address)
        return None if position < 0 else self._note(address, entry[0], position)

    def pool_of(self, address: str):
        """The pool (`PoolRoute`) the IP `address` belongs to; None when no pool has it."""
        found = self._locate(address)
        return None if found is None else found[0]

    def _holds(self, value: int, address: str) -> bool:
        """True when the IP `address` is where the address index's `value` says (its
        check of a hash match)."""
        entry = self._pools.get(value >> _POSITION_BITS)
        if entry is None:
            return False
        ips, position = entry[0].ips, value & _NO_POSITION
        if position == _NO_POSITION:
            return ips.position(address) >= 0
        return ips.address(position) == address  # positions come from the pool itself: in range

    def ip(self, address: str) -> IpState | None:
        """The IP's state in this snapshot; None when no pool has it (released)."""
        found = self._locate(address)
        if found is None:
            return None
        pool, position = found
        ips = pool.ips
        return IpState(ips.usable(position), ips.hostname(position))


def _same(entry, pool) -> bool:
    """True when a selector entry is for `pool` as it is (its rotation may be kept)."""
    return entry is not None and (entry[0] is pool or entry[0] == pool)


def _rotations(pools) -> dict:
    """smtp_id -> (pool, rotation table, its index in the table) for `pools`, all in one
    table (a pick is a position in `pool.ips`). ValueError when the fast path refuses
    one (a duplicate smtp_id, a malformed IP)."""
    if not pools:
        return {}
    table = RotationTable.from_pools(
        (p.smtp_id, p.ips.rotation_entries()) for p in pools)
    return {p.smtp_id: (p, table, index) for index, p in enumerate(pools)}
