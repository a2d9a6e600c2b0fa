"""DKIM signatures for outgoing mail (RFC 6376; Ed25519 per RFC 8463): the signing
machinery, independent of where keys come from and of when the Bridge signs.

`sign(message, key)` returns the complete `DKIM-Signature:` field, CRLF included,
for the caller to put on top of the message: relaxed/relaxed canonicalisation
(on the `_fastpath` twins), sha256, the headers of `SIGNED_HEADERS` that are
present, From oversigned, no `l=`. `from_domain` and `signing_domains` say which
domains may sign a message's From for DMARC alignment.

The header block is read with byte searches, as `_fastpath.inject` reads it: a
line ends at LF (a CR before it belongs to the ending), a line starting with SP
or HTAB continues the field above, and the first empty line ends the block (the
whole message when there is none).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import time
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from _fastpath import relaxed_body, relaxed_header
from control.contract.bounce_domain import DOMAIN
from control.contract.dkim_record import SELECTOR
from control.contract.json_records import quoted

__all__ = [
    "MIN_RSA_BITS",
    "SIGNED_HEADERS",
    "DkimKey",
    "DkimKeyError",
    "from_domain",
    "sign",
    "signing_domains",
]

# The fields signed when present, in h= order. Each names what a recipient reads or
# what decides how the message is shown and unsubscribed from (RFC 6376 section
# 5.4.1's list, plus Feedback-ID, which Gmail's feedback loop wants signed, and the
# one-click unsubscribe pair of RFC 8058, which requires both signed). Every present
# instance is signed, bottom-up (section 5.4.2); From once more than it appears
# (section 8.15), so a From added on the way breaks the signature. Not signed:
# Received and other trace fields (added on every hop), the client's own
# DKIM-Signature fields (kept as they are; signing over them gains nothing), and the
# stamped attribution fields x-virtual-mta, x-feedtype, x-zone, x-serverid: they are
# the platform's own routing notes, not claims a receiver evaluates, and leaving them
# out keeps the signature valid should a later stage restamp or strip them.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
)
_SIGNED = frozenset(SIGNED_HEADERS)

# RFC 8301 section 3.2: verifiers must not accept RSA keys under 1024 bits, so a
# smaller key could only make signatures that fail. What we generate is 2048 bits,
# the size RFC 8301 says signers should use: far beyond reach of factoring today,
# its TXT record (about 400 characters) still published everywhere, and signing
# costs about a seventh of what a 4096-bit key would.
MIN_RSA_BITS = 1024

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")

# RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters without the CRLF.
_LINE = 78
_FIELD = b"DKIM-Signature"


class DkimKeyError(ValueError):
    """A key, domain or selector that cannot sign; the message says why and never
    quotes key material."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A private key that signs for `domain` under `selector`.

    `domain` is lower-case ASCII (an IDN as its A-label), `selector` lower-case,
    `algorithm` "rsa-sha256" or "ed25519-sha256"; build it with `from_private_key`
    or `from_pem`, which check all four. The key never appears in its repr.
    """

    domain: str
    selector: str
    algorithm: str
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_private_key(cls, domain: str, selector: str, private_key: object) -> DkimKey:
        """The signing key for a cryptography RSA or Ed25519 private key; the
        algorithm follows from the key type. DkimKeyError for another key type, an
        RSA key under MIN_RSA_BITS, or a domain or selector that is not a DNS name."""
        if isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < MIN_RSA_BITS:
                raise DkimKeyError(
                    f"the RSA key has {private_key.key_size} bits; DKIM verifiers refuse keys "
                    f"under {MIN_RSA_BITS} bits (RFC 8301 section 3.2): use a 2048-bit key"
                )
            algorithm = "rsa-sha256"
        elif isinstance(private_key, ed25519.Ed25519PrivateKey):
            algorithm = "ed25519-sha256"
        else:
            raise DkimKeyError(
                f"a DKIM key is an RSA or Ed25519 private key, not {type(private_key).__name__}"
            )
        return cls(_signing_domain(domain), _selector(selector), algorithm, private_key)

    @classmethod
    def from_pem(cls, domain: str, selector: str, pem: bytes) -> DkimKey:
        """The signing key for an unencrypted PEM private key (PKCS#8 or the
        traditional RSA form). DkimKeyError when `pem` is not one, and as
        `from_private_key` for the rest."""
        try:
            private_key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # Never the exception text or chain: they may quote the key.
            raise DkimKeyError(
                "not an unencrypted PEM private key (expected -----BEGIN PRIVATE KEY----- "
                "or -----BEGIN RSA PRIVATE KEY-----)"
            ) from None
        return cls.from_private_key(domain, selector, private_key)


def _signing_domain(domain: str) -> str:
    name = _a_label(domain) if isinstance(domain, str) else None
    if name is None:
        raise DkimKeyError(f"{quoted(str(domain))} is not a domain name a DKIM key can sign for")
    return name


def _selector(selector: str) -> str:
    if not isinstance(selector, str) or not SELECTOR.fullmatch(selector.lower()):
        raise DkimKeyError(
            f"{quoted(str(selector))} is not a DKIM selector: one or more DNS labels of "
            "letters, digits and hyphens (RFC 6376 section 3.1)"
        )
    return selector.lower()


def _a_label(domain: str) -> str | None:
    """`domain` lower-case, one trailing dot dropped, IDN labels as A-labels (the
    stdlib's IDNA 2003 codec); None when it is not a DNS host name."""
    name = domain.removesuffix(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    name = name.lower()
    return name if len(name) <= 253 and DOMAIN.fullmatch(name) else None


# --- reading the header block ----------------------------------------------------


# A field: a line (after its LF) that does not start with WSP, its name up to the
# first colon, its value to the end of its last continuation line (RFC 5322 2.2,
# 2.2.3). A line without a colon is not a field; the lines continuing it go with
# it. Anchored on a literal LF, which the regex engine scans for quickly.
_FIELD_START = re.compile(rb"\n(?![ \t])([^:\n]*):([^\n]*(?:\n[ \t][^\n]*)*)")


def _header_fields(message: bytes) -> tuple[list[tuple[bytes, bytes, bytes]], int]:
    """(fields, body offset): each field as (lower-case name, name, value), the
    value from after the colon to the end of its last folded line, line ending
    included."""
    if message[:1] == b"\n" or message[:2] == b"\r\n":
        return [], message.index(b"\n") + 1  # an empty header block
    # The first empty line: CRLF or LF right after a line's LF. A bare-LF one is
    # looked for only before the first CRLF one, so the body is never scanned.
    crlf = message.find(b"\n\r\n")
    limit = len(message) if crlf < 0 else crlf
    bare = message.find(b"\n\n", 0, limit)
    body = bare + 2 if bare >= 0 else limit if crlf < 0 else crlf + 3
    block = b"\n" + message[:body]
    fields = [
        (name.rstrip(b" \t").lower(), name, value + b"\n")  # the LF the next match starts on
        for name, value in _FIELD_START.findall(block)
    ]
    if fields and not block.endswith(b"\n"):  # the last line had no line ending
        lower, name, value = fields[-1]
        fields[-1] = (lower, name, value[:-1])
    return fields, body


# --- signing ----------------------------------------------------------------------


def sign(message: bytes, key: DkimKey, *, timestamp: int | None = None) -> bytes:
    """The `DKIM-Signature:` field, ending with CRLF, that signs `message` with `key`.

    Put on top of the message unchanged, it verifies (RFC 6376 section 6): tags
    v, a, c=relaxed/relaxed, d, s, t (`timestamp`, default now), h, bh, b, in that
    order, lines folded at 78 characters. The message is not modified, and fields
    the client signed, its own DKIM-Signature included, are left as they are.
    """
    fields, body_start = _header_fields(message)
    body_hash = hashlib.sha256(relaxed_body(message[body_start:])).digest()

    by_name: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for lower, name, value in fields:
        if lower in _SIGNED:
            by_name.setdefault(lower, []).append((name, value))
    signed_names: list[bytes] = []
    canonical: list[bytes] = []
    for lower in SIGNED_HEADERS:
        present = by_name.get(lower, ())
        # Section 5.4.2: the k-th listing of a name signs its k-th instance from
        # the bottom; section 8.15: From listed once more, signing "no more From".
        count = len(present) + (lower == b"from")
        if count:
            signed_names += [lower] * count
            for name, value in reversed(present):
                canonical.append(relaxed_header(name, value) + b"\r\n")

    tags = [
        "v=1",
        f"a={key.algorithm}",
        "c=relaxed/relaxed",
        f"d={key.domain}",
        f"s={key.selector}",
        f"t={int(time.time()) if timestamp is None else int(timestamp)}",
    ]
    lines = ["DKIM-Signature:"]
    for tag in tags:
        _fold(lines, " ", tag + ";")
    names = b":".join(signed_names).decode("ascii")
    if len(lines[-1]) + len(names) + 4 <= _LINE:
        lines[-1] += f" h={names};"
    else:  # h= may fold around its colons (section 3.5)
        _fold(lines, " ", "h=" + names.split(":", 1)[0])
        for name in names.split(":")[1:]:
            _fold(lines, "", ":" + name)
        lines[-1] += ";"
    _fold(lines, " ", f"bh={base64.b64encode(body_hash).decode('ascii')};")
    _fold(lines, " ", "b=")
    # Section 3.7: the signature field is hashed last, as it will read with b= empty
    # and without its final CRLF; b= is the last tag, so that is the text so far.
    unsigned = "\r\n".join(lines).encode("ascii")
    canonical.append(relaxed_header(_FIELD, unsigned[len(_FIELD) + 1 :]))
    signature = _signature(b"".join(canonical), key)
    _fold_base64(lines, base64.b64encode(signature).decode("ascii"))
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _signature(data: bytes, key: DkimKey) -> bytes:
    if key.algorithm == "rsa-sha256":
        return key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    # RFC 8463 section 3: PureEdDSA (Ed25519) over the SHA-256 hash of the data.
    return key.private_key.sign(hashlib.sha256(data).digest())


def _fold(lines: list[str], separator: str, text: str) -> None:
    """Append `text` to the field after `separator`, or on a new line (folding white
    space: CRLF SP) when the line would pass 78 characters."""
    if len(lines[-1]) + len(separator) + len(text) <= _LINE:
        lines[-1] += separator + text
    else:
        lines.append(" " + text)


def _fold_base64(lines: list[str], value: str) -> None:
    # Base64 values may carry folding white space anywhere (section 3.5, b= and bh=):
    # fill the current line, then whole lines.
    room = max(_LINE - len(lines[-1]), 0)
    lines[-1] += value[:room]
    for start in range(room, len(value), _LINE - 1):
        lines.append(" " + value[start : start + _LINE - 1])


# --- which domain signs ----------------------------------------------------------


def from_domain(message: bytes) -> str | None:
    """The domain of the message's one From address (RFC 5322 section 3.6.2), lower
    case, an IDN as its A-label; None when there is no From field, several From
    fields or addresses, or the address cannot be read or has no DNS domain."""
    values = [value for lower, _, value in _header_fields(message)[0] if lower == b"from"]
    if len(values) != 1:
        return None
    try:
        text = values[0].decode("utf-8")  # RFC 6532: UTF-8 in header fields
    except UnicodeDecodeError:
        return None
    addresses = email.utils.getaddresses([text.replace("\r", "").replace("\n", "")])
    if len(addresses) != 1:
        return None
    local, at, domain = addresses[0][1].rpartition("@")
    # getaddresses also joins what RFC 5322 does not allow ("a@exa mple.com" gives
    # example.com): the domain must be in the field as written.
    if not local or not at or domain.endswith(".") or "@" + domain not in text:
        return None
    return _a_label(domain)


def signing_domains(domain: str) -> list[str]:
    """The domains that may sign for a From domain, most specific first: the domain,
    then each parent down to two labels ("a.b.example.com", "b.example.com",
    "example.com"); a one-label domain alone.

    DMARC relaxed alignment accepts a d= with the From domain's organisational
    domain. Without a public-suffix list we cannot tell where that is, so the list
    may end in a public suffix ("x.co.uk" gives "co.uk" last); the caller signs with
    the first domain the account holds an active key for, and no account holds a
    key for a public suffix.
    """
    labels = domain.split(".")
    return [".".join(labels[start:]) for start in range(max(len(labels) - 1, 1))]
