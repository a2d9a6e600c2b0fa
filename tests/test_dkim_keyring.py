"""A worker's DKIM keyring, without processes: which key signs a message, what a
snapshot's keys become when the master key is missing or a key does not unseal
(logged without key material, nothing signed), and parsed keys reused across
snapshots."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from control.contract import dkim_seal
from control.contract.snapshot import DkimKeyRoute
from dataplane.dkim_keys import DkimKeyCache, Signing
from tests.dataplane_support import make_pool, make_snapshot

USER = 3


def _pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _route(master: bytes, domain: str, selector: str = "s1", user_id: int = USER, pem: bytes | None = None):
    sealed = dkim_seal.seal(master, pem or _pem(), dkim_seal.key_aad(user_id, domain, selector))
    return DkimKeyRoute(user_id, domain, selector, "ed25519-sha256", sealed)


def _snapshot(version: int, keys, **pool_fields):
    pool = replace(make_pool(25, [("127.0.0.17", 1)], user_id=USER), **pool_fields)
    return replace(make_snapshot(1, version, [pool], []), dkim_keys=tuple(keys))


def _mail(sender: str) -> bytes:
    return f"From: <{sender}>\r\nSubject: x\r\n\r\nbody\r\n".encode()


@pytest.fixture
def master(tmp_path) -> bytes:
    return dkim_seal.load_or_create_master_key(tmp_path)


def test_the_from_domain_or_a_parent_then_the_pool_domain_then_unsigned(tmp_path, master):
    keys = [_route(master, "example.com"), _route(master, "sub.example.com", "s2"), _route(master, "esp.example"),
            _route(master, "fbl.example"), _route(master, "other.example", user_id=USER + 1)]
    snap = _snapshot(1, keys, signing_domain="esp.example", feedback_signing_domain="fbl.example")
    keyring = DkimKeyCache(tmp_path).keyring(snap)
    pool = snap.pools[0]

    def chosen(sender: str) -> tuple[list[tuple[str, str]], str]:
        signing = keyring.signing(USER, pool, _mail(sender))
        return [(k.domain, k.selector) for k in signing.keys], signing.note

    assert chosen("a@x.sub.example.com") == ([("sub.example.com", "s2"), ("fbl.example", "s1")],
                                              "d=sub.example.com s=s2; d=fbl.example s=s1")
    assert chosen("a@news.example.com")[0] == [("example.com", "s1"), ("fbl.example", "s1")]
    # Another account's key for the From domain is not ours: the pool's domain signs.
    assert chosen("a@other.example")[0] == [("esp.example", "s1"), ("fbl.example", "s1")]
    # The feedback domain signing first is not signed twice.
    assert chosen("a@fbl.example")[0] == [("fbl.example", "s1")]
    bare = _snapshot(2, keys)
    bare_keyring = DkimKeyCache(tmp_path).keyring(bare)
    assert bare_keyring.signing(USER, bare.pools[0], _mail("a@other.example")).note == \
        "unsigned: no key for other.example"
    assert bare_keyring.signing(USER, bare.pools[0], b"Subject: no from\r\n\r\n").note == "unsigned: no From domain"
    # An account with no key at all: unsigned, said without reading the message.
    stranger = replace(bare.pools[0], user_id=USER + 7)
    assert bare_keyring.signing(USER + 7, stranger, _mail("a@example.com")) == \
        Signing((), "unsigned: the account has no DKIM key")


def test_no_master_key_or_a_key_that_does_not_open_signs_nothing_and_logs_no_key(tmp_path, master, caplog):
    pem = _pem()
    good = _route(master, "example.com", pem=pem)
    moved = DkimKeyRoute(USER + 1, good.domain, good.selector, good.algorithm, good.sealed_key)  # another account's row
    snap = _snapshot(1, [good, moved])
    caplog.set_level(logging.ERROR, "poolmta.dataplane.dkim")

    elsewhere = tmp_path / "no-master"
    assert len(DkimKeyCache(elsewhere).keyring(snap)) == 0
    assert "2 DKIM key(s) cannot sign" in caplog.text and "copy it from the control plane" in caplog.text

    caplog.clear()
    keyring = DkimKeyCache(tmp_path).keyring(snap)
    assert len(keyring) == 1
    assert keyring.signing(USER + 1, snap.pools[0], _mail("a@example.com")).keys == ()
    assert f"DKIM key of account {USER + 1} for example.com (selector s1) cannot sign" in caplog.text
    body = b"".join(pem.strip().splitlines()[1:-1]).decode()
    assert body[10:40] not in caplog.text and "PRIVATE" not in caplog.text


def test_parsed_keys_are_reused_across_snapshots_and_dropped_when_gone(tmp_path, master):
    first, second = _route(master, "example.com"), _route(master, "ed.example")
    cache = DkimKeyCache(tmp_path)
    pool = _snapshot(1, []).pools[0]

    def key_of(keyring, domain: str):
        return keyring.signing(USER, pool, _mail(f"a@{domain}")).keys[0]

    one = cache.keyring(_snapshot(1, [first, second]))
    two = cache.keyring(_snapshot(2, [first]))
    assert key_of(two, "example.com") is key_of(one, "example.com")
    assert two.signing(USER, pool, _mail("a@ed.example")).keys == ()
    three = cache.keyring(_snapshot(3, [first, second]))
    assert key_of(three, "ed.example") is not key_of(one, "ed.example")  # parsed again: it had left


def test_signatures_go_on_top_with_the_messages_own_line_ending(tmp_path, master):
    snap = _snapshot(1, [_route(master, "example.com")])
    keyring = DkimKeyCache(tmp_path).keyring(snap)
    crlf = _mail("a@example.com")
    signing = keyring.signing(USER, snap.pools[0], crlf)
    for message, eol in ((crlf, "\r\n"), (crlf.replace(b"\r\n", b"\n"), "\n")):
        signed = signing.apply(message, 1_800_000_000, eol)
        assert signed.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;") and signed.endswith(message)
        assert (b"\r" in signed) == (eol == "\r\n")
    unsigned = keyring.signing(USER, snap.pools[0], _mail("a@other.example"))
    assert unsigned.apply(crlf, 1_800_000_000) is crlf
