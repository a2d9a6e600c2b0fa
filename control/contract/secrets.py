"""Generated credentials: bridge secrets and API tokens.

Every secret here is generated with 256 bits of entropy, shown once, and stored as
`sha256$<hex>`. A slow password hash (scrypt, bcrypt) protects low-entropy human
passwords against guessing; a 256-bit random value cannot be guessed, and SMTP
AUTH runs once per connection at thousands of connections per second, so a single
SHA-256 is the right cost here.

The control plane generates secrets and stores their hashes; the data plane checks
a Bridge's secret at SMTP AUTH against the hash in the snapshot. Both must agree
on the stored form, so it lives in the contract.
"""

import hashlib
import hmac
import secrets

_SCHEME = "sha256$"


def generate_secret() -> str:
    """A new URL-safe secret with 256 bits of entropy that never starts with '-' or '_'
    (so it is never mistaken for an option on a command line)."""
    while True:
        token = secrets.token_urlsafe(32)
        if token[0].isalnum():
            return token


def hash_secret(secret: str) -> str:
    """The stored form of `secret`."""
    return _SCHEME + hashlib.sha256(secret.encode("utf-8")).hexdigest()


def verify_secret(secret: str, stored: str) -> bool:
    """True when `secret` matches the stored hash; constant time in the secret's value."""
    if not stored.startswith(_SCHEME):
        return False
    candidate = hash_secret(secret)
    return hmac.compare_digest(candidate.encode("ascii"), stored.encode("ascii"))


def generate_username(prefix: str = "br") -> str:
    """A new SMTP username: prefix, dash, 12 lowercase base32 characters."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return prefix + "-" + "".join(secrets.choice(alphabet) for _ in range(12))
