"""The DKIM key record a sending domain publishes: the one definition both planes use.

The control plane shows it to the operator when a key is generated or imported;
the data plane's tests serve it to `dkimpy` to verify what the signer produced.
The record lives at `<selector>._domainkey.<domain>` (RFC 6376 section 3.6.2.1)
as one TXT string of tag=value pairs (section 3.6.1); a DNS server splits a
string longer than 255 octets into several, which verifiers join.
"""

from __future__ import annotations

import base64
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .bounce_domain import LABEL

__all__ = ["SELECTOR", "dns_txt_record", "key_type", "record_name", "txt_record_text"]

# RFC 6376 section 3.1: selector = sub-domain *( "." sub-domain ), the LDH labels of
# RFC 5321 4.1.2 (A-labels for IDNs), compared case-insensitively: kept lower case.
SELECTOR = re.compile(rf"{LABEL}(?:\.{LABEL})*")


def key_type(key: object) -> str:
    """The record's k= value for a cryptography RSA or Ed25519 key, private or public:
    "rsa", or "ed25519" (RFC 8463 section 4.2). TypeError for any other object."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    raise TypeError(f"a DKIM key is an RSA or Ed25519 key, not {type(key).__name__}")


def dns_txt_record(key: object) -> str:
    """The exact TXT record text to publish for `key` (an RSA or Ed25519 key, private
    or public; only the public half is written), e.g. "v=DKIM1; k=ed25519; p=...".

    p= is base64 of the public key: for RSA the DER SubjectPublicKeyInfo (RFC 6376
    section 3.6.1), for Ed25519 the raw 32-octet key (RFC 8463 section 4.2).
    TypeError for any other object.
    """
    kind = key_type(key)
    public = key.public_key() if hasattr(key, "private_bytes") else key
    if kind == "rsa":
        data = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return txt_record_text(kind, base64.b64encode(data).decode("ascii"))


def txt_record_text(kind: str, public_key_b64: str) -> str:
    """The TXT record text for a public key already in its p= form (base64, as
    `dns_txt_record` writes it): `kind` is "rsa" or "ed25519" (RFC 6376 3.6.1)."""
    return f"v=DKIM1; k={kind}; p={public_key_b64}"


def record_name(selector: str, domain: str) -> str:
    """The DNS name the record for `selector` of `domain` is published at (RFC 6376
    section 3.6.2.1): `<selector>._domainkey.<domain>`."""
    return f"{selector}._domainkey.{domain}"
