"""The routing snapshot: the contract between the control plane and data-plane workers.

One snapshot per MTA server holds everything a worker of that server needs to
authenticate bridges, rotate source IPs, stamp headers and sign (sealed DKIM
keys), plus a version that
strictly increases per server. This module is the only place that knows the wire
format (msgpack, maps with short stable keys, `schema` field for evolution);
the publisher encodes with it, the data plane decodes with it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from sys import intern

import msgpack

# A pool's IPs live in their own module; the snapshot's users import them from here.
from .ip_list import IP_ACTIVE, IP_PAUSED, IpList, IpRoute  # noqa: F401

SCHEMA_VERSION = 1


class SnapshotError(ValueError):
    """Bytes that are not a snapshot this code understands."""


@dataclass(frozen=True, slots=True)
class PoolRoute:
    """A pool: what is stamped on its mail and which IPs carry it."""

    smtp_id: int
    user_id: int  # 0 for a server's shared pool
    internal_name: str  # x-virtual-mta
    feed_type: str
    headers: tuple[tuple[str, str], ...]  # custom headers, in order
    # Its IPs, column-wise (see control.contract.ip_list); any sequence of IpRoute is
    # accepted and stored as an IpList.
    ips: IpList
    shared: bool = False
    # The domain of its VERP return paths; "" = the MTA server's (Snapshot.bounce_domain;
    # see control.contract.bounce_domain). Snapshots written before it decode with "".
    bounce_domain: str = ""
    # DKIM d= when the From domain has no active key of the account, and the d= of an
    # optional second (feedback-loop) signature; "" = none. Older snapshots decode with "".
    signing_domain: str = ""
    feedback_signing_domain: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.ips, IpList):
            object.__setattr__(self, "ips", IpList(self.ips))


@dataclass(frozen=True, slots=True)
class DkimKeyRoute:
    """An account's ACTIVE DKIM key for a domain, its private key sealed (see
    control.contract.dkim_seal: unseal with the data directory's master key and
    key_aad(user_id, domain, selector)). Never in clear in the snapshot."""

    user_id: int
    domain: str  # lower-case A-label
    selector: str
    algorithm: str  # rsa-sha256 | ed25519-sha256 (the a= tag's value)
    sealed_key: bytes


@dataclass(frozen=True, slots=True)
class BridgeRoute:
    """A bridge's credentials and where its mail goes."""

    bridge_id: int
    user_id: int
    name: str
    username: str
    secret_hash: str  # see control.contract.secrets for the format
    smtp_id: int  # the pool (the shared pool for ESSENTIAL bridges)
    feed_type: str  # override; empty = the pool's
    trusted_networks: tuple[str, ...] = ()
    # Senders get RFC 3464 DSNs for bounced recipients (the per-Bridge switch);
    # snapshots written before it decode as on.
    send_dsns: bool = True


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one MTA server's workers route by, at one version."""

    server_id: int
    version: int
    hostname: str
    zone: str  # x-zone
    pools: tuple[PoolRoute, ...] = ()
    bridges: tuple[BridgeRoute, ...] = ()
    published_at_ms: int = 0
    # The domain of the VERP return paths of its pools without their own; "" = the
    # hostname. Snapshots written before it decode with "".
    bounce_domain: str = ""
    # The ACTIVE DKIM keys of the accounts with pools or Bridges on the server, sealed.
    # Older snapshots decode with none.
    dkim_keys: tuple[DkimKeyRoute, ...] = ()
    _pools_by_id: dict = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def pool(self, smtp_id: int) -> PoolRoute:
        """The pool with this id; KeyError if the snapshot has none."""
        index = self._pools_by_id
        if index is None:
            index = {p.smtp_id: p for p in self.pools}
            object.__setattr__(self, "_pools_by_id", index)
        return index[smtp_id]

    def bridge_by_username(self) -> dict[str, BridgeRoute]:
        """Bridges keyed by SMTP AUTH username."""
        return {b.username: b for b in self.bridges}


