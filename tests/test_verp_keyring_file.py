"""The VERP keyring file (`dataplane.verp_keyring`): created 0600, rewritten
atomically, rotated without losing keys (also by several processes at once), and
refused, never replaced, when it is damaged."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import verp_keyring
from dataplane.verp_keyring import MAX_FILE_BYTES, KeyringError, VerpKeyring

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def doc(path: Path) -> dict:
    return json.loads(path.read_text())


def test_created_when_absent_with_mode_0600_whatever_the_umask(tmp_path: Path):
    path = tmp_path / "verp.keys"
    old = os.umask(0)
    try:
        keyring = VerpKeyring.load_or_create(path)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert keyring.ids == (keyring.current.id,) and len(keyring.current.secret) == 32
    stored = doc(path)
    assert (stored["format"], stored["version"], stored["current"]) == ("poolmta-verp-keyring", 1, keyring.current.id)
    assert base64.b64decode(stored["keys"][0]["secret"]) == keyring.current.secret
    assert stored["keys"][0]["superseded"] is None
    again = VerpKeyring.load_or_create(path)
    assert again.current == keyring.current  # loaded, not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verp.keys", "verp.keys.lock"]


def test_the_secret_never_reaches_a_log(tmp_path: Path):
    key = VerpKeyring.load_or_create(tmp_path / "verp.keys").current
    assert key.secret.hex() not in repr(key) and str(key.secret) not in repr(key)


def test_rotate_adds_a_current_key_and_keeps_the_old_ones(tmp_path: Path):
    path = tmp_path / "verp.keys"
    keyring = VerpKeyring.load_or_create(path)
    first = keyring.current
    inode = path.stat().st_ino
    second = keyring.rotate()
    assert second.id == first.id + 1 and second.secret != first.secret
    assert keyring.current == second and keyring.ids == (first.id, second.id)
    assert keyring.key(first.id).superseded is not None and keyring.key(first.id).secret == first.secret
    # Rewritten by rename (atomic), mode kept, no temporary file left behind.
    assert path.stat().st_ino != inode and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verp.keys", "verp.keys.lock"]
    assert VerpKeyring.load_or_create(path).ids == (first.id, second.id)


def test_key_ids_wrap_around_and_run_out(tmp_path: Path):
    path = tmp_path / "verp.keys"
    keyring = VerpKeyring.load_or_create(path)
    ids = [keyring.rotate().id for _ in range(255)]
    assert ids[:3] == [2, 3, 4] and ids[-2:] == [255, 0]  # id 1 was the first key
    assert len(keyring.ids) == 256
    with pytest.raises(KeyringError, match="every id in use"):
        keyring.rotate()
    keyring.retire(1)
    assert keyring.rotate().id == 1


def test_retire_and_prune(tmp_path: Path):
    path = tmp_path / "verp.keys"
    keyring = VerpKeyring.load_or_create(path)
    a = keyring.current.id
    b = keyring.rotate().id
    c = keyring.rotate().id
    with pytest.raises(KeyringError, match="current signing key"):
        keyring.retire(c)
    with pytest.raises(KeyringError, match="no key 99"):
        keyring.retire(99)
    superseded_b = keyring.key(b).superseded
    assert keyring.prune(max_age=3600, now=superseded_b + 3599) == ()
    assert keyring.prune(max_age=3600, now=superseded_b + 3601) == (a, b)
    assert keyring.ids == (c,) and VerpKeyring.load_or_create(path).ids == (c,)
    with pytest.raises(KeyringError, match="positive"):
        keyring.prune(max_age=0)
    assert keyring.prune(max_age=1, now=10**12) == ()  # never the current key


def test_two_holders_never_lose_each_others_keys(tmp_path: Path):
    path = tmp_path / "verp.keys"
    one, two = VerpKeyring.load_or_create(path), VerpKeyring.load_or_create(path)
    k1 = one.rotate()
    k2 = two.rotate()  # re-reads under the lock, so k1 survives
    assert set(VerpKeyring.load_or_create(path).ids) == {1, k1.id, k2.id}
    assert one.reload_if_changed() is True and one.current == k2
    assert one.reload_if_changed() is False


def test_concurrent_rotation_by_several_processes(tmp_path: Path):
    path = tmp_path / "verp.keys"
    VerpKeyring.load_or_create(path)
    script = (
        "import sys\nfrom dataplane.verp_keyring import VerpKeyring\n"
        "k = VerpKeyring.load_or_create(sys.argv[1])\nfor _ in range(10):\n    k.rotate()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    keyring = VerpKeyring.load_or_create(path)
    assert len(keyring.ids) == 41 and keyring.current.superseded is None
    assert sum(keyring.key(i).superseded is None for i in keyring.ids) == 1


def test_a_failed_write_leaves_the_old_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "verp.keys"
    keyring = VerpKeyring.load_or_create(path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(verp_keyring.os, "replace", crash)
    with pytest.raises(KeyringError, match="No space left"):
        keyring.rotate()
    monkeypatch.undo()
    assert path.read_bytes() == before and keyring.ids == (1,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verp.keys", "verp.keys.lock"]


def test_a_crashed_writers_temporary_file_is_replaced(tmp_path: Path):
    path = tmp_path / "verp.keys"
    keyring = VerpKeyring.load_or_create(path)
    stale = tmp_path / f"verp.keys.{os.getpid()}.tmp"
    stale.write_text("half a keyring")
    keyring.rotate()
    assert not stale.exists() and len(VerpKeyring.load_or_create(path).ids) == 2


def write(path: Path, content: bytes | str, file_mode: int = 0o600) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    path.chmod(file_mode)


def valid_doc() -> dict:
    secret = base64.b64encode(bytes(32)).decode()
    return {"format": "poolmta-verp-keyring", "version": 1, "current": 1,
            "keys": [{"id": 1, "secret": secret, "created": 1.0, "superseded": None}]}


def damaged_docs():
    yield "not JSON", b"{"
    yield "not JSON", b"\xff\xfe"
    yield "format", json.dumps([1, 2])
    yield "format", json.dumps({**valid_doc(), "format": "other"})
    yield "version", json.dumps({**valid_doc(), "version": 2})
    yield "keys", json.dumps({**valid_doc(), "keys": []})
    yield "keys", json.dumps({**valid_doc(), "keys": "x"})
    yield "names no key", json.dumps({**valid_doc(), "current": 2})
    yield "names no key", json.dumps({**valid_doc(), "current": True})
    key = valid_doc()["keys"][0]
    for bad_key, why in (
        ({**key, "id": 256}, "not an integer"), ({**key, "id": "1"}, "not an integer"),
        ({**key, "secret": "AAAA"}, "32 bytes"), ({**key, "secret": "!!"}, "32 bytes"),
        ({**key, "secret": 5}, "32 bytes"),
        ({**key, "created": "yesterday"}, "created"), ({**key, "created": float("nan")}, "created"),
        ({**key, "superseded": 5.0}, "marked superseded"), (7, "not an object"),
    ):
        yield why, json.dumps({**valid_doc(), "keys": [bad_key]})
    yield "appears twice", json.dumps({**valid_doc(), "keys": [key, key]})


@pytest.mark.parametrize(("why", "content"), list(damaged_docs()))
def test_a_damaged_keyring_is_refused_and_left_alone(tmp_path: Path, why: str, content):
    path = tmp_path / "verp.keys"
    write(path, content)
    before = path.read_bytes()
    with pytest.raises(KeyringError, match=why) as caught:
        VerpKeyring.load_or_create(path)
    assert "restore it from a backup" in str(caught.value)
    assert path.read_bytes() == before


def test_refused_when_others_may_read_it_or_it_is_huge(tmp_path: Path):
    path = tmp_path / "verp.keys"
    write(path, json.dumps(valid_doc()), 0o640)
    with pytest.raises(KeyringError, match="chmod 600"):
        VerpKeyring.load_or_create(path)
    write(path, json.dumps(valid_doc()) + " " * MAX_FILE_BYTES)
    with pytest.raises(KeyringError, match="larger than"):
        VerpKeyring.load_or_create(path)
    with pytest.raises(KeyringError, match="cannot lock"):
        VerpKeyring.load_or_create(tmp_path / "missing-dir" / "verp.keys")
