"""DKIM key management through the real gRPC API: generation and import, rotation,
retirement and deletion, pool signing domains, and the keys' safety (sealed in
SQLite and in the snapshots in Redis, never returned)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import grpc
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import dkim_seal
from tests.control_support import current_snapshot, expect_error, stored_dkim_keys

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND
SHORT_RSA = Path(__file__).parent / "data" / "dkim" / "rsa512-traditional.pem"


def _p(record: str) -> bytes:
    tags = dict(part.strip().split("=", 1) for part in record.split(";"))
    return base64.b64decode(tags["p"])


def _rsa_pem(bits: int = 2048, fmt=serialization.PrivateFormat.PKCS8, password: bytes | None = None) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def _ed25519_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _public_of(pem: bytes, algorithm: int) -> bytes:
    public = serialization.load_pem_private_key(pem, None).public_key()
    if algorithm == pb.ED25519_SHA256:
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_generate_rsa_and_ed25519_returns_the_record_of_the_stored_key(acme, control_plane):
    rsa_key = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="Example.COM."))
    ed_key = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(
        domain="mail.example.com", algorithm=pb.ED25519_SHA256, selector="Ed1"))
    assert (rsa_key.domain, rsa_key.algorithm, rsa_key.state) == ("example.com", pb.RSA_SHA256, pb.DKIM_ACTIVE)
    assert rsa_key.selector.startswith("pm") and rsa_key.selector.endswith("1")
    assert rsa_key.dns_record_name == f"{rsa_key.selector}._domainkey.example.com"
    assert rsa_key.dns_txt_record.startswith("v=DKIM1; k=rsa; p=")
    assert serialization.load_der_public_key(_p(rsa_key.dns_txt_record)).key_size == 2048
    assert (ed_key.selector, ed_key.dns_record_name) == ("ed1", "ed1._domainkey.mail.example.com")
    assert ed_key.dns_txt_record.startswith("v=DKIM1; k=ed25519; p=") and len(_p(ed_key.dns_txt_record)) == 32

    _, stored = stored_dkim_keys(control_plane)
    assert _public_of(stored[rsa_key.selector], pb.RSA_SHA256) == _p(rsa_key.dns_txt_record)
    assert _public_of(stored["ed1"], pb.ED25519_SHA256) == _p(ed_key.dns_txt_record)
    listed = (await acme.dkim.ListDkimKeys(pb.ListDkimKeysRequest())).keys
    assert [k.key_id for k in listed] == [rsa_key.key_id, ed_key.key_id]
    assert "PRIVATE" not in str(listed) and not any(f.name == "private_key_pem" for f in pb.DkimKey.DESCRIPTOR.fields)
    assert await acme.dkim.GetDkimKey(pb.GetDkimKeyRequest(key_id=ed_key.key_id)) == ed_key


async def test_domain_selector_and_algorithm_are_checked(acme):
    for domain in ("", "localhost", "exa mple.com", "-bad.example.com", "a" * 64 + ".com", "x." * 127 + "com"):
        await expect_error(acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain=domain)), INVALID)
    idn = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="bücher.example", algorithm=pb.ED25519_SHA256))
    assert idn.domain == "xn--bcher-kva.example"
    for selector in ("bad_sel", "-x", "a..b", "a" * 64):
        await expect_error(acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com", selector=selector)),
                           INVALID, "selector")
    await expect_error(acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com", algorithm=9)),
                       INVALID, "RSA_SHA256")


@pytest.mark.parametrize("make_pem, algorithm", [
    (lambda: _rsa_pem(), pb.RSA_SHA256),
    (lambda: _rsa_pem(1024, serialization.PrivateFormat.TraditionalOpenSSL), pb.RSA_SHA256),
    (_ed25519_pem, pb.ED25519_SHA256),
], ids=["rsa-pkcs8", "rsa-traditional-1024", "ed25519"])
async def test_import_pkcs8_traditional_and_ed25519(acme, control_plane, make_pem, algorithm):
    pem = make_pem()
    key = await acme.dkim.ImportDkimKey(pb.ImportDkimKeyRequest(domain="example.com", selector="s2019",
                                                                private_key_pem=pem))
    assert (key.selector, key.algorithm, key.state) == ("s2019", algorithm, pb.DKIM_ACTIVE)
    assert _p(key.dns_txt_record) == _public_of(pem, algorithm)
    assert stored_dkim_keys(control_plane)[1]["s2019"].startswith(b"-----BEGIN PRIVATE KEY-----")


async def test_import_refuses_encrypted_short_and_garbage_pem_without_echoing_it(acme):
    def request(pem: bytes, selector: str = "s1"):
        return acme.dkim.ImportDkimKey(pb.ImportDkimKeyRequest(domain="example.com", selector=selector,
                                                               private_key_pem=pem))

    encrypted = _rsa_pem(password=b"hunter22")
    details = await expect_error(request(encrypted), INVALID, "encrypted", "decrypt it first")
    assert "MII" not in details
    short = SHORT_RSA.read_bytes()  # cryptography refuses to make one: made by `openssl genrsa 512`
    details = await expect_error(request(short), INVALID, "512 bits", "2048 is recommended")
    assert short.decode()[40:80] not in details
    garbage = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IHNlY3JldCBzZWNyZXQ=\n-----END PRIVATE KEY-----\n"
    details = await expect_error(request(garbage), INVALID, "not a PEM private key")
    assert "c2VjcmV0" not in details and len(details) < 200
    await expect_error(request(_ed25519_pem(), selector=""), INVALID, "selector")
    assert (await acme.dkim.ListDkimKeys(pb.ListDkimKeysRequest())).keys == []


async def test_rotation_keeps_the_old_key_published_and_the_new_one_active(acme):
    first = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com", algorithm=pb.ED25519_SHA256))
    second = await acme.dkim.RotateDkimKey(pb.RotateDkimKeyRequest(domain="example.com"))
    assert second.selector != first.selector and second.algorithm == pb.ED25519_SHA256
    listed = {k.key_id: k.state for k in (await acme.dkim.ListDkimKeys(pb.ListDkimKeysRequest(domain="EXAMPLE.com"))).keys}
    assert listed == {first.key_id: pb.DKIM_PUBLISHED, second.key_id: pb.DKIM_ACTIVE}
    await expect_error(acme.dkim.RotateDkimKey(pb.RotateDkimKeyRequest(domain="other.example")), PRECONDITION,
                       "poolmta dkim generate other.example")
    await expect_error(acme.dkim.RotateDkimKey(pb.RotateDkimKeyRequest(domain="example.com", selector=first.selector)),
                       grpc.StatusCode.ALREADY_EXISTS, "selector")
    imported = await acme.dkim.ImportDkimKey(pb.ImportDkimKeyRequest(domain="example.com", selector="imp",
                                                                     private_key_pem=_rsa_pem()))
    states = {k.key_id: k.state for k in (await acme.dkim.ListDkimKeys(pb.ListDkimKeysRequest())).keys}
    assert states == {first.key_id: pb.DKIM_PUBLISHED, second.key_id: pb.DKIM_PUBLISHED,
                      imported.key_id: pb.DKIM_ACTIVE}


async def test_retire_and_delete_rules(acme):
    first = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com", algorithm=pb.ED25519_SHA256))
    await expect_error(acme.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=first.key_id)), PRECONDITION,
                       "ACTIVE", "poolmta dkim rotate example.com", "--force")
    await expect_error(acme.dkim.DeleteDkimKey(pb.DeleteDkimKeyRequest(key_id=first.key_id)), PRECONDITION,
                       "only a RETIRED key", "retire it first")
    second = await acme.dkim.RotateDkimKey(pb.RotateDkimKeyRequest(domain="example.com"))
    retired = await acme.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=first.key_id))
    assert retired.state == pb.DKIM_RETIRED and retired.HasField("retire_time")
    await acme.dkim.DeleteDkimKey(pb.DeleteDkimKeyRequest(key_id=first.key_id))
    await expect_error(acme.dkim.GetDkimKey(pb.GetDkimKeyRequest(key_id=first.key_id)), NOT_FOUND)
    forced = await acme.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=second.key_id, force=True))
    assert forced.state == pb.DKIM_RETIRED
    again = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com", algorithm=pb.ED25519_SHA256))
    # The default selector is the first free one: a deleted key's may come back (with its new record).
    assert again.state == pb.DKIM_ACTIVE and again.selector == first.selector != second.selector


async def test_another_accounts_keys_are_not_found(acme, make_account):
    other, _ = await make_account("globex", pb.ESSENTIAL)
    key = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com", algorithm=pb.ED25519_SHA256))
    for call in (other.dkim.GetDkimKey(pb.GetDkimKeyRequest(key_id=key.key_id)),
                 other.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=key.key_id, force=True)),
                 other.dkim.DeleteDkimKey(pb.DeleteDkimKeyRequest(key_id=key.key_id))):
        await expect_error(call, NOT_FOUND, f"no DKIM key with id {key.key_id}")
    assert (await other.dkim.ListDkimKeys(pb.ListDkimKeysRequest())).keys == []
    # Every tier signs: the ESSENTIAL account has its own key for the same domain.
    own = await other.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com", algorithm=pb.ED25519_SHA256))
    assert own.key_id != key.key_id and own.state == pb.DKIM_ACTIVE


async def test_pool_signing_domains_need_an_active_key(acme, server, redis_url):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    assert (pool.signing_domain, pool.feedback_signing_domain) == ("", "")
    request = pb.SetPoolSigningDomainsRequest(smtp_id=pool.smtp_id, signing_domain="example.com",
                                              feedback_signing_domain="esp.example.net")
    await expect_error(acme.pools.SetPoolSigningDomains(request), PRECONDITION,
                       "signing domain example.com", "poolmta dkim generate example.com")
    key = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com", algorithm=pb.ED25519_SHA256))
    await expect_error(acme.pools.SetPoolSigningDomains(request), PRECONDITION,
                       "feedback signing domain esp.example.net")
    await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="esp.example.net", algorithm=pb.ED25519_SHA256))
    changed = await acme.pools.SetPoolSigningDomains(request)
    assert (changed.signing_domain, changed.feedback_signing_domain) == ("example.com", "esp.example.net")
    route = current_snapshot(redis_url, server.server_id).pool(pool.smtp_id)
    assert (route.signing_domain, route.feedback_signing_domain) == ("example.com", "esp.example.net")

    await expect_error(acme.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=key.key_id, force=True)),
                       PRECONDITION, "'promo'", "poolmta pool signing")
    rotated = await acme.dkim.RotateDkimKey(pb.RotateDkimKeyRequest(domain="example.com"))
    await acme.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=key.key_id))  # PUBLISHED: no pool depends on it
    await expect_error(acme.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=rotated.key_id, force=True)),
                       PRECONDITION, "'promo'")
    await expect_error(acme.dkim.DeleteDkimKey(pb.DeleteDkimKeyRequest(key_id=rotated.key_id)), PRECONDITION, "'promo'")
    cleared = await acme.pools.SetPoolSigningDomains(pb.SetPoolSigningDomainsRequest(smtp_id=pool.smtp_id))
    assert (cleared.signing_domain, cleared.feedback_signing_domain) == ("", "")
    await acme.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=rotated.key_id, force=True))
    await expect_error(acme.pools.SetPoolSigningDomains(pb.SetPoolSigningDomainsRequest(smtp_id=999)), NOT_FOUND)


async def test_snapshots_carry_only_sealed_active_keys_of_accounts_on_the_server(
        acme, make_account, admin, server, control_plane, redis_url):
    other_server = await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta2.example.net",
                                                                                     zone="EU-1"))
    await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    rsa_key = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.com"))
    rotated = await acme.dkim.RotateDkimKey(pb.RotateDkimKeyRequest(domain="example.com"))
    ed_key = await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="example.org", algorithm=pb.ED25519_SHA256))
    elsewhere, _ = await make_account("globex", pb.PRO)
    await elsewhere.pools.CreatePool(pb.CreatePoolRequest(label="p", server_id=other_server.server_id))
    await elsewhere.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="globex.example", algorithm=pb.ED25519_SHA256))

    snap = current_snapshot(redis_url, server.server_id)
    assert {(k.user_id, k.domain, k.selector, k.algorithm) for k in snap.dkim_keys} == {
        (1, "example.com", rotated.selector, "rsa-sha256"), (1, "example.org", ed_key.selector, "ed25519-sha256")}
    assert [k.domain for k in current_snapshot(redis_url, other_server.server_id).dkim_keys] == ["globex.example"]

    master, stored = stored_dkim_keys(control_plane)
    by_domain = {k.domain: k for k in snap.dkim_keys}
    route = by_domain["example.com"]
    pem = dkim_seal.unseal(master, route.sealed_key, dkim_seal.key_aad(1, "example.com", rotated.selector))
    assert pem == stored[rotated.selector]
    for aad in (dkim_seal.key_aad(2, "example.com", rotated.selector), dkim_seal.key_aad(1, "example.org", rotated.selector),
                dkim_seal.key_aad(1, "example.com", rsa_key.selector)):
        with pytest.raises(dkim_seal.DkimSealError, match="does not open"):
            dkim_seal.unseal(master, route.sealed_key, aad)
    with pytest.raises(dkim_seal.DkimSealError):
        dkim_seal.unseal(bytes(32), route.sealed_key, dkim_seal.key_aad(1, "example.com", rotated.selector))

    # Nothing of any private key, in PEM, DER or raw form, sits anywhere in Redis or in the database file.
    secrets = []
    for pem in stored.values():
        private = serialization.load_pem_private_key(pem, None)
        der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        secrets += [pem, der, pem.splitlines()[1], pem.splitlines()[2]]
        if isinstance(private, ed25519.Ed25519PrivateKey):
            secrets.append(private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                 serialization.NoEncryption()))
    client = redis.Redis.from_url(redis_url)
    try:
        values = []
        for name in client.scan_iter(count=1000):
            kind = client.type(name)
            if kind == b"string":
                values.append(client.get(name))
            elif kind == b"hash":
                values += [k + v for k, v in client.hgetall(name).items()]
            elif kind == b"list":
                values += client.lrange(name, 0, -1)
            elif kind in (b"set", b"zset"):
                values += list(client.smembers(name)) if kind == b"set" else client.zrange(name, 0, -1)
            elif kind == b"stream":
                values += [repr(e).encode() for e in client.xrange(name)]
    finally:
        client.close()
    assert values
    for secret in secrets:
        assert not any(secret in value for value in values)
    data_dir = control_plane.config.data_dir
    database = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith("poolmta.db"))
    for secret in secrets:
        assert secret not in database
    master_path = dkim_seal.master_key_path(data_dir)
    assert stat.S_IMODE(master_path.stat().st_mode) == 0o600 and len(master_path.read_bytes()) == 32


async def test_a_key_change_publishes_a_new_snapshot_for_essential_bridges(make_account, admin, server, redis_url):
    await admin.servers.ProvisionSharedIp(pb.ProvisionSharedIpRequest(server_id=server.server_id, address="127.0.0.9"))
    small, _ = await make_account("smallco", pb.ESSENTIAL)
    await small.bridges.CreateBridge(pb.CreateBridgeRequest(name="app", server_id=server.server_id))
    before = current_snapshot(redis_url, server.server_id)
    assert before.dkim_keys == ()
    key = await small.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain="small.example", algorithm=pb.ED25519_SHA256))
    after = current_snapshot(redis_url, server.server_id)
    assert after.version > before.version
    assert [(k.domain, k.selector) for k in after.dkim_keys] == [("small.example", key.selector)]
    await small.dkim.RetireDkimKey(pb.RetireDkimKeyRequest(key_id=key.key_id, force=True))
    assert current_snapshot(redis_url, server.server_id).dkim_keys == ()


async def test_private_keys_never_reach_the_log(acme, caplog):
    caplog.set_level("DEBUG")
    pem = _rsa_pem()
    await acme.dkim.ImportDkimKey(pb.ImportDkimKeyRequest(domain="example.com", selector="s1", private_key_pem=pem))
    await expect_error(acme.dkim.ImportDkimKey(pb.ImportDkimKeyRequest(
        domain="example.com", selector="s2", private_key_pem=pem[:200] + b"garbage")), INVALID)
    await acme.dkim.RotateDkimKey(pb.RotateDkimKeyRequest(domain="example.com"))
    logged = caplog.text
    assert "PRIVATE" not in logged
    for line in pem.decode().splitlines()[1:-1]:
        assert line not in logged
