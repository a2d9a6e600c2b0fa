"""DKIM private keys sealed at rest and in transit: the one rule both planes hold.

A DKIM private key is never stored or sent in clear. The control plane seals it
(AES-256-GCM) under the data directory's master key file `dkim.master` (32 random
bytes, mode 0600) before it reaches SQLite; the same sealed bytes travel in the
routing snapshot through Redis; a data-plane worker reads the same master file
and unseals the keys of its snapshot. A data plane on another host needs a copy
of that file (same mode, same owner): without it it cannot sign.

The associated data binds a sealed key to its (user_id, domain, selector): a
sealed key copied to another account's, domain's or selector's row fails to
unseal instead of signing for it.

Sealed format: one version byte (1), the 96-bit random nonce, the GCM ciphertext
and tag. The plaintext is the key's unencrypted PKCS#8 PEM.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import file_modes

MASTER_KEY_FILE = "dkim.master"
MASTER_KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits: the GCM nonce size NIST SP 800-38D recommends
_FORMAT = b"\x01"
_AAD_PREFIX = b"poolmta-dkim-key-v1"


class DkimSealError(ValueError):
    """A master key file that cannot be used, or sealed bytes that do not open with it."""


def master_key_path(data_dir: Path) -> Path:
    """Where the data directory keeps its DKIM master key."""
    return Path(data_dir) / MASTER_KEY_FILE


def load_or_create_master_key(data_dir: Path) -> bytes:
    """The data directory's master key, created (32 random bytes, 0600) on first use.
    Control plane side; the key is never logged."""
    path = master_key_path(data_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, file_modes.PRIVATE_FILE_MODE)
    except FileExistsError:
        return load_master_key(data_dir)
    try:
        os.fchmod(fd, file_modes.PRIVATE_FILE_MODE)
        key = os.urandom(MASTER_KEY_BYTES)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_master_key(data_dir: Path) -> bytes:
    """The data directory's master key, read only (data plane side); DkimSealError
    saying what to do when it is missing or not a master key. Tightens a file found
    looser than 0600."""
    path = master_key_path(data_dir)
    file_modes.tighten(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise DkimSealError(
            f"no DKIM master key at {path}: the control plane creates it on first start; on another "
            "host copy it from the control plane's data directory (mode 0600)"
        ) from None
    if len(key) != MASTER_KEY_BYTES:
        raise DkimSealError(f"{path} is {len(key)} bytes, not a {MASTER_KEY_BYTES}-byte DKIM master key")
    return key


def key_aad(user_id: int, domain: str, selector: str) -> bytes:
    """The associated data binding a sealed key to its account, domain and selector."""
    return b"\0".join((_AAD_PREFIX, str(int(user_id)).encode(), domain.encode("ascii"), selector.encode("ascii")))


def seal(master: bytes, private_pem: bytes, aad: bytes) -> bytes:
    """`private_pem` encrypted and authenticated under `master`, bound to `aad`."""
    nonce = os.urandom(NONCE_BYTES)
    return _FORMAT + nonce + AESGCM(master).encrypt(nonce, private_pem, aad)


def unseal(master: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The private PEM `seal` sealed; DkimSealError when `sealed` was not sealed under
    `master` with this `aad` (another key, another account, domain or selector) or was
    altered."""
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != _FORMAT:
        raise DkimSealError("not a sealed DKIM key of a known format")
    nonce, body = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
    try:
        return AESGCM(master).decrypt(nonce, body, aad)
    except InvalidTag:
        raise DkimSealError(
            "sealed DKIM key does not open: another master key, or a key of another account, domain or "
            "selector"
        ) from None
