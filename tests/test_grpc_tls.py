"""The control plane's gRPC over TLS (issue 11 item 10): a real control plane serving
with a self-signed certificate, reached by clients that trust it, do not speak TLS,
or trust another CA; unusable certificate and key files; and the rule that plaintext
gRPC stays on loopback unless the operator says otherwise."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from control import grpc_tls
from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.server import ControlPlane
from dataplane.tls import ensure_self_signed
from tests.control_support import Client, start_config


@pytest.fixture
def certificate(tmp_path):
    """(cert, key) of a self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    return ensure_self_signed(tmp_path / "grpc-tls", "control.test")


@pytest.fixture
async def control_plane(tmp_path, redis_url, certificate):
    """The control plane of tests/control_support.py, serving gRPC over TLS only."""
    cp = ControlPlane(start_config(tmp_path / "control", redis_url,
                                   grpc_tls=grpc_tls.load_server_tls(*certificate)))
    await cp.start()
    yield cp
    await cp.stop(0)


def _secure_channel(address: str, ca_pem: bytes) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_pem))


@pytest.fixture
async def channel(control_plane, certificate):
    """A channel that verifies the control plane with its certificate as the CA."""
    ch = _secure_channel(control_plane.grpc_address, certificate[0].read_bytes())
    yield ch
    await ch.close()


async def test_a_client_trusting_the_ca_lists_pools_over_tls(admin, make_account, server):
    tenant, _ = await make_account("acme")
    created = await tenant.pools.CreatePool(pb.CreatePoolRequest(label="promotional", tag="promo",
                                                                 server_id=server.server_id))
    listed = await tenant.pools.ListPools(pb.ListPoolsRequest())
    assert [p.smtp_id for p in listed.pools] == [created.smtp_id]
    servers = await admin.servers.ListMtaServers(pb.ListMtaServersRequest())
    assert [s.zone for s in servers.servers] == ["US-1"]


