"""DKIM keys of an account, per sending domain: generation, import, rotation,
retirement and deletion, and the pool signing domains that depend on them.

The rules:

* every tier may sign: DKIM is what mailbox providers require of every sender
  since 2024, so it is not gated like dedicated pools (an ESSENTIAL account's mail,
  through its server's shared pool, is signed with its keys too);
* a domain has at most one ACTIVE key, the one that signs. Generating or importing
  a key for a domain that has one (and `rotate`, which generates one of the same
  algorithm) makes the new key ACTIVE and the old one PUBLISHED: it stays in DNS so
  mail signed with it and still in flight verifies (RFC 6376 3.1 selectors exist
  for exactly this), but it no longer signs;
* `retire` moves a PUBLISHED key to RETIRED (its TXT record may go). An ACTIVE key
  is retired only with `force` (the domain's mail is then unsigned, or signed with
  the pool's signing domain); never while a pool names its domain;
* `delete` removes only a RETIRED key: a key whose record may still be needed by
  a verifier is never forgotten by accident;
* a pool's signing domain and feedback signing domain must each have an ACTIVE key.

Private keys are sealed (control.contract.dkim_seal) before they reach the store
and are never returned, logged or quoted: an error about a PEM never echoes it.
"""

from __future__ import annotations

import base64
import re
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .. import models, paging
from ..contract import dkim_seal
from ..contract.bounce_domain import LABEL
from ..contract.dkim_record import SELECTOR, txt_record_text
from ..contract.json_records import quoted
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..models import Account
from ..store import Store

# RFC 8301 3.2: signers MUST use RSA keys of at least 1024 bits and SHOULD use 2048;
# 1024-bit RSA is within reach of well-funded attackers, and several mailbox
# providers treat such signatures as weak. Above 4096 bits signing gets slow for
# no gain, and the TXT record outgrows what many DNS panels accept.
MIN_RSA_BITS = 1024
RECOMMENDED_RSA_BITS = 2048
MAX_RSA_BITS = 4096
MAX_PEM_BYTES = 16 * 1024
MAX_DOMAIN = 253  # RFC 1035 2.3.4, without the root's dot
MAX_SELECTOR_LABEL = 63
_DOMAIN = re.compile(rf"{LABEL}(?:\.{LABEL})+")  # at least two labels

ALGORITHMS = {"rsa": models.DKIM_RSA, "ed25519": models.DKIM_ED25519}


def check_domain(domain: str) -> str:
    """A signing domain as stored: IDNA A-labels, lower-case, no trailing dot, LDH
    labels of 1-63 octets, at least two labels, at most 253 octets."""
    name = (domain or "").strip()
    name = name.removesuffix(".")
    try:
        name = name.encode("idna").decode("ascii").lower() if not name.isascii() else name.lower()
    except UnicodeError:
        raise InvalidArgument(f"{quoted(domain)} is not a domain name IDNA can encode") from None
    if len(name) > MAX_DOMAIN:
        raise InvalidArgument(f"domain is {len(name)} octets; the limit is {MAX_DOMAIN}")
    if not _DOMAIN.fullmatch(name):
        raise InvalidArgument(
            f"{quoted(domain)} is not a sending domain: give a name like example.com (at least two labels of "
            "letters, digits and inner '-')"
        )
    return name


def check_selector(selector: str, domain: str) -> str:
    """A selector (RFC 6376 3.1), lower-case; its record name must fit in 253 octets."""
    name = (selector or "").strip().lower()
    if not SELECTOR.fullmatch(name) or any(len(label) > MAX_SELECTOR_LABEL for label in name.split(".")):
        raise InvalidArgument(
            f"selector {quoted(selector)} must be dot-separated labels of letters, digits and inner '-' "
            f"(at most {MAX_SELECTOR_LABEL} each), e.g. pm2026111"
        )
    if len(f"{name}._domainkey.{domain}") > MAX_DOMAIN:
        raise InvalidArgument(f"selector {quoted(selector)} makes the record name longer than {MAX_DOMAIN} octets")
    return name


def check_algorithm(algorithm: str) -> str:
    """rsa | ed25519 (or the tag values rsa-sha256 | ed25519-sha256) as the tag value."""
    name = (algorithm or "rsa").strip().lower()
    if name in models.DKIM_ALGORITHMS:
        return name
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise InvalidArgument(f"algorithm {quoted(algorithm)} must be rsa (RSA-2048) or ed25519 (RFC 8463)") from None


def txt_record(key: models.DkimKey) -> str:
    """The exact TXT record text to publish at `key.record_name`."""
    return txt_record_text("ed25519" if key.algorithm == models.DKIM_ED25519 else "rsa", key.public_key_b64)