def pool_doc(p: PoolRoute) -> dict:
    """A pool's wire form (a map), as snapshots and routing deltas carry it."""
    return {
        "smtp_id": p.smtp_id,
        "user_id": p.user_id,
        "internal_name": p.internal_name,
        "feed_type": p.feed_type,
        "headers": [[n, v] for n, v in p.headers],
        "shared": p.shared,
        "bounce_domain": p.bounce_domain,
        "signing_domain": p.signing_domain,
        "feedback_signing_domain": p.feedback_signing_domain,
        "ips": [
            {"address": address, "weight": weight, "state": state, "hostname": hostname}
            for address, weight, state, hostname in p.ips.fields()
        ],
    }


def bridge_doc(b: BridgeRoute) -> dict:
    """A Bridge's wire form (a map)."""
    return {
        "bridge_id": b.bridge_id,
        "user_id": b.user_id,
        "name": b.name,
        "username": b.username,
        "secret_hash": b.secret_hash,
        "smtp_id": b.smtp_id,
        "feed_type": b.feed_type,
        "trusted_networks": list(b.trusted_networks),
        "send_dsns": b.send_dsns,
    }


def dkim_key_doc(k: DkimKeyRoute) -> dict:
    """A DKIM key's wire form (a map; the key stays sealed)."""
    return {"user_id": k.user_id, "domain": k.domain, "selector": k.selector,
            "algorithm": k.algorithm, "sealed_key": bytes(k.sealed_key)}


def encode(snapshot: Snapshot) -> bytes:
    """Serialize a snapshot to its msgpack wire form."""
    return encode_packed(snapshot, [pack_entry(pool_doc(p)) for p in snapshot.pools],
                         [pack_entry(bridge_doc(b)) for b in snapshot.bridges],
                         [pack_entry(dkim_key_doc(k)) for k in snapshot.dkim_keys])


def pack_entry(doc: dict) -> bytes:
    """One entry's wire map (a `pool_doc`, `bridge_doc` or `dkim_key_doc`), packed
    on its own: a full snapshot is its server fields and these bytes, joined."""
    return msgpack.packb(doc, use_bin_type=True)


def encode_packed(snapshot: Snapshot, pools: Sequence[bytes], bridges: Sequence[bytes],
                  dkim_keys: Sequence[bytes]) -> bytes:
    """The wire form of `snapshot`'s server fields with the given entries, already
    packed (`pack_entry`, in key order), instead of its own: byte for byte what
    `encode` gives for those entries, at the cost of a join (the publisher keeps
    every entry packed, so a full snapshot of a large server costs no packing)."""
    head = {
        "schema": SCHEMA_VERSION,
        "server_id": snapshot.server_id,
        "version": snapshot.version,
        "hostname": snapshot.hostname,
        "zone": snapshot.zone,
        "bounce_domain": snapshot.bounce_domain,
        "published_at_ms": snapshot.published_at_ms,
    }
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(head) + 3)]
    for key, value in head.items():
        parts += (packer.pack(key), packer.pack(value))
    for key, entries in (("pools", pools), ("bridges", bridges), ("dkim_keys", dkim_keys)):
        parts += (packer.pack(key), packer.pack_array_header(len(entries)))
        parts += entries
    return b"".join(parts)


