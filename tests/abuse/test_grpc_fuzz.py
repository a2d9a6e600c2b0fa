"""gRPC field fuzzing against a real control plane: every RPC of every poolmta
service (read from the proto's descriptors, so a new RPC is covered as soon as it
exists), called with hostile requests built from its message descriptor
(`tests/abuse/proto_strategies.py`), as the platform admin and as a tenant (and
with a token never issued: always UNAUTHENTICATED).

For every call:
* the status is a deliberate one: OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
  FAILED_PRECONDITION, PERMISSION_DENIED, UNAUTHENTICATED or OUT_OF_RANGE, never
  INTERNAL or UNKNOWN (nor UNAVAILABLE: Redis and SQLite are up; nor
  RESOURCE_EXHAUSTED: there are no quotas, and it is what gRPC answers when an
  error message is too long for its metadata). A streaming call may also end
  CANCELLED or DEADLINE_EXCEEDED, by the client, after its first replies;
* the error message is shorter than 1 KB;
* a tenant's answer never names an object of another account (unless the tenant
  itself sent that name);
* the control plane logged no ERROR, and health still says SERVING.

Deletes and other destructive calls are welcome: the control plane is this module's own.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory, text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.cli.client import STUBS
from tests.abuse.proto_strategies import Known, message_strategy

pytestmark = pytest.mark.abuse

METHODS = [method for service in pb.DESCRIPTOR.services_by_name.values() for method in service.methods]
DELIBERATE = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE,
})
ENDED_BY_CLIENT = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})
MAX_DETAILS = 1024
UNARY_DEADLINE = 20.0  # a liveness bound: no answer at all is a hang
STREAM_DEADLINE = 1.0
STREAM_REPLIES = 2

FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class World:
    """The control plane's objects: a tenant and a victim account, each with a pool,
    an IP and a Bridge on MTA server 1."""

    def __init__(self, plane) -> None:
        self.channel = grpc.insecure_channel(plane.address)
        # "stranger": a token that was never issued.
        self.tokens = {"admin": plane.cp.admin_token_path.read_text().strip(), "stranger": "pm_" + "0" * 40}
        self.known = Known()
        self.victim_names: list[str] = []
        self.user_ids: dict[str, int] = {}
        self.tenant_sent = ""  # every request the tenant made: what it may see echoed later
        self._strategies: dict[str, st.SearchStrategy] = {}
        admin = self.stubs("admin")
        server = admin["servers"].RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta1.example.net",
                                                                               zone="US-1"))
        self.known.ints += [server.server_id]
        for who, octet in (("tenant", 78), ("victim", 77)):
            reply = admin["accounts"].CreateAccount(pb.CreateAccountRequest(name=f"{who}-acct-q7", tier=pb.PRO))
            self.tokens[who] = reply.token
            stubs = self.stubs(who)
            pool = stubs["pools"].CreatePool(pb.CreatePoolRequest(
                label=f"{who} pool zq", server_id=server.server_id, tag=f"{who[0]}zq", feed_type="newsletter"))
            ip = stubs["ips"].ProvisionIp(pb.ProvisionIpRequest(
                address=f"192.0.2.{octet}", smtp_id=pool.smtp_id, server_id=server.server_id))
            bridge = stubs["bridges"].CreateBridge(pb.CreateBridgeRequest(
                name=f"{who}-bridge-zq", smtp_id=pool.smtp_id, trusted_networks=[f"198.51.{octet}.0/24"]))
            names = [f"{who}-acct-q7", pool.label, pool.internal_name, ip.address, bridge.bridge.name,
                     bridge.bridge.username, f"198.51.{octet}.0/24"]
            self.user_ids[who] = reply.account.user_id
            self.known.ints += [reply.account.user_id, pool.smtp_id, bridge.bridge.bridge_id]
            self.known.strings += names
            if who == "victim":
                self.victim_names = names

    def restore_tenant(self) -> None:
        """Undo what the admin's fuzzed calls may have done to the tenant (a new token
        with the old ones revoked, another tier), so its calls keep reaching past auth."""
        accounts = self.stubs("admin")["accounts"]
        user_id = self.user_ids["tenant"]
        accounts.SetAccountTier(pb.SetAccountTierRequest(user_id=user_id, tier=pb.PRO))
        self.tokens["tenant"] = accounts.IssueAccountToken(pb.IssueAccountTokenRequest(user_id=user_id)).token

    def stubs(self, who: str) -> dict:
        metadata = (("authorization", f"Bearer {self.tokens[who]}"),)
        return {name: _Authed(stub(self.channel), metadata) for name, stub in STUBS.items()}

    def request(self, method, data) -> object:
        if method.full_name not in self._strategies:
            self._strategies[method.full_name] = message_strategy(method.input_type, self.known)
        return data.draw(self._strategies[method.full_name], label="request")

    def call(self, method, request, who: str) -> tuple[grpc.StatusCode, str, list]:
        """(status, details, replies) of one call as `who`."""
        path = f"/{method.containing_service.full_name}/{method.name}"
        reply_class = message_factory.GetMessageClass(method.output_type)
        metadata = (("authorization", f"Bearer {self.tokens[who]}"),)
        replies: list = []
        try:
            if method.server_streaming:
                call = self.channel.unary_stream(path, request_serializer=type(request).SerializeToString,
                                                 response_deserializer=reply_class.FromString)
                stream = call(request, metadata=metadata, timeout=STREAM_DEADLINE)
                for reply in stream:
                    replies.append(reply)
                    if len(replies) == STREAM_REPLIES:
                        stream.cancel()
                        break
                return stream.code(), stream.details() or "", replies
            call = self.channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                                            response_deserializer=reply_class.FromString)
            replies.append(call(request, metadata=metadata, timeout=UNARY_DEADLINE))
            return grpc.StatusCode.OK, "", replies
        except grpc.RpcError as error:
            return error.code(), error.details() or "", replies

    def serving(self) -> bool:
        health = health_pb2_grpc.HealthStub(self.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


class _Authed:
    def __init__(self, stub, metadata) -> None:
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name):
        method = getattr(self._stub, name)
        return lambda request: method(request, metadata=self._metadata, timeout=UNARY_DEADLINE)


@pytest.fixture(scope="module")
def world(fuzz_control) -> World:
    world = World(fuzz_control)
    yield world
    world.channel.close()


def _leaks(world: World, details: str, replies: list) -> list[str]:
    """The victim's names in a tenant's answer that the tenant never sent itself (it
    may have named its own pool after the victim's Bridge: that comes back, rightly)."""
    answer = details + "".join(text_format.MessageToString(r, as_utf8=True) for r in replies)
    return [name for name in world.victim_names if name in answer and name not in world.tenant_sent]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
@FUZZ
@given(data=st.data())
def test_rpc_answers_hostile_fields_with_a_deliberate_status(world, error_log, method, data):
    request = world.request(method, data)
    world.tenant_sent += text_format.MessageToString(request, as_utf8=True)
    errors_before = len(error_log.records)
    code, details, _ = world.call(method, request, "stranger")
    assert code == grpc.StatusCode.UNAUTHENTICATED, f"{method.name} without a valid token: {code.name}: {details!r}"
    for who in ("admin", "tenant"):
        code, details, replies = world.call(method, request, who)
        event(f"{who}: {code.name}")
        allowed = DELIBERATE | (ENDED_BY_CLIENT if method.server_streaming else frozenset())
        assert code in allowed, f"{method.name} as {who}: {code.name}: {details[:300]!r}"
        assert len(details.encode()) < MAX_DETAILS, f"{method.name} as {who}: {len(details.encode())} bytes of details"
        if who == "admin" and method.containing_service.name == "AccountService":
            world.restore_tenant()
        if who == "tenant":
            leaked = _leaks(world, details, replies)
            assert not leaked, f"{method.name} showed a tenant another account's {leaked}: {details[:300]!r} {replies}"
    logged = [f"{r.name}: {r.getMessage()}" for r in error_log.records[errors_before:]]
    assert not logged, f"the control plane logged errors: {logged}"
    assert world.serving()
