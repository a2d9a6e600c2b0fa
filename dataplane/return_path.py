"""The envelope sender each outgoing message is sent with: a VERP return path.

Every recipient of a sender's message is sent with its own return path, a VERP
address on a bounce domain (`dataplane.verp`) naming the message id and the
recipient's index in the envelope, so an asynchronous bounce or complaint comes
back attributed. One address per recipient means one transaction per recipient;
the delivery engine keeps the connection, so the recipients of one destination
still share it. The original envelope sender stays in the spool record: it is
where DSNs go.

The null reverse-path stays null: DSNs and other notices are sent from <> and
never answered (RFC 5321 4.5.5), so there is nothing to map back.

Bounce domain: the Pool's own when it has one, else the MTA server's (set per server,
by default its hostname; `bounce_domain_of`), decided when the message is accepted and kept in the
record (a later change does not move mail in flight). A record from before
bounce domains (none in it) takes its Pool's in the snapshot delivering it.
`bounce_domains` is the set the inbound listener accepts mail for; the hostname
stays in it after the server names another domain, so reports for mail sent
before still come back.

The key file is `<data_dir>/verp.keys` (`dataplane.verp_keyring`), made by the
supervisor before the workers start; a worker's codec looks at it every
`KEYRING_RELOAD_SECONDS`, so a rotation (`poolmta verp rotate`) reaches every
worker within that time, and addresses signed before it still verify.
"""

from __future__ import annotations

import logging
from pathlib import Path
from sys import intern

from control.contract.snapshot import PoolRoute, Snapshot

from .dsn_request import is_null_sender
from .spool import SpoolRecord
from .verp import VerpCodec, VerpError, check_bounce_domain
from .verp_keyring import KEYRING_FILE, VerpKeyring

log = logging.getLogger("poolmta.dataplane.verp")

# A stat() of the key file per worker per second: a rotation signs new mail within a
# second, and prune's reload allowance (see VerpKeyring.prune) stays negligible.
KEYRING_RELOAD_SECONDS = 1.0


def keyring_path(data_dir: Path) -> Path:
    """Where the data directory's VERP keys are."""
    return Path(data_dir) / KEYRING_FILE


def open_codec(data_dir: Path) -> VerpCodec:
    """The VERP codec over the data directory's key file (created, mode 0600, when absent).
    KeyringError when the file exists but is not a usable keyring."""
    return VerpCodec(VerpKeyring.load_or_create(keyring_path(data_dir)), reload_interval=KEYRING_RELOAD_SECONDS)


def bounce_domain_of(snapshot: Snapshot, pool: PoolRoute) -> str:
    """The bounce domain of a Pool's mail: its own, else the MTA server's, else the
    server's hostname; "" when that is not a valid bounce domain (logged: the mail then
    keeps its sender)."""
    name = pool.bounce_domain or _server_bounce_domain(snapshot)
    try:
        # Interned: a few domains repeat across every pool, and a worker holds them all.
        return intern(check_bounce_domain(name))
    except VerpError as exc:
        log.warning("pool %s has no usable bounce domain (%s); its mail keeps the senders' own return paths",
                    pool.internal_name, exc)
        return ""


def bounce_domains(snapshot: Snapshot) -> frozenset[str]:
    """Every bounce domain of an MTA server's snapshot: its hostname, its own bounce
    domain and its Pools' own (what the inbound listener accepts reports for). A scan
    of every pool: a worker reads `Routing.bounce_domains`, which keeps the set."""
    found = {bounce_domain_of(snapshot, pool) for pool in snapshot.pools}
    found.update(server_bounce_domains(snapshot))
    return frozenset(found - {""})


def server_bounce_domains(snapshot: Snapshot) -> tuple[str, str, str]:
    """The server's own bounce domains, checked ("" for one that is not usable): the
    one its pools without their own use, its hostname, and its `bounce_domain`."""
    return _checked(_server_bounce_domain(snapshot)), _checked(snapshot.hostname), _checked(snapshot.bounce_domain)


def _server_bounce_domain(snapshot: Snapshot) -> str:
    return snapshot.bounce_domain or snapshot.hostname


def _checked(name: str) -> str:
    try:
        return check_bounce_domain(name)
    except VerpError:
        return ""


def uses_verp(record: SpoolRecord) -> bool:
    """True when the message's recipients each get their own return path (every message
    but those from the null sender)."""
    return not is_null_sender(record.mail_from)


class ReturnPaths:
    """Makes the MAIL FROM address of each recipient's transaction."""

    def __init__(self, codec: VerpCodec) -> None:
        self.codec = codec

    def sender(self, record: SpoolRecord, rcpt_index: int, routing) -> str:
        """The return path for recipient `rcpt_index` of `record`: "" (the null path) for a
        message from the null sender, else its VERP address; the original sender when no
        bounce domain is known or the address cannot be made (logged). `routing` (a
        `dataplane.routing.Routing`, None before the first snapshot) names the pool's
        bounce domain for a record from before bounce domains."""
        if not uses_verp(record):
            return ""
        domain = record.bounce_domain or ("" if routing is None else routing.bounce_domain(record.smtp_id))
        if not domain:
            return record.mail_from
        try:
            return self.codec.encode(record.id, rcpt_index, domain)
        except VerpError as exc:
            log.warning("%s: no VERP return path for recipient %d (%s); sending from <%s>",
                        record.id, rcpt_index, exc, record.mail_from)
            return record.mail_from

