"""Routing deltas: what changed on one MTA server from one routing version to a later one.

A snapshot (`control.contract.snapshot`) is made of *entries*, each with a stable key:

* a pool, by `smtp_id`;
* a Bridge, by `bridge_id`;
* the ACTIVE DKIM keys of one account, by `user_id` (all of that account's keys on
  the server together: a key change is small, and signing looks keys up per account);
* the server's own fields (hostname, zone, bounce domain).

A delta from version `base` to `version` carries the new value of every entry that
changed and a tombstone (its key) for every entry that went. `apply(snapshot_at_base,
delta)` is the snapshot at `version`, exactly: entries are kept in key order, which is
the order the control plane builds snapshots in, so a snapshot rebuilt from SQLite and
one reached by deltas compare equal. `diff(old, new)` is the delta between two snapshots
of one server; `apply(old, diff(old, new)) == new` (a property test holds it).

Wire form: a msgpack map with the snapshot's `schema` and the same per-entry maps as a
snapshot (`snapshot.pool_doc`, ...), so both evolve together:

    {schema, server_id, base, version, published_at_ms,
     server: {hostname, zone, bounce_domain} or nil (unchanged),
     pools: [pool...], pools_gone: [smtp_id...],
     bridges: [bridge...], bridges_gone: [bridge_id...],
     dkim: [{user_id, keys: [key...]}...], dkim_gone: [user_id...]}

Part of `control.contract`: the control plane encodes deltas, data-plane workers apply them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from operator import attrgetter

import msgpack

from .snapshot import (
    SCHEMA_VERSION,
    BridgeRoute,
    DkimKeyRoute,
    PoolRoute,
    Snapshot,
    SnapshotError,
    bridge_doc,
    bridge_from_doc,
    dkim_key_doc,
    dkim_key_from_doc,
    pool_doc,
    pool_from_doc,
    unpack_map,
)

DkimAccount = tuple[int, tuple[DkimKeyRoute, ...]]  # (user_id, its keys in (domain, selector) order)
_SMTP_ID = attrgetter("smtp_id")
_BRIDGE_ID = attrgetter("bridge_id")


@dataclass(frozen=True, slots=True)
class ServerFields:
    """The MTA server's own fields of a snapshot."""

    hostname: str
    zone: str
    bounce_domain: str


@dataclass(frozen=True, slots=True)
class RoutingDelta:
    """The changes that turn server `server_id`'s snapshot at `base` into the one at `version`."""

    server_id: int
    base: int
    version: int
    published_at_ms: int = 0
    server: ServerFields | None = None  # None: unchanged
    pools: tuple[PoolRoute, ...] = ()
    pools_gone: tuple[int, ...] = ()
    bridges: tuple[BridgeRoute, ...] = ()
    bridges_gone: tuple[int, ...] = ()
    dkim: tuple[DkimAccount, ...] = ()
    dkim_gone: tuple[int, ...] = ()

    @property
    def changed_pools(self) -> frozenset[int]:
        """The smtp_ids of the pools this delta replaces or removes."""
        return frozenset(p.smtp_id for p in self.pools) | frozenset(self.pools_gone)

    @property
    def entries(self) -> int:
        """How many entries it changes (the server's fields count as one)."""
        return (len(self.pools) + len(self.pools_gone) + len(self.bridges) + len(self.bridges_gone)
                + len(self.dkim) + len(self.dkim_gone) + (self.server is not None))


def server_fields(snapshot: Snapshot) -> ServerFields:
    """The server's own fields of `snapshot`."""
    return ServerFields(snapshot.hostname, snapshot.zone, snapshot.bounce_domain)


def dkim_accounts(snapshot: Snapshot) -> dict[int, tuple[DkimKeyRoute, ...]]:
    """The snapshot's DKIM keys grouped by account, each group in snapshot order."""
    grouped: dict[int, list[DkimKeyRoute]] = {}
    for key in snapshot.dkim_keys:
        grouped.setdefault(key.user_id, []).append(key)
    return {user_id: tuple(keys) for user_id, keys in grouped.items()}


def _changes(old: dict, new: dict) -> tuple[tuple, tuple]:
    """(new values of the keys added or changed, keys removed), both in key order."""
    changed = tuple(new[k] for k in sorted(new) if old.get(k) != new[k])
    gone = tuple(sorted(k for k in old if k not in new))
    return changed, gone


def diff(old: Snapshot, new: Snapshot) -> RoutingDelta:
    """The delta from `old` to `new`, two snapshots of the same server (`new` the later)."""
    if old.server_id != new.server_id:
        raise ValueError(f"cannot diff server {old.server_id}'s snapshot against server {new.server_id}'s")
    pools, pools_gone = _changes({p.smtp_id: p for p in old.pools}, {p.smtp_id: p for p in new.pools})
    bridges, bridges_gone = _changes({b.bridge_id: b for b in old.bridges}, {b.bridge_id: b for b in new.bridges})
    new_dkim = dkim_accounts(new)
    dkim_changed, dkim_gone = _changes(dkim_accounts(old), new_dkim)
    fields = server_fields(new)
    return RoutingDelta(
        server_id=new.server_id, base=old.version, version=new.version, published_at_ms=new.published_at_ms,
        server=None if fields == server_fields(old) else fields,
        pools=pools, pools_gone=pools_gone, bridges=bridges, bridges_gone=bridges_gone,
        dkim=tuple((keys[0].user_id, keys) for keys in dkim_changed), dkim_gone=dkim_gone,
    )