def unpack_map(data: bytes, what: str) -> dict:
    """The msgpack map `data` of schema SCHEMA_VERSION; SnapshotError otherwise
    (`what` names it in the message: "snapshot", "routing delta")."""
    try:
        doc = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise SnapshotError(f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(doc, dict):
        raise SnapshotError(f"{what} is not a map")
    _check_schema(doc.get("schema"), what)
    return doc


def pool_from_doc(p: dict) -> PoolRoute:
    """The pool of a wire map (KeyError / TypeError / ValueError when malformed)."""
    return PoolRoute(
        smtp_id=int(p["smtp_id"]),
        user_id=int(p["user_id"]),
        internal_name=str(p["internal_name"]),
        # Interned: a few feed types and IP states repeat across every pool and IP,
        # and a worker holds them all.
        feed_type=intern(str(p["feed_type"])),
        headers=tuple((str(n), str(v)) for n, v in p["headers"]),
        shared=bool(p.get("shared", False)),
        bounce_domain=str(p.get("bounce_domain", "")),
        signing_domain=str(p.get("signing_domain", "")),
        feedback_signing_domain=str(p.get("feedback_signing_domain", "")),
        ips=IpList.from_fields(
            (str(ip["address"]), int(ip["weight"]), str(ip["state"]), str(ip["hostname"])) for ip in p["ips"]),
    )


def bridge_from_doc(b: dict) -> BridgeRoute:
    """The Bridge of a wire map (KeyError / TypeError / ValueError when malformed)."""
    return BridgeRoute(
        bridge_id=int(b["bridge_id"]),
        user_id=int(b["user_id"]),
        name=str(b["name"]),
        username=str(b["username"]),
        secret_hash=str(b["secret_hash"]),
        smtp_id=int(b["smtp_id"]),
        feed_type=str(b["feed_type"]),
        trusted_networks=tuple(str(n) for n in b.get("trusted_networks", ())),
        send_dsns=bool(b.get("send_dsns", True)),
    )


def dkim_key_from_doc(k: dict) -> DkimKeyRoute:
    """The DKIM key of a wire map (KeyError / TypeError / ValueError when malformed)."""
    return DkimKeyRoute(user_id=int(k["user_id"]), domain=str(k["domain"]), selector=str(k["selector"]),
                        algorithm=str(k["algorithm"]), sealed_key=_bytes(k["sealed_key"]))


# How much of the snapshot's bytes the streaming decoder reads at a time.
_DECODE_READ_SIZE = 256 * 1024
# The entries of a snapshot decoded one by one as they stream in, by the key of their array.
_ENTRY_DECODERS = {"pools": pool_from_doc, "bridges": bridge_from_doc, "dkim_keys": dkim_key_from_doc}


def decode(data: bytes) -> Snapshot:
    """Parse the wire form; SnapshotError if it is not a snapshot of a known schema.

    Streams: each pool, Bridge and DKIM key map is turned into its route object as soon
    as it is read and then dropped, so the decoder never holds the whole document as
    Python maps beside the objects built from it (at 50k pools that document was larger
    than the routing itself)."""
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, read_size=_DECODE_READ_SIZE,
                                max_buffer_size=max(len(data), _DECODE_READ_SIZE))
    try:
        try:
            fields = unpacker.read_map_header()
        except ValueError:
            raise SnapshotError("snapshot is not a map") from None
        doc: dict = {}
        for _ in range(fields):
            key = unpacker.unpack()
            from_doc = _ENTRY_DECODERS.get(key)
            if from_doc is None:
                doc[key] = unpacker.unpack()
                if key == "schema":
                    _check_schema(doc[key], "snapshot")  # before decoding entries of an unknown schema
                continue
            doc[key] = tuple(from_doc(unpacker.unpack()) for _ in range(unpacker.read_array_header()))
        _check_schema(doc.get("schema"), "snapshot")
        if unpacker.tell() != len(data):
            raise SnapshotError("snapshot is not valid msgpack: extra data after the map")
        return Snapshot(
            server_id=int(doc["server_id"]),
            version=int(doc["version"]),
            hostname=str(doc["hostname"]),
            zone=str(doc["zone"]),
            bounce_domain=str(doc.get("bounce_domain", "")),
            published_at_ms=int(doc.get("published_at_ms", 0)),
            pools=doc["pools"],
            bridges=doc["bridges"],
            dkim_keys=doc.get("dkim_keys", ()),
        )
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        if type(exc).__module__.startswith("msgpack"):
            raise SnapshotError(f"snapshot is not valid msgpack: {exc}") from None
        raise SnapshotError(f"snapshot is missing or has a malformed field: {exc!r}") from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise SnapshotError(f"snapshot is not valid msgpack: {exc}") from None


def _check_schema(schema, what: str) -> None:
    if schema != SCHEMA_VERSION:
        raise SnapshotError(f"{what} schema {schema!r} is not supported (expected {SCHEMA_VERSION})")


def _bytes(value) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)