def public_key_b64(private_key) -> str:
    """The p= value: base64 of the DER SubjectPublicKeyInfo for RSA (RFC 6376 3.6.1),
    of the raw 32-byte key for Ed25519 (RFC 8463 4.2)."""
    public = private_key.public_key()
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def parse_private_pem(pem: bytes) -> tuple[str, object]:
    """(algorithm, private key) of an unencrypted PEM (PKCS#8, or traditional RSA);
    InvalidArgument saying what is wrong, never echoing the PEM."""
    if len(pem) > MAX_PEM_BYTES:
        raise InvalidArgument(f"the PEM is {len(pem)} bytes; a DKIM private key is at most {MAX_PEM_BYTES}")
    if b"ENCRYPTED" in pem or b"Proc-Type: 4,ENCRYPTED" in pem:
        raise InvalidArgument(
            "the PEM is encrypted: decrypt it first (openssl pkey -in key.pem -out plain.pem), import it, "
            "then delete the plain copy; poolmta encrypts it at rest itself"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InvalidArgument(
            "not a PEM private key: give an unencrypted RSA or Ed25519 key, PKCS#8 (BEGIN PRIVATE KEY) or "
            "traditional (BEGIN RSA PRIVATE KEY)"
        ) from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return models.DKIM_ED25519, key
    if isinstance(key, rsa.RSAPrivateKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise InvalidArgument(
                f"the RSA key has {key.key_size} bits; DKIM needs {MIN_RSA_BITS}-{MAX_RSA_BITS} (RFC 8301 3.2), "
                f"and {RECOMMENDED_RSA_BITS} is recommended: shorter keys are within reach of attackers and "
                "some mailbox providers discount them"
            )
        return models.DKIM_RSA, key
    raise InvalidArgument("the key is neither RSA nor Ed25519, the two key types DKIM defines (RFC 8463)")


def new_private_key(algorithm: str):
    """A fresh RSA-2048 or Ed25519 private key."""
    if algorithm == models.DKIM_ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=RECOMMENDED_RSA_BITS)


def default_selector(taken: set[str], now: float | None = None) -> str:
    """pm<yyyymm><n>: the month it was made and the first n not taken for the domain."""
    month = time.strftime("%Y%m", time.gmtime(now))
    n = 1
    while f"pm{month}{n}" in taken:
        n += 1
    return f"pm{month}{n}"


def require_active_key(s: Store, account: Account, domain: str, what: str) -> str:
    """`domain` checked, when it is one with an ACTIVE key of the account (else
    FailedPrecondition naming the command that makes one); '' stays ''."""
    if not domain:
        return ""
    domain = check_domain(domain)
    if s.active_dkim_key(account.user_id, domain) is None:
        raise FailedPrecondition(
            f"the {what} {domain} has no active DKIM key in this account: generate one first "
            f"(poolmta dkim generate {domain}) and publish its TXT record"
        )
    return domain


class DkimKeys:
    """The rules of an account's DKIM keys."""

    store: Store
    dkim_master_key: bytes | None

    def generate_dkim_key(self, account: Account, domain: str, algorithm: str = "rsa",
                          selector: str = "") -> models.DkimKey:
        """A new RSA-2048 or Ed25519 key for `domain`, ACTIVE (the domain's previous
        ACTIVE key, if any, becomes PUBLISHED). Default selector pm<yyyymm><n>."""
        domain = check_domain(domain)
        algorithm = check_algorithm(algorithm)
        selector = check_selector(selector, domain) if selector else ""
        return self._add_dkim_key(account, domain, selector, algorithm, new_private_key(algorithm))

    def import_dkim_key(self, account: Account, domain: str, selector: str, pem: bytes) -> models.DkimKey:
        """An existing unencrypted PEM key (RSA 1024-4096 bits or Ed25519) for `domain`
        under `selector`, ACTIVE (the previous ACTIVE key becomes PUBLISHED)."""
        domain = check_domain(domain)
        if not selector:
            raise InvalidArgument("an imported key needs the selector its TXT record is published under")
        selector = check_selector(selector, domain)
        algorithm, key = parse_private_pem(bytes(pem))
        return self._add_dkim_key(account, domain, selector, algorithm, key)

    def list_dkim_keys_page(self, account: Account, page_size: int, page_token: str,
                            domain: str = "") -> paging.Page[models.DkimKey]:
        """One page of the account's keys, every state, by domain then age; only `domain`'s when given."""
        domain = check_domain(domain) if domain else ""
        wanted = paging.request(f"dkim:{domain}", page_size, page_token)
        with self.store.read() as s:
            return paging.fetched(wanted, (str, int), lambda after, limit: s.dkim_keys_page(
                account.user_id, after=after, limit=limit, domain=domain), lambda k: [k.domain, k.key_id])

    def get_dkim_key(self, account: Account, key_id: int) -> models.DkimKey:
        """The account's key `key_id`, or NotFound."""
        with self.store.read() as s:
            return _key(s, account, key_id)

    def rotate_dkim_key(self, account: Account, domain: str, selector: str = "") -> models.DkimKey:
        """A new ACTIVE key for `domain` with the algorithm of its ACTIVE one and a new
        selector; the old key becomes PUBLISHED (mail in flight still verifies)."""
        domain = check_domain(domain)
        selector = check_selector(selector, domain) if selector else ""
        with self.store.read() as s:
            active = s.active_dkim_key(account.user_id, domain)
        if active is None:
            raise FailedPrecondition(f"{domain} has no active DKIM key to rotate: poolmta dkim generate {domain}")
        return self._add_dkim_key(account, domain, selector, active.algorithm, new_private_key(active.algorithm))

    def retire_dkim_key(self, account: Account, key_id: int, *, force: bool = False) -> models.DkimKey:
        """PUBLISHED -> RETIRED (its TXT record may go). An ACTIVE key only with `force`,
        and never while a pool signs with its domain."""
        with self.store.write() as s:
            key = _key(s, account, key_id)
            if key.state == models.DKIM_RETIRED:
                return key
            if key.state == models.DKIM_ACTIVE:
                if not force:
                    raise FailedPrecondition(
                        f"key {key_id} is the ACTIVE key of {key.domain}: rotate first (poolmta dkim rotate "
                        f"{key.domain}), or retire it with --force to stop signing {key.domain}"
                    )
                _refuse_if_pools_sign(s, account, key, "retired")
            s.set_dkim_key_state(key_id, models.DKIM_RETIRED)
            if key.state == models.DKIM_ACTIVE:
                _bump_account_servers(s, account)
            return s.dkim_key(key_id)

    def delete_dkim_key(self, account: Account, key_id: int) -> None:
        """Forget a RETIRED key, its sealed private key included."""
        with self.store.write() as s:
            key = _key(s, account, key_id)
            if key.state != models.DKIM_RETIRED:
                _refuse_if_pools_sign(s, account, key, "deleted")
                raise FailedPrecondition(
                    f"key {key_id} is {key.state}: only a RETIRED key is deleted (its TXT record may still be "
                    f"needed by verifiers); retire it first (poolmta dkim retire {key_id})"
                )
            s.delete_dkim_key(key_id)

    def _add_dkim_key(self, account: Account, domain: str, selector: str, algorithm: str,
                      private_key) -> models.DkimKey:
        master = self._dkim_master()
        pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        with self.store.write() as s:
            taken = s.dkim_selectors(account.user_id, domain)
            selector = selector or default_selector(taken)
            if selector in taken:
                raise AlreadyExists(
                    f"selector {selector} is already used for {domain} in this account; choose another"
                )
            active = s.active_dkim_key(account.user_id, domain)
            if active is not None:
                # Demote first: the partial unique index allows one ACTIVE key at any moment.
                s.set_dkim_key_state(active.key_id, models.DKIM_PUBLISHED)
            sealed = dkim_seal.seal(master, pem, dkim_seal.key_aad(account.user_id, domain, selector))
            key_id = s.insert_dkim_key(user_id=account.user_id, domain=domain, selector=selector,
                                       algorithm=algorithm, sealed=sealed,
                                       public_key_b64=public_key_b64(private_key))
            _bump_account_servers(s, account)
            return s.dkim_key(key_id)

    def _dkim_master(self) -> bytes:
        if self.dkim_master_key is None:
            raise FailedPrecondition("this control plane has no DKIM master key (started without a data directory)")
        return self.dkim_master_key


def _key(s: Store, account: Account, key_id: int) -> models.DkimKey:
    key = s.dkim_key(key_id) if key_id > 0 else None
    if key is None or key.user_id != account.user_id:
        raise NotFound(f"no DKIM key with id {key_id}")
    return key


def _refuse_if_pools_sign(s: Store, account: Account, key: models.DkimKey, what: str) -> None:
    if key.state != models.DKIM_ACTIVE:
        return
    pools = s.pools_signing_with(account.user_id, key.domain)
    if pools:
        names = ", ".join(quoted(p.label) for p in pools)
        raise FailedPrecondition(
            f"key {key.key_id} signs {key.domain}, which pool(s) {names} sign with: it cannot be {what} until "
            f"they sign with another domain (poolmta pool signing POOL --domain D)"
        )


def _bump_account_servers(s: Store, account: Account) -> None:
    # The account's ACTIVE keys travel in the snapshots of the servers carrying it.
    for server_id in s.servers_of_account(account.user_id):
        s.bump_routing_version(server_id)
