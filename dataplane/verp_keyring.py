"""The VERP keyring: the secret keys that sign return-path addresses (see `dataplane.verp`).

One file in the data directory, `<data_dir>/verp.keys` by convention, mode 0600,
JSON:

    {"format": "poolmta-verp-keyring", "version": 1, "current": 2,
     "keys": [{"id": 1, "secret": "<base64 of 32 bytes>", "created": 1767225600.0,
               "superseded": 1767830400.0},
              {"id": 2, "secret": "...", "created": 1767830400.0, "superseded": null}]}

- Several keys, each with a one-octet id (0..255) that every address carries, so a
  bounce names the key that signed it. One key is `current`: it signs new addresses.
- `rotate()` adds a new current key and keeps the old ones, which still verify:
  rotation never breaks mail already in flight. `superseded` is when a key stopped
  being current; once that is longer ago than the codec's max age, every address it
  signed has expired anyway, and `prune(max_age)` removes it.
- `retire(key_id)` removes a key now (a leaked key): its addresses are refused at once.

Writes are atomic and durable (write a temporary file in the same directory with mode
0600, fsync, rename over the keyring, fsync the directory), so a crash leaves the old
keyring or the new one, never a torn file. Every read-modify-write holds an exclusive
flock on `<path>.lock`, and re-reads the file under it, so worker processes and the
CLI can rotate concurrently without losing each other's keys. A worker that did not
rotate sees new keys through `reload_if_changed()` (the codec calls it when an
address names a key it does not know).

Bounds: the file is read only up to `MAX_FILE_BYTES` (64 KiB; 256 keys take ~25 KiB)
and holds at most 256 keys (the id is one octet). A keyring that is missing its
current key, malformed, too large, or readable by group or others is refused with
`KeyringError`, never silently replaced: a new keyring would refuse every bounce for
mail in flight.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import math
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .spool.durable import replace_durably

FORMAT = "poolmta-verp-keyring"
VERSION = 1
KEYRING_FILE = "verp.keys"
SECRET_BYTES = 32  # HMAC-SHA256 keys as long as the hash (RFC 2104 section 3)
MAX_KEY_ID = 255  # one octet in every address
MAX_FILE_BYTES = 64 * 1024
FILE_MODE = 0o600
LOCK_SUFFIX = ".lock"


class KeyringError(Exception):
    """The keyring file cannot be read, written or changed as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class VerpKey:
    """One signing key: its id (0..255), secret, creation time and when it stopped
    being current (None while it is current), both in seconds since the epoch."""

    id: int
    secret: bytes
    created: float
    superseded: float | None = None

    def __repr__(self) -> str:  # never print the secret into a log
        return f"VerpKey(id={self.id}, created={self.created}, superseded={self.superseded})"


class VerpKeyring:
    """The keys of one keyring file; see the module docstring."""

    def __init__(self, path: Path, keys: dict[int, VerpKey], current: int, signature: tuple[int, int, int]) -> None:
        self.path = path
        self._keys = keys
        self._current = current
        self._signature = signature

    # --- reading ----------------------------------------------------------

    @classmethod
    def load_or_create(cls, path: Path | str) -> VerpKeyring:
        """The keyring at `path`, created with one fresh key (mode 0600) if the file is
        absent. KeyringError if it exists but is not a valid keyring, or cannot be written."""
        path = Path(path)
        with _locked(path):
            if not path.exists():
                now = time.time()
                key = VerpKey(id=1, secret=secrets.token_bytes(SECRET_BYTES), created=now)
                _write(path, {key.id: key}, key.id)
            return cls(path, *_read(path))

    @property
    def current(self) -> VerpKey:
        """The key that signs new addresses."""
        return self._keys[self._current]

    def key(self, key_id: int) -> VerpKey | None:
        """The key with this id, or None if the keyring does not hold it."""
        return self._keys.get(key_id)

    @property
    def ids(self) -> tuple[int, ...]:
        """The ids of every key that still verifies, ascending."""
        return tuple(sorted(self._keys))

    def reload_if_changed(self) -> bool:
        """Re-read the file if another process rewrote it since this object last read it;
        True if it did. KeyringError if the new file is not a valid keyring (the keys
        held so far stay in use)."""
        try:
            signature = _signature(os.stat(self.path))
        except OSError as exc:
            raise KeyringError(f"cannot stat the VERP keyring {self.path}: {exc.strerror}") from exc
        if signature == self._signature:
            return False
        with _locked(self.path):
            self._keys, self._current, self._signature = _read(self.path)
        return True

    # --- changing ---------------------------------------------------------

    def rotate(self) -> VerpKey:
        """Add a new key and make it current; the previous keys keep verifying.
        Returns the new key. KeyringError when all 256 ids are in use (prune first)."""
        with _locked(self.path):
            keys, current, _ = _read(self.path)
            now = time.time()
            new_id = _free_id(keys, current)
            keys[current] = _superseded(keys[current], now)
            keys[new_id] = VerpKey(id=new_id, secret=secrets.token_bytes(SECRET_BYTES), created=now)
            self._commit(keys, new_id)
            return self._keys[new_id]

    def retire(self, key_id: int) -> None:
        """Remove a key now: addresses it signed are refused from here on.
        KeyringError for the current key (rotate first) or an unknown id."""
        with _locked(self.path):
            keys, current, _ = _read(self.path)
            if key_id == current:
                raise KeyringError(f"key {key_id} is the current signing key; rotate before retiring it")
            if key_id not in keys:
                raise KeyringError(f"the VERP keyring holds no key {key_id}")
            del keys[key_id]
            self._commit(keys, current)

    def prune(self, max_age: float, now: float | None = None) -> tuple[int, ...]:
        """Remove the keys superseded more than `max_age` seconds ago (every address they
        signed is older than that, so it has expired anyway); returns their ids. Pass the
        codec's max age: a process that signed with the old key until its next look at
        the file (the codec's reload interval) loses that much of its addresses' life."""
        if not max_age > 0:
            raise KeyringError(f"max age must be positive, got {max_age}")
        now = time.time() if now is None else now
        with _locked(self.path):
            keys, current, signature = _read(self.path)
            gone = tuple(sorted(
                k.id for k in keys.values() if k.superseded is not None and now - k.superseded > max_age
            ))
            if gone:
                for key_id in gone:
                    del keys[key_id]
                self._commit(keys, current)
            else:
                self._keys, self._current, self._signature = keys, current, signature
            return gone

    def _commit(self, keys: dict[int, VerpKey], current: int) -> None:
        _write(self.path, keys, current)
        self._keys, self._current, self._signature = _read(self.path)