def _merged(current: dict, changed: dict, gone) -> tuple:
    merged = dict(current)
    merged.update(changed)
    for key in gone:
        merged.pop(key, None)
    return tuple(merged[k] for k in sorted(merged))


def _spliced(entries: tuple, key: Callable[[object], int], changed: Iterable, gone: Iterable[int]) -> tuple:
    """`entries` (in key order, a snapshot's invariant) with `changed` put in place of
    the entries of their keys, or inserted, and the keys `gone` taken out. Each key is
    found by bisection, so a worker's one-pool change costs one copy of the tuple's
    references, not a dict and a sort of every entry."""
    spliced = list(entries)
    for entry in changed:
        at = bisect_left(spliced, key(entry), key=key)
        if at < len(spliced) and key(spliced[at]) == key(entry):
            spliced[at] = entry
        else:
            spliced.insert(at, entry)
    for key_gone in gone:
        at = bisect_left(spliced, key_gone, key=key)
        if at < len(spliced) and key(spliced[at]) == key_gone:
            del spliced[at]
    return tuple(spliced)


def apply(snapshot: Snapshot, delta: RoutingDelta) -> Snapshot:
    """The snapshot at `delta.version`, from `snapshot` at `delta.base`; SnapshotError
    when the delta is of another server or does not start at the snapshot's version."""
    if delta.server_id != snapshot.server_id or delta.base != snapshot.version:
        raise SnapshotError(f"delta of server {delta.server_id} from version {delta.base} does not apply to "
                            f"server {snapshot.server_id}'s snapshot at version {snapshot.version}")
    fields = delta.server or server_fields(snapshot)
    pools = _spliced(snapshot.pools, _SMTP_ID, delta.pools, delta.pools_gone
                     ) if delta.pools or delta.pools_gone else snapshot.pools
    bridges = _spliced(snapshot.bridges, _BRIDGE_ID, delta.bridges, delta.bridges_gone
                       ) if delta.bridges or delta.bridges_gone else snapshot.bridges
    dkim_keys = snapshot.dkim_keys
    if delta.dkim or delta.dkim_gone:
        dkim_keys = tuple(key for keys in _merged(dkim_accounts(snapshot), dict(delta.dkim), delta.dkim_gone)
                          for key in keys)
    return replace(snapshot, version=delta.version, published_at_ms=delta.published_at_ms,
                   hostname=fields.hostname, zone=fields.zone, bounce_domain=fields.bounce_domain,
                   pools=pools, bridges=bridges, dkim_keys=dkim_keys)


def encode_delta(delta: RoutingDelta) -> bytes:
    """Serialize a delta to its msgpack wire form."""
    server = delta.server
    doc = {
        "schema": SCHEMA_VERSION,
        "server_id": delta.server_id,
        "base": delta.base,
        "version": delta.version,
        "published_at_ms": delta.published_at_ms,
        "server": None if server is None else {"hostname": server.hostname, "zone": server.zone,
                                               "bounce_domain": server.bounce_domain},
        "pools": [pool_doc(p) for p in delta.pools],
        "pools_gone": list(delta.pools_gone),
        "bridges": [bridge_doc(b) for b in delta.bridges],
        "bridges_gone": list(delta.bridges_gone),
        "dkim": [{"user_id": user_id, "keys": [dkim_key_doc(k) for k in keys]} for user_id, keys in delta.dkim],
        "dkim_gone": list(delta.dkim_gone),
    }
    return msgpack.packb(doc, use_bin_type=True)


def decode_delta(data: bytes) -> RoutingDelta:
    """Parse the wire form; SnapshotError if it is not a delta of a known schema."""
    doc = unpack_map(data, "routing delta")
    try:
        server = doc.get("server")
        return RoutingDelta(
            server_id=int(doc["server_id"]),
            base=int(doc["base"]),
            version=int(doc["version"]),
            published_at_ms=int(doc.get("published_at_ms", 0)),
            server=None if server is None else ServerFields(
                str(server["hostname"]), str(server["zone"]), str(server["bounce_domain"])),
            pools=tuple(pool_from_doc(p) for p in doc["pools"]),
            pools_gone=tuple(int(i) for i in doc["pools_gone"]),
            bridges=tuple(bridge_from_doc(b) for b in doc["bridges"]),
            bridges_gone=tuple(int(i) for i in doc["bridges_gone"]),
            dkim=tuple((int(a["user_id"]), tuple(dkim_key_from_doc(k) for k in a["keys"])) for a in doc["dkim"]),
            dkim_gone=tuple(int(i) for i in doc["dkim_gone"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"routing delta is missing or has a malformed field: {exc!r}") from None


def delta_chain(served: int, target: int, payloads: Iterable[bytes]) -> tuple[RoutingDelta, ...] | None:
    """The deltas, decoded, that lead from version `served` to `target`, read from the
    change log's entries after `served` (oldest first); None when they do not reach it
    (a gap: the log was trimmed past `served`, or a full snapshot was published alone).
    SnapshotError when an entry is not a delta."""
    chain = []
    at = served
    for payload in payloads:
        delta = decode_delta(payload)
        if delta.version > target:
            break
        if delta.base != at:
            return None
        chain.append(delta)
        at = delta.version
    return tuple(chain) if at == target else None


def newest_full(versions: Iterable[int], target: int) -> int | None:
    """Of the versions of the full snapshots kept, the newest not after `target` (None: none)."""
    eligible = [v for v in versions if v <= target]
    return max(eligible) if eligible else None
