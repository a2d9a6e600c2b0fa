"""Every field, RPC and service of the proto carries a comment (issue 10): the
proto is the API's reference, read through reflection and grpcurl."""

from __future__ import annotations

import os
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parents[1] / "proto"
PROTO = "poolmta/v1/poolmta.proto"
# FileDescriptorProto / DescriptorProto / ServiceDescriptorProto field numbers (descriptor.proto).
MESSAGE_TYPE, ENUM_TYPE, SERVICE = 4, 5, 6
FIELD, METHOD = 2, 2


def _undocumented(tmp_path: Path) -> list[str]:
    out = tmp_path / "poolmta.pb"
    includes = Path(os.path.dirname(grpc_tools.__file__)) / "_proto"
    assert protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{includes}", "--include_source_info",
                        f"--descriptor_set_out={out}", str(PROTO_ROOT / PROTO)]) == 0
    file = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    documented = {tuple(loc.path) for loc in file.source_code_info.location
                  if (loc.leading_comments + loc.trailing_comments).strip()}
    missing = []
    for i, message in enumerate(file.message_type):
        missing += [f"{message.name}.{f.name}" for j, f in enumerate(message.field)
                    if (MESSAGE_TYPE, i, FIELD, j) not in documented]
    for i, service in enumerate(file.service):
        if (SERVICE, i) not in documented:
            missing.append(service.name)
        missing += [f"{service.name}.{m.name}" for j, m in enumerate(service.method)
                    if (SERVICE, i, METHOD, j) not in documented]
    return missing


def test_every_field_and_rpc_is_documented(tmp_path):
    assert _undocumented(tmp_path) == []
