"""A routing change, read at the cost of what it touched.

Triggers (schema migration 7) record in `routing_touches`, inside the transaction
that makes a change, which routing entries it touched: a pool (its own fields, its
headers, its IPs; an IP move touches both pools), a Bridge (and its networks), an
account's DKIM keys on a server, the server's own fields. The publisher keeps the
routing it last published per server (`ServerRouting`, keyed by entry) and the
newest touch that routing covers; `read_change` then reads, in one read
transaction, the server's version, the touches after that one and the touched
entries by id, and turns them into the delta from the published routing: an entry
read and different is replaced, an entry touched but no longer there is a
tombstone, an entry touched but unchanged is left out.

Why it is complete: every row a snapshot is built from has triggers on insert,
update and delete, so no change reaches SQLite without its touch, and the touch
commits (or rolls back) with it. Touch ids are AUTOINCREMENT, never reused, so the
watermark cannot skip a later touch; rows are pruned only once a publication
covering them is in Redis. After a crash the first publication is a full build,
which records the newest touch it saw in the same transaction.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from .contract import routing_delta, snapshot
from .snapshot_builder import read_entries
from .store import Store


class ServerRouting:
    """One server's routing as last published, keyed by entry, so that a change is
    applied at the cost of its size (a `Snapshot` is materialized only for a
    comparison). Every entry is also kept packed (`snapshot.pack_entry`), packed
    when it is applied, so that a full snapshot (`encode`) is a join, not an
    encoding of the whole server."""

    def __init__(self, routing: snapshot.Snapshot, touched_through: int) -> None:
        self.server_id = routing.server_id
        self.version = routing.version
        # When the routing at this version was published (a delta carries its own): a
        # full snapshot this routing encodes equals the chain of deltas it replaces.
        self.published_at_ms = routing.published_at_ms
        self.fields = routing_delta.server_fields(routing)
        self.pools = {p.smtp_id: p for p in routing.pools}
        self.bridges = {b.bridge_id: b for b in routing.bridges}
        self.dkim = routing_delta.dkim_accounts(routing)
        self.packed_pools = _packed(self.pools, _pack_pool)
        self.packed_bridges = _packed(self.bridges, _pack_bridge)
        self.packed_dkim = _packed(self.dkim, _pack_dkim)
        self.touched_through = touched_through

    def apply(self, delta: routing_delta.RoutingDelta, touched_through: int) -> None:
        """Advance to `delta.version` (the delta starts at this routing's version)."""
        if delta.base != self.version:
            raise ValueError(f"delta from version {delta.base} does not apply to version {self.version}")
        self.version = delta.version
        self.published_at_ms = delta.published_at_ms
        self.fields = delta.server or self.fields
        pools = {p.smtp_id: p for p in delta.pools}
        bridges = {b.bridge_id: b for b in delta.bridges}
        dkim = dict(delta.dkim)
        _update(self.pools, pools, delta.pools_gone)
        _update(self.bridges, bridges, delta.bridges_gone)
        _update(self.dkim, dkim, delta.dkim_gone)
        _update(self.packed_pools, _packed(pools, _pack_pool), delta.pools_gone)
        _update(self.packed_bridges, _packed(bridges, _pack_bridge), delta.bridges_gone)
        _update(self.packed_dkim, _packed(dkim, _pack_dkim), delta.dkim_gone)
        self.touched_through = touched_through

    def copy(self) -> ServerRouting:
        """A copy that later `apply`s to this one leave unchanged (the entries
        themselves are immutable: only the dicts are copied)."""
        other = copy.copy(self)
        other.pools, other.bridges, other.dkim = dict(self.pools), dict(self.bridges), dict(self.dkim)
        other.packed_pools, other.packed_bridges = dict(self.packed_pools), dict(self.packed_bridges)
        other.packed_dkim = dict(self.packed_dkim)
        return other

    def encode(self) -> bytes:
        """This routing as a full snapshot's wire form (`snapshot.encode` of its
        `snapshot(self.published_at_ms)` byte for byte), joined from the packed entries."""
        head = self.snapshot(self.published_at_ms, entries=False)
        return snapshot.encode_packed(
            head, [self.packed_pools[k] for k in sorted(self.packed_pools)],
            [self.packed_bridges[k] for k in sorted(self.packed_bridges)],
            [key for k in sorted(self.packed_dkim) for key in self.packed_dkim[k]])

    def snapshot(self, published_at_ms: int = 0, *, entries: bool = True) -> snapshot.Snapshot:
        """This routing as a snapshot, entries in key order (as `build_snapshot` lists
        them); only the server's fields when not `entries`."""
        return snapshot.Snapshot(
            server_id=self.server_id, version=self.version, hostname=self.fields.hostname, zone=self.fields.zone,
            bounce_domain=self.fields.bounce_domain,
            pools=tuple(self.pools[k] for k in sorted(self.pools)) if entries else (),
            bridges=tuple(self.bridges[k] for k in sorted(self.bridges)) if entries else (),
            dkim_keys=tuple(key for k in sorted(self.dkim) for key in self.dkim[k]) if entries else (),
            published_at_ms=published_at_ms)


def _pack_pool(pool: snapshot.PoolRoute) -> bytes:
    return snapshot.pack_entry(snapshot.pool_doc(pool))


def _pack_bridge(bridge: snapshot.BridgeRoute) -> bytes:
    return snapshot.pack_entry(snapshot.bridge_doc(bridge))


def _pack_dkim(keys: tuple[snapshot.DkimKeyRoute, ...]) -> tuple[bytes, ...]:
    return tuple(snapshot.pack_entry(snapshot.dkim_key_doc(key)) for key in keys)


def _packed(entries: dict, pack) -> dict:
    return {key: pack(entry) for key, entry in entries.items()}


def _update(entries: dict, changed: dict, gone) -> None:
    entries.update(changed)
    for key in gone:
        entries.pop(key, None)


@dataclass(frozen=True)
class Change:
    """What `read_change` found: the delta (None: SQLite's version is not ahead of the
    routing's) and the newest touch it covers."""

    delta: routing_delta.RoutingDelta | None
    touched_through: int


def read_change(s: Store, routing: ServerRouting) -> Change:
    """The delta from `routing` to the server's routing in SQLite, reading only the
    entries touched since `routing.touched_through`. LookupError: no such server."""
    server_id = routing.server_id
    with s.read():
        server = s.server(server_id)
        if server is None:
            raise LookupError(f"no MTA server {server_id}")
        touches = s.routing_touches(server_id, routing.touched_through)
        through = touches[-1][0] if touches else routing.touched_through
        if server.routing_version <= routing.version:
            return Change(None, through)
        touched: dict[str, set[int]] = {"pool": set(), "bridge": set(), "dkim": set(), "server": set()}
        for _, kind, ref in touches:
            touched[kind].add(ref)
        pools, bridges, dkim_keys = read_entries(s, server_id, pools=touched["pool"], bridges=touched["bridge"],
                                                 dkim_accounts=touched["dkim"])
    fields = routing_delta.ServerFields(server.hostname, server.zone, server.bounce_domain)
    new_pools, pools_gone = _changes(routing.pools, touched["pool"], {p.smtp_id: p for p in pools})
    new_bridges, bridges_gone = _changes(routing.bridges, touched["bridge"], {b.bridge_id: b for b in bridges})
    accounts: dict[int, list[snapshot.DkimKeyRoute]] = {}
    for key in dkim_keys:
        accounts.setdefault(key.user_id, []).append(key)
    new_dkim, dkim_gone = _changes(routing.dkim, touched["dkim"], {u: tuple(k) for u, k in accounts.items()})
    delta = routing_delta.RoutingDelta(
        server_id=server_id, base=routing.version, version=server.routing_version,
        published_at_ms=int(time.time() * 1000), server=None if fields == routing.fields else fields,
        pools=new_pools, pools_gone=pools_gone, bridges=new_bridges, bridges_gone=bridges_gone,
        dkim=tuple((keys[0].user_id, keys) for keys in new_dkim), dkim_gone=dkim_gone)
    return Change(delta, through)


def _changes(published: dict, touched: set[int], read: dict) -> tuple[tuple, tuple]:
    """(new values of the touched keys that changed, touched keys that went), in key order."""
    changed = tuple(read[k] for k in sorted(read) if published.get(k) != read[k])
    gone = tuple(sorted(k for k in touched if k not in read and k in published))
    return changed, gone