# --- the file ---------------------------------------------------------------


class _locked:
    """An exclusive flock on `<path>.lock` for one read-modify-write (blocking: the
    holders only read and write a small file)."""

    def __init__(self, path: Path) -> None:
        self._lock_path = path.with_name(path.name + LOCK_SUFFIX)
        self._fd = -1

    def __enter__(self) -> None:
        try:
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            if self._fd >= 0:
                os.close(self._fd)
            raise KeyringError(f"cannot lock the VERP keyring ({self._lock_path}): {exc.strerror}") from exc

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)  # closing releases the flock


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    # A rewrite is a rename of a new file: the inode changes even within one mtime tick.
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _free_id(keys: dict[int, VerpKey], current: int) -> int:
    for step in range(1, MAX_KEY_ID + 2):
        candidate = (current + step) % (MAX_KEY_ID + 1)
        if candidate not in keys:
            return candidate
    raise KeyringError(f"the VERP keyring holds {len(keys)} keys, every id in use; prune or retire old keys first")


def _superseded(key: VerpKey, now: float) -> VerpKey:
    return key if key.superseded is not None else VerpKey(key.id, key.secret, key.created, now)


def _read(path: Path) -> tuple[dict[int, VerpKey], int, tuple[int, int, int]]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyringError(f"cannot open the VERP keyring {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise KeyringError(
                f"the VERP keyring {path} is readable by others (mode {stat.filemode(st.st_mode)}); "
                f"run chmod 600 on it"
            )
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyringError(f"cannot read the VERP keyring {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise KeyringError(f"the VERP keyring {path} is larger than {MAX_FILE_BYTES} bytes")
    keys, current = _parse(data, path)
    return keys, current, _signature(st)


def _parse(data: bytes, path: Path) -> tuple[dict[int, VerpKey], int]:
    def bad(why: str) -> KeyringError:
        return KeyringError(
            f"{path} is not a valid VERP keyring ({why}); restore it from a backup "
            f"(a new keyring would refuse the bounces of mail in flight)"
        )

    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f"no \"format\": \"{FORMAT}\"")
    if doc.get("version") != VERSION:
        raise bad(f"version {str(doc.get('version'))[:20]!r}, this poolmta reads version {VERSION}")
    entries = doc.get("keys")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_KEY_ID + 1:
        raise bad(f"\"keys\" must be a list of 1 to {MAX_KEY_ID + 1} keys")
    keys: dict[int, VerpKey] = {}
    for entry in entries:
        key = _parse_key(entry, bad)
        if key.id in keys:
            raise bad(f"key id {key.id} appears twice")
        keys[key.id] = key
    current = doc.get("current")
    if type(current) is not int or current not in keys:
        raise bad(f"\"current\" {str(current)[:20]!r} names no key in the file")
    if keys[current].superseded is not None:
        raise bad(f"the current key {current} is marked superseded")
    return keys, current


def _parse_key(entry: object, bad: Callable[[str], KeyringError]) -> VerpKey:
    if not isinstance(entry, dict):
        raise bad("a key is not an object")
    key_id, secret, created, superseded = (entry.get(n) for n in ("id", "secret", "created", "superseded"))
    if type(key_id) is not int or not 0 <= key_id <= MAX_KEY_ID:
        raise bad(f"key id {str(key_id)[:20]!r} is not an integer 0..{MAX_KEY_ID}")
    try:
        raw = base64.b64decode(secret, validate=True) if isinstance(secret, str) else b""
    except binascii.Error:
        raw = b""
    if len(raw) != SECRET_BYTES:
        raise bad(f"key {key_id}: the secret is not {SECRET_BYTES} bytes of base64")
    for name, value in (("created", created), ("superseded", superseded)):
        if not ((type(value) in (int, float) and math.isfinite(value)) or (name == "superseded" and value is None)):
            raise bad(f"key {key_id}: {name!r} is not a time in seconds")
    return VerpKey(id=key_id, secret=raw, created=float(created),
                   superseded=None if superseded is None else float(superseded))


def _write(path: Path, keys: dict[int, VerpKey], current: int) -> None:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "current": current,
        "keys": [
            {"id": k.id, "secret": base64.b64encode(k.secret).decode("ascii"),
             "created": k.created, "superseded": k.superseded}
            for k in sorted(keys.values(), key=lambda k: k.id)
        ],
    }
    data = json.dumps(doc, indent=1).encode("ascii") + b"\n"
    # The lock is held, so a leftover temporary file is a crashed writer's: replace it.
    try:
        replace_durably(path, data, FILE_MODE)
    except OSError as exc:
        raise KeyringError(f"cannot write the VERP keyring {path}: {exc.strerror}") from exc