async def test_a_plaintext_client_gets_unavailable(control_plane):
    token = control_plane.admin_token_path.read_text().strip()
    async with grpc.aio.insecure_channel(control_plane.grpc_address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await Client(plain, token).servers.ListMtaServers(pb.ListMtaServersRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_gets_unavailable(control_plane, tmp_path):
    other_cert, _ = ensure_self_signed(tmp_path / "other-ca", "control.test")
    token = control_plane.admin_token_path.read_text().strip()
    async with _secure_channel(control_plane.grpc_address, other_cert.read_bytes()) as wrong:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await Client(wrong, token).servers.ListMtaServers(pb.ListMtaServersRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_admits_only_clients_with_a_certificate_its_ca_signed(tmp_path, redis_url, certificate):
    client_cert, client_key = ensure_self_signed(tmp_path / "client", "operator.test")
    stranger_cert, stranger_key = ensure_self_signed(tmp_path / "stranger", "operator.test")
    tls = grpc_tls.load_server_tls(*certificate, client_ca_file=client_cert)
    cp = ControlPlane(start_config(tmp_path / "control", redis_url, grpc_tls=tls))
    await cp.start()
    try:
        token = cp.admin_token_path.read_text().strip()
        ca = certificate[0].read_bytes()

        async def list_servers(cert=None, key=None):
            identity = {} if cert is None else {"certificate_chain": cert.read_bytes(), "private_key": key.read_bytes()}
            credentials = grpc.ssl_channel_credentials(root_certificates=ca, **identity)
            async with grpc.aio.secure_channel(cp.grpc_address, credentials) as ch:
                return await Client(ch, token).servers.ListMtaServers(pb.ListMtaServersRequest(), timeout=5)

        assert list((await list_servers(client_cert, client_key)).servers) == []
        for cert, key in ((None, None), (stranger_cert, stranger_key)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await list_servers(cert, key)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await cp.stop(0)


def test_unusable_certificate_and_key_files_are_clear_errors_without_key_material(tmp_path, certificate):
    cert, key = certificate
    _, other_key = ensure_self_signed(tmp_path / "other", "control.test")
    key_text = key.read_text()
    cases = [
        ((cert, other_key), "the key does not belong to the certificate"),
        ((cert, cert), "expected a PEM certificate and an unencrypted PEM private key"),
        ((key, key), "expected a PEM certificate"),
        ((tmp_path / "missing.crt", key), "cannot read the gRPC TLS certificate"),
        ((cert, tmp_path / "missing.key"), "cannot read the gRPC TLS private key"),
    ]
    for (cert_file, key_file), expected in cases:
        with pytest.raises(grpc_tls.TlsMaterialError) as info:
            grpc_tls.load_server_tls(cert_file, key_file)
        assert expected in str(info.value)
        assert "PRIVATE KEY" not in str(info.value)
    tls = grpc_tls.load_server_tls(cert, key)
    assert key_text.splitlines()[1] not in repr(tls)  # a config dump carries no key


def test_a_ca_file_without_certificates_is_a_clear_error(certificate):
    _, key = certificate
    with pytest.raises(grpc_tls.TlsMaterialError, match="expected PEM certificates"):
        grpc_tls.load_ca(key)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert grpc_tls.is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "10.1.2.3", "192.0.2.1", "2001:db8::1",
                                  "fe80::1%lo", "::ffff:10.0.0.1", "name.invalid"])
def test_hosts_that_are_not_loopback(host):
    assert not grpc_tls.is_loopback_host(host)


@pytest.mark.parametrize(("target", "hosts"), [
    ("127.0.0.1:50051", ["127.0.0.1"]),
    ("[::1]:50051", ["::1"]),
    ("::1", ["::1"]),
    ("localhost", ["localhost"]),
    ("dns:///mta.example:50051", ["mta.example"]),
    ("dns://192.0.2.53/mta.example:50051", ["mta.example"]),
    ("ipv4:127.0.0.1:1,10.0.0.1:2", ["127.0.0.1", "10.0.0.1"]),
    ("ipv6:[::1]:50051", ["::1"]),
    ("unix:/run/poolmta.sock", None),
    ("xds:///control", ["xds:///control"]),
])
def test_the_hosts_a_channel_target_reaches(target, hosts):
    assert grpc_tls.target_hosts(target) == hosts


def test_plaintext_listening_off_loopback_needs_insecure():
    grpc_tls.check_listen("127.0.0.1:50051", tls=False, insecure=False)
    grpc_tls.check_listen("0.0.0.0:50051", tls=True, insecure=False)
    grpc_tls.check_listen("0.0.0.0:50051", tls=False, insecure=True)
    for listen in ("0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051"):
        with pytest.raises(grpc_tls.InsecureGrpcError, match="--grpc-tls-cert FILE --grpc-tls-key FILE"):
            grpc_tls.check_listen(listen, tls=False, insecure=False)


def test_a_token_goes_in_clear_to_loopback_only():
    plain = grpc_tls.ClientTls()
    grpc_tls.check_target("127.0.0.1:50051", plain)
    grpc_tls.check_target("unix:/run/poolmta.sock", plain)
    grpc_tls.check_target("10.1.2.3:50051", grpc_tls.ClientTls(insecure=True))
    grpc_tls.check_target("10.1.2.3:50051", grpc_tls.ClientTls(enabled=True))
    for target in ("10.1.2.3:50051", "0.0.0.0:50051", "ipv4:127.0.0.1:1,10.0.0.1:2", "xds:///control"):
        with pytest.raises(grpc_tls.InsecureGrpcError, match="--insecure"):
            grpc_tls.check_target(target, plain)


async def test_the_control_plane_itself_refuses_plaintext_off_loopback(tmp_path, redis_url):
    """Whoever builds a ControlPlane (not only the CLI) gets the refusal."""
    cp = ControlPlane(dataclasses.replace(start_config(tmp_path / "control", redis_url), grpc_listen="0.0.0.0:0"))
    try:
        with pytest.raises(grpc_tls.InsecureGrpcError, match="refusing to serve gRPC without TLS on 0.0.0.0:0"):
            await cp.start()
    finally:
        await cp.stop(0)
