"""gRPC server reflection under both of its names: `grpc.reflection.v1` (what current
grpcurl and grpc clients ask first) and `grpc.reflection.v1alpha` (older ones).

grpcio-reflection (1.85) ships only v1alpha. The v1 protocol is v1alpha with its
package renamed, message for message and field for field, so one servicer answers
both: v1 is served by a generic handler that uses v1alpha's (de)serialisers, and
v1's file descriptor (v1alpha's, renamed) is added to the descriptor pool so that
reflection can describe the v1 service itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_prefix = f".{proto.package}."
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = f".{V1_PACKAGE}." + field.type_name[len(old_prefix):]
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{V1_PACKAGE}." + method.input_type[len(old_prefix):]
            method.output_type = f".{V1_PACKAGE}." + method.output_type[len(old_prefix):]
    pool.Add(proto)


def enable(server: grpc.aio.Server, service_names: Sequence[str]) -> list[str]:
    """Serve reflection v1 and v1alpha on `server` for `service_names` and both
    reflection services; returns every name reflection lists."""
    _add_v1_descriptor(descriptor_pool.Default())
    names = [*service_names, V1_SERVICE_NAME, reflection.SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {
        _METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        ),
    })
    server.add_generic_rpc_handlers((v1,))
    return names
