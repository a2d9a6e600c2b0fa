"""Server reflection v1 as well as v1alpha (issue 10): current grpcurl asks
`grpc.reflection.v1.ServerReflection` first. Both answer the same, and each can
describe our services and itself."""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from control.reflection import V1_SERVICE_NAME

V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
V1 = f"/{V1_SERVICE_NAME}/ServerReflectionInfo"


async def _ask(channel, path: str, request: reflection_pb2.ServerReflectionRequest):
    # v1's messages are v1alpha's, field for field: the v1alpha classes speak both.
    call = channel.stream_stream(path, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)

    async def requests():
        yield request

    async for reply in call(requests()):
        return reply
    raise AssertionError("no reply")


async def test_v1_and_v1alpha_list_the_same_services(channel):
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    names = {path: {s.name for s in (await _ask(channel, path, listing)).list_services_response.service}
             for path in (V1, V1ALPHA)}
    assert names[V1] == names[V1ALPHA]
    assert {"poolmta.v1.PoolService", "grpc.health.v1.Health", V1_SERVICE_NAME,
            "grpc.reflection.v1alpha.ServerReflection"} <= names[V1]


async def test_v1_describes_our_services_and_itself(channel):
    for symbol, file_name in (("poolmta.v1.AccountService", "poolmta/v1/poolmta.proto"),
                              (V1_SERVICE_NAME, "grpc/reflection/v1/reflection.proto")):
        reply = await _ask(channel, V1, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in reply.file_descriptor_response.file_descriptor_proto]
        described = next(f for f in files if f.name == file_name)
        service = symbol.rsplit(".", 1)[1]
        assert service in {s.name for s in described.service}
    reflection_service = next(s for s in described.service if s.name == "ServerReflection")
    assert reflection_service.method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
