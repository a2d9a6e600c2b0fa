"""DKIM key sealing, the master key file, the domain rules and the snapshot's DKIM
fields, without a control plane."""

from __future__ import annotations

import os
import stat

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.contract import dkim_seal, snapshot
from control.errors import InvalidArgument
from control.registry import dkim


def test_the_master_key_is_created_once_0600_and_read_back(tmp_path):
    old_umask = os.umask(0)
    try:
        key = dkim_seal.load_or_create_master_key(tmp_path)
    finally:
        os.umask(old_umask)
    path = dkim_seal.master_key_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 32
    assert dkim_seal.load_or_create_master_key(tmp_path) == key == dkim_seal.load_master_key(tmp_path)
    path.chmod(0o644)
    assert dkim_seal.load_master_key(tmp_path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_missing_or_malformed_master_key_says_what_to_do(tmp_path):
    with pytest.raises(dkim_seal.DkimSealError, match="copy it from the control plane's data directory"):
        dkim_seal.load_master_key(tmp_path)
    dkim_seal.master_key_path(tmp_path).write_bytes(b"short")
    with pytest.raises(dkim_seal.DkimSealError, match="not a 32-byte DKIM master key"):
        dkim_seal.load_master_key(tmp_path)


@given(pem=st.binary(max_size=4000), user_id=st.integers(1, 2**40), selector=st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True))
def test_sealed_keys_open_only_with_their_master_key_and_binding(pem, user_id, selector):
    master = bytes(range(32))
    aad = dkim_seal.key_aad(user_id, "example.com", selector)
    sealed = dkim_seal.seal(master, pem, aad)
    assert dkim_seal.unseal(master, sealed, aad) == pem
    assert len(pem) < 8 or pem not in sealed
    for wrong_master, wrong_aad in ((bytes(32), aad), (master, dkim_seal.key_aad(user_id + 1, "example.com", selector)),
                                    (master, dkim_seal.key_aad(user_id, "example.org", selector)),
                                    (master, dkim_seal.key_aad(user_id, "example.com", selector + "x"))):
        with pytest.raises(dkim_seal.DkimSealError):
            dkim_seal.unseal(wrong_master, sealed, wrong_aad)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(dkim_seal.DkimSealError):
        dkim_seal.unseal(master, tampered, aad)


def test_two_seals_of_one_key_differ():
    master, aad = bytes(32), dkim_seal.key_aad(1, "example.com", "s1")
    assert dkim_seal.seal(master, b"pem", aad) != dkim_seal.seal(master, b"pem", aad)
    with pytest.raises(dkim_seal.DkimSealError, match="known format"):
        dkim_seal.unseal(master, b"\x02" + bytes(40), aad)


def test_domains_and_selectors():
    assert dkim.check_domain(" Mail.Example.COM. ") == "mail.example.com"
    assert dkim.check_domain("bücher.example") == "xn--bcher-kva.example"
    for bad in ("com", "a..b", "under_score.example", "-x.example", "x" * 64 + ".example", ".".join(["a"] * 127) + "x"):
        with pytest.raises(InvalidArgument):
            dkim.check_domain(bad)
    assert dkim.check_selector("Pm2026.EU", "example.com") == "pm2026.eu"
    with pytest.raises(InvalidArgument, match="longer than 253"):
        dkim.check_selector(".".join(["s" * 60] * 4), "example.com")
    assert dkim.default_selector(set(), now=1_795_000_000) == "pm2026111"
    assert dkim.default_selector({"pm2026111", "pm2026112"}, now=1_795_000_000) == "pm2026113"


def test_snapshot_dkim_fields_round_trip_and_old_snapshots_decode_without_them():
    new = snapshot.Snapshot(
        server_id=1, version=2, hostname="mta1.example.net", zone="US-1",
        pools=(snapshot.PoolRoute(smtp_id=5, user_id=1, internal_name="p", feed_type="", headers=(), ips=(),
                                  signing_domain="example.com", feedback_signing_domain="esp.example.net"),),
        dkim_keys=(snapshot.DkimKeyRoute(user_id=1, domain="example.com", selector="s1", algorithm="ed25519-sha256",
                                         sealed_key=b"\x01sealed\x00bytes"),),
    )
    assert snapshot.decode(snapshot.encode(new)) == new
    doc = msgpack.unpackb(snapshot.encode(new), raw=False)
    del doc["dkim_keys"]
    del doc["pools"][0]["signing_domain"]
    del doc["pools"][0]["feedback_signing_domain"]
    old = snapshot.decode(msgpack.packb(doc, use_bin_type=True))
    assert old.dkim_keys == () and (old.pools[0].signing_domain, old.pools[0].feedback_signing_domain) == ("", "")
    doc = msgpack.unpackb(snapshot.encode(new), raw=False)
    doc["dkim_keys"][0]["sealed_key"] = "text"
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode(msgpack.packb(doc, use_bin_type=True))
