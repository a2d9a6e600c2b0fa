"""The DKIM keys a worker signs with, and which of them sign a message.

A snapshot carries its accounts' ACTIVE keys sealed (`control.contract.dkim_seal`);
`DkimKeyCache.keyring(snapshot)` unseals and parses them off the hot path, when the
snapshot's Routing is built, and indexes them by (account, domain). Parsed keys are
kept by their sealed bytes across snapshots: parsing an RSA PEM costs milliseconds
and most snapshots change no key. Per message, `DkimKeyring.signing` is a few dict
lookups after reading the From domain.

Which domain signs (RFC 6376 section 3.5's d=; DMARC alignment wants the From
domain or its organisational domain):
1. the From domain, or the nearest parent, that the Bridge's account holds a key for;
2. else the pool's signing domain, with the pool's account's key;
3. else nothing: the message goes unsigned, never refused, and is counted.
A pool's feedback signing domain adds a second signature when it is not the first d=
(ESPs sign with their own domain so feedback loops can tell their mail apart).

A key that does not unseal (no master key file on this host, another master key, a
damaged row) signs nothing: it is logged once per snapshot, by account, domain and
selector, never with any of its bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from control.contract.dkim_seal import DkimSealError, key_aad, load_master_key, unseal
from control.contract.snapshot import DkimKeyRoute, PoolRoute, Snapshot

from .dkim_signer import DkimKey, DkimKeyError, from_domain, sign, signing_domains

__all__ = ["DkimKeyCache", "DkimKeyring", "Signing"]

log = logging.getLogger("poolmta.dataplane.dkim")


@dataclass(frozen=True, slots=True)
class Signing:
    """How one message is signed: its keys, top signature first (none: unsigned), and
    the note its delivery events carry ("d=example.com s=pm2026111", or why it is
    unsigned)."""

    keys: tuple[DkimKey, ...]
    note: str

    def apply(self, message: bytes, timestamp: int, eol: str = "\r\n") -> bytes:
        """`message` with its DKIM-Signature fields on top (none: unchanged), their
        lines ending with `eol`, the message's own line ending."""
        if not self.keys:
            return message
        fields = b"".join(sign(message, key, timestamp=timestamp) for key in self.keys)
        return (fields if eol == "\r\n" else fields.replace(b"\r\n", eol.encode("ascii"))) + message


_NO_KEYS = Signing((), "unsigned: the account has no DKIM key")


class DkimKeyring:
    """The usable keys of one snapshot, by (user_id, domain)."""

    def __init__(self, keys: dict[tuple[int, str], DkimKey] | None = None) -> None:
        self._keys = keys or {}
        self._accounts = frozenset(user_id for user_id, _ in self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def signing(self, user_id: int, pool: PoolRoute, message: bytes) -> Signing:
        """The signatures for a message a Bridge of account `user_id` sent through
        `pool` (see the module docstring for the order)."""
        keys = self._keys
        if user_id not in self._accounts and pool.user_id not in self._accounts:
            # Most mail of an account without keys: no need to read its From per message.
            return _NO_KEYS
        domain = from_domain(message)
        first = None
        if keys and domain is not None:
            for candidate in signing_domains(domain):
                first = keys.get((user_id, candidate))
                if first is not None:
                    break
        if first is None and pool.signing_domain:
            first = keys.get((pool.user_id, pool.signing_domain))
        if first is None:
            return Signing((), f"unsigned: no key for {domain}" if domain else "unsigned: no From domain")
        chosen = (first,)
        feedback = pool.feedback_signing_domain
        if feedback and feedback != first.domain:
            second = keys.get((pool.user_id, feedback))
            if second is not None:
                chosen += (second,)
        return Signing(chosen, "; ".join(f"d={k.domain} s={k.selector}" for k in chosen))


class DkimKeyCache:
    """Builds each snapshot's keyring, reading the master key from `data_dir` (None:
    no signing at all) and keeping parsed keys across snapshots."""

    def __init__(self, data_dir: Path | None) -> None:
        self._data_dir = data_dir
        self._parsed: dict[bytes, DkimKey] = {}

    def keyring(self, snapshot: Snapshot) -> DkimKeyring:
        """The keyring of `snapshot`'s keys that unseal and parse; the others are
        logged (once here) and sign nothing."""
        routes = snapshot.dkim_keys
        if not routes:
            self._parsed = {}
            return DkimKeyring()
        master = self._master(snapshot)
        parsed: dict[bytes, DkimKey] = {}
        index: dict[tuple[int, str], DkimKey] = {}
        for route in routes:
            key = self._parsed.get(route.sealed_key)
            if key is None and master is not None:
                key = _open(master, route, snapshot.version)
            if key is not None:
                parsed[route.sealed_key] = key
                index[(route.user_id, route.domain)] = key
        self._parsed = parsed  # keys no longer in any snapshot are dropped
        return DkimKeyring(index)

    def _master(self, snapshot: Snapshot) -> bytes | None:
        if self._data_dir is None:
            return None
        try:
            return load_master_key(self._data_dir)
        except (DkimSealError, OSError) as exc:
            log.error("snapshot version %d: %d DKIM key(s) cannot sign, their mail goes unsigned: %s",
                      snapshot.version, len(snapshot.dkim_keys), exc)
            return None


def _open(master: bytes, route: DkimKeyRoute, version: int) -> DkimKey | None:
    """The signing key sealed in `route`, or None (logged without any key bytes)."""
    try:
        pem = unseal(master, route.sealed_key, key_aad(route.user_id, route.domain, route.selector))
        return DkimKey.from_pem(route.domain, route.selector, pem)
    except (DkimSealError, DkimKeyError) as exc:
        # Both errors are written never to quote key material.
        log.error("snapshot version %d: DKIM key of account %d for %s (selector %s) cannot sign, "
                  "its mail goes unsigned: %s", version, route.user_id, route.domain, route.selector, exc)
        return None
