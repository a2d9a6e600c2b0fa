"""DKIM end to end: keys made through the real gRPC API, a real data plane (its own
copy of the master key, as on another host) signing at acceptance, delivery to the
sink through MX records of the loopback DNS server, and every signature the sink
received verified by dkimpy against the TXT record that DNS server publishes, the
record the API returned.

Which domain signs: the From domain's key (RSA-2048), a parent's for a From in a
subdomain (Ed25519), the pool's signing domain when the From domain has none, the
feedback signature on top of either; a client's own signature kept below ours;
no key at all: delivered unsigned, counted, and said so in the message's events.
Rotation with mail in the spool: what was signed before verifies with the old
selector's (still published) record, what comes after with the new one. And no
private key byte in the worker's log, the spool or Redis.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import urllib.request
from pathlib import Path

import dkim
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import dkim_seal, file_modes, rediskeys
from tests.control_support import stored_dkim_keys
from tests.dataplane_support import events_of, send_all, stat
from tests.dns_support import DnsStub
from tests.support import wait_until

IPS = ("127.0.0.21", "127.0.0.22")
DESTINATION = "dest.test"


class Setup:
    """The account's pools, Bridges and keys, the DNS server publishing their records,
    and the data plane and sink once started."""

    def __init__(self, acme, server, control_plane, redis_url, tmp_path: Path) -> None:
        self.acme = acme
        self.server = server
        self.control_plane = control_plane
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.dns = DnsStub({(DESTINATION, "A"): ["127.0.0.1"]})
        self.bridges: dict[str, tuple[str, str, int]] = {}  # label -> (username, secret, smtp_id)
        self.store = tmp_path / "received"
        self.dp_dir = tmp_path / "dp"

    async def pool(self, label: str, address: str) -> int:
        pool = await self.acme.pools.CreatePool(pb.CreatePoolRequest(label=label, server_id=self.server.server_id))
        await self.acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=address, smtp_id=pool.smtp_id,
                                                              server_id=self.server.server_id))
        made = await self.acme.bridges.CreateBridge(pb.CreateBridgeRequest(name=f"{label}-app", smtp_id=pool.smtp_id))
        self.bridges[label] = (made.bridge.username, made.secret, pool.smtp_id)
        return pool.smtp_id

    def publish(self, key: pb.DkimKey) -> pb.DkimKey:
        """Publish a key's record as its owner would, where the API said."""
        self.dns.publish_txt(key.dns_record_name, key.dns_txt_record)
        return key

    async def generate(self, domain: str, algorithm=pb.RSA_SHA256) -> pb.DkimKey:
        return self.publish(await self.acme.dkim.GenerateDkimKey(
            pb.GenerateDkimKeyRequest(domain=domain, algorithm=algorithm)))

    def copy_master_key(self) -> None:
        """The data plane's own copy of the master key (0600), as on another host."""
        file_modes.private_dir(self.dp_dir)
        target = dkim_seal.master_key_path(self.dp_dir)
        shutil.copyfile(dkim_seal.master_key_path(self.control_plane.config.data_dir), target)
        target.chmod(file_modes.PRIVATE_FILE_MODE)

    async def wait_routing(self) -> None:
        """Until the snapshot the data plane serves is the newest published one."""
        def served() -> bool:
            status = rediskeys.worker_acks_key(self.server.server_id)
            r = redis.Redis.from_url(self.redis_url)
            try:
                current = int(r.get(rediskeys.snapshot_current_key(self.server.server_id)) or 0)
                acks = [int(v.decode().partition(":")[0]) for v in r.hgetall(status).values()]
            finally:
                r.close()
            return bool(acks) and all(version >= current for version in acks)
        assert await asyncio.to_thread(wait_until, served, 20)

    async def send(self, label: str, messages: list[tuple[str, bytes]]) -> dict[str, str]:
        username, secret, _ = self.bridges[label]
        plan = [(key, [f"{key}@{DESTINATION}"], raw) for key, raw in messages]
        return await asyncio.to_thread(send_all, self.plane.port, username, secret, plan, sessions=1)

    def send_rest(self, label: str, message: dict) -> str:
        """POST one JSON message to the data plane's REST Bridge as `label`'s Bridge; its id."""
        username, secret, _ = self.bridges[label]
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.plane.http_port}/v1/messages", data=json.dumps(message).encode(),
            headers={"Content-Type": "application/json",
                     "Authorization": "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 202
            return json.loads(reply.read())["id"]

    async def start(self, start_dataplane, start_sink, *, delivery: bool = True) -> None:
        if not hasattr(self, "sink"):
            self.sink = await asyncio.to_thread(start_sink, "--store", str(self.store))
        self.plane = await asyncio.to_thread(
            start_dataplane, self.redis_url, self.server.server_id, data_dir=self.dp_dir, delivery=delivery,
            args=["--dns-server", f"127.0.0.1:{self.dns.port}", "--mx-port", str(self.sink.port),
                  "--retry-schedule", "1h"])
        await self.wait_routing()

    async def received(self, n: int) -> dict[str, bytes]:
        """The messages the sink stored once there are `n`, by the key in their Subject."""
        def stored() -> list[Path]:
            return sorted(self.store.glob("*.eml")) if self.store.exists() else []
        assert await asyncio.to_thread(wait_until, lambda: len(stored()) >= n, 30), self.plane.log()
        found = {}
        for path in stored():
            raw = path.read_bytes()
            found[re.search(rb"^Subject: case (\S+)", raw, re.M).group(1).decode()] = raw
        return found

    def close(self) -> None:
        self.dns.close()


@pytest.fixture
async def setup(acme, server, control_plane, redis_url, tmp_path):
    made = Setup(acme, server, control_plane, redis_url, tmp_path)
    yield made
    made.close()


def mail(key: str, sender: str, *, extra: bytes = b"", body: bytes = b"Hello.\r\n") -> bytes:
    return (f"From: Sender <{sender}>\r\nTo: <{key}@{DESTINATION}>\r\nSubject: case {key}\r\n"
            f"Message-ID: <{key}@poolmta.test>\r\n").encode() + extra + b"\r\n" + body


def signatures(raw: bytes, setup: Setup) -> list[tuple[str, str]]:
    """(d, s) of every DKIM-Signature on the message, top first, each verified by dkimpy
    against the loopback DNS (asserts they all verify)."""
    count = len(re.findall(rb"^DKIM-Signature:", raw, re.M | re.I))
    found = []
    for index in range(count):
        verifier = dkim.DKIM(raw)
        assert verifier.verify(idx=index, dnsfunc=setup.dns.txt_lookup), (index, raw[:2000])
        found.append((verifier.domain.decode(), verifier.selector.decode()))
    return found


def client_signed(message: bytes, setup: Setup) -> bytes:
    """The message with the client's own signature (dkimpy, its own key and record) on top."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    setup.dns.publish_txt("client._domainkey.client.example", f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")
    return dkim.sign(message, b"client", b"client.example", pem, canonicalize=(b"relaxed", b"relaxed")) + message


async def test_every_message_verifies_with_the_domain_that_should_sign_it(setup, start_dataplane, start_sink):
    plain = await setup.pool("plain", IPS[0])
    esp = await setup.pool("esp", IPS[1])
    own = await setup.generate("example.com")  # RSA-2048
    parent = await setup.generate("ed.example", pb.ED25519_SHA256)
    pool_key = await setup.generate("esp.example.net", pb.ED25519_SHA256)
    feedback = await setup.generate("fbl.example.org")
    await setup.acme.pools.SetPoolSigningDomains(pb.SetPoolSigningDomainsRequest(
        smtp_id=esp, signing_domain="esp.example.net", feedback_signing_domain="fbl.example.org"))
    setup.copy_master_key()
    await setup.start(start_dataplane, start_sink)

    ids = await setup.send("plain", [
        ("own", mail("own", "news@example.com", body=b"8-bit \xc3\xa9t\xc3\xa9  \r\n\r\n\r\n")),
        ("parent", mail("parent", "a@mail.ed.example", extra=b"Subject-Extra: x\r\n\tfolded\r\n")),
        ("client", client_signed(mail("client", "news@example.com"), setup)),
        ("unsigned", mail("unsigned", "a@nokey.example")),
        # Bare LF as the client wrote it (its SMTP library may send CRLF; either way it verifies).
        ("barelf", mail("barelf", "news@example.com").replace(b"\r\n", b"\n")),
    ])
    ids |= await setup.send("esp", [
        ("pooldomain", mail("pooldomain", "a@nokey.example", body=b"")),
        ("ownfeedback", mail("ownfeedback", "b@example.com")),
    ])
    ids["rest"] = await asyncio.to_thread(setup.send_rest, "plain", {  # the REST Bridge signs alike
        "from": "News <news@example.com>", "to": [f"rest@{DESTINATION}"], "subject": "case rest", "text": "Hello."})
    got = await setup.received(8)
    expect = {
        "rest": [("example.com", own.selector)],
        "barelf": [("example.com", own.selector)],
        "own": [("example.com", own.selector)],
        "parent": [("ed.example", parent.selector)],
        "client": [("example.com", own.selector), ("client.example", "client")],
        "unsigned": [],
        "pooldomain": [("esp.example.net", pool_key.selector), ("fbl.example.org", feedback.selector)],
        "ownfeedback": [("example.com", own.selector), ("fbl.example.org", feedback.selector)],
    }
    assert {key: signatures(raw, setup) for key, raw in got.items()} == expect
    assert ("client._domainkey.client.example", "TXT") in setup.dns.queries

    # The unsigned message: counted on its pool, said so in its events; the others' events name their d= and s=.
    r = redis.Redis.from_url(setup.redis_url)
    try:
        def counted() -> dict[int, int]:
            return {smtp_id: stat(r, rediskeys.counter_key(setup.server.server_id, smtp_id), "dkim_unsigned")
                    for smtp_id in (plain, esp)}

        assert await asyncio.to_thread(wait_until, lambda: counted() == {plain: 1, esp: 0}, 10), counted()
        assert await asyncio.to_thread(wait_until, lambda: all(events_of(r, i) for i in ids.values()), 10)
        events = {key: events_of(r, ids[key]) for key in ids}
    finally:
        r.close()
    assert {e["dkim"] for e in events["unsigned"]} == {"unsigned: no key for nokey.example"}
    assert {e["dkim"] for e in events["own"]} == {f"d=example.com s={own.selector}"}
    assert {e["dkim"] for e in events["pooldomain"]} == {
        f"d=esp.example.net s={pool_key.selector}; d=fbl.example.org s={feedback.selector}"}
    status = await setup.acme.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id=ids["unsigned"]))
    assert [e.dkim for e in status.events] == ["unsigned: no key for nokey.example"]
    stats = await setup.acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=plain))
    assert (stats.sent, stats.dkim_unsigned) == (6, 1)


async def test_mail_signed_before_a_rotation_verifies_with_the_old_selector(
        setup, start_dataplane, start_sink, control_plane):
    await setup.pool("plain", IPS[0])
    old = await setup.generate("example.com", pb.ED25519_SHA256)
    setup.copy_master_key()
    # Accepted and signed, then held in the spool: delivery is off.
    await setup.start(start_dataplane, start_sink, delivery=False)
    await setup.send("plain", [(f"before{n}", mail(f"before{n}", "a@example.com")) for n in range(3)])
    await asyncio.to_thread(setup.plane.stop)

    new = setup.publish(await setup.acme.dkim.RotateDkimKey(pb.RotateDkimKeyRequest(domain="example.com")))
    listed = {k.selector: k.state for k in (await setup.acme.dkim.ListDkimKeys(pb.ListDkimKeysRequest())).keys}
    assert listed == {old.selector: pb.DKIM_PUBLISHED, new.selector: pb.DKIM_ACTIVE}
    await setup.start(start_dataplane, start_sink)  # delivers what the spool holds
    await setup.send("plain", [(f"after{n}", mail(f"after{n}", "a@example.com")) for n in range(3)])
    got = await setup.received(6)
    assert {key: signatures(raw, setup) for key, raw in got.items()} == {
        **{f"before{n}": [("example.com", old.selector)] for n in range(3)},
        **{f"after{n}": [("example.com", new.selector)] for n in range(3)},
    }


async def test_no_private_key_in_the_log_the_spool_or_redis(setup, start_dataplane, start_sink, control_plane):
    await setup.pool("plain", IPS[0])
    await setup.generate("example.com")
    await setup.generate("ed.example", pb.ED25519_SHA256)
    setup.copy_master_key()
    await setup.start(start_dataplane, start_sink, delivery=False)
    await setup.send("plain", [("a", mail("a", "a@example.com")), ("b", mail("b", "b@ed.example"))])
    log = setup.plane.log()
    assert "serving snapshot" in log

    master, stored = stored_dkim_keys(control_plane)
    secrets: list[bytes] = []
    for pem in stored.values():
        private = serialization.load_pem_private_key(pem, None)
        der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        body = b"".join(pem.strip().splitlines()[1:-1])
        # From the middle: the first characters are the same in every key of a kind.
        middle = len(body) // 2
        secrets += [pem, body[middle - 20:middle + 20], body[-40:], der[-32:], base64.b64encode(der[-32:])]
    secrets.append(master)

    # The data directory but for the master key and the TLS directory (the Bridge's own certificate key).
    spool_bytes = b"".join(p.read_bytes() for p in setup.dp_dir.rglob("*")
                           if p.is_file() and p.name != "dkim.master" and "tls" not in p.relative_to(setup.dp_dir).parts)
    assert b"DKIM-Signature:" in spool_bytes
    r = redis.Redis.from_url(setup.redis_url)
    try:
        redis_bytes = b"".join(r.dump(k) or b"" for k in r.keys("*"))
    finally:
        r.close()
    for haystack in (log.encode(), spool_bytes, redis_bytes):
        for secret in secrets:
            assert secret not in haystack
    assert b"PRIVATE KEY" not in spool_bytes + redis_bytes + log.encode()
