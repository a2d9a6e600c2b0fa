"""The example systemd units in deploy/systemd/ (issue 11 item 12): they parse, keep
the restart policy, the private data directory and the sandbox they promise, give
the services time to drain, and run command lines poolmta's own parsers accept.

`systemd-analyze verify` is not available in CI, so the files are read with
configparser (systemd's format is close enough once continuation lines are joined).
"""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from control import grpc_tls
from control.cli.children import DATAPLANE_STOP_SECONDS
from control.cli.main import _find_passthrough, build_parser
from control.cli.serve import CONTROL_STOP_EXTRA_SECONDS
from control.config import ControlConfig
from control.contract.runtime import embedded_redis_url
from dataplane.__main__ import build_config
from dataplane.__main__ import build_parser as dataplane_parser
from dataplane.config import DataplaneConfig

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
DATA_DIR = "/var/lib/poolmta"


def load(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((UNITS / name).read_text(encoding="utf-8"))
    return unit


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    """ExecStart as argv: backslash-continued lines joined, the executable checked."""
    argv = shlex.split(unit["Service"]["ExecStart"].replace("\\\n", " "))
    assert argv[0] == "/opt/poolmta/bin/poolmta"
    return argv[1:]


@pytest.mark.parametrize("name", ["poolmta-control.service", "poolmta-dataplane.service"])
def test_each_unit_restarts_keeps_its_state_private_and_is_sandboxed(name):
    unit = load(name)
    service = unit["Service"]
    expected = {
        "Type": "exec", "User": "poolmta", "Group": "poolmta",
        "Restart": "on-failure", "KillSignal": "SIGTERM", "KillMode": "mixed",
        "StateDirectory": "poolmta", "StateDirectoryMode": "0700", "UMask": "0077",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ReadWritePaths": DATA_DIR,
        "PrivateTmp": "yes", "ProtectHome": "yes", "StandardOutput": "journal", "StandardError": "journal",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert float(service["RestartSec"]) > 0
    assert f"--data-dir {DATA_DIR}" in service["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_control_plane_serves_tls_with_a_key_only_it_can_read():
    unit = load("poolmta-control.service")
    service = unit["Service"]
    args = build_parser().parse_args(exec_start(unit))
    assert args.command == "control"
    assert (str(args.grpc_tls_cert), str(args.grpc_tls_key)) == ("/etc/poolmta/grpc.crt", "%d/grpc.key")
    assert service["LoadCredential"] == "grpc.key:/etc/poolmta/grpc.key"
    grpc_tls.check_listen(args.grpc_listen, tls=True, insecure=False)
    assert not getattr(args, "insecure", False)
    # No capability: it listens above 1024.
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    # poolmta's own bound on stopping: the gRPC grace, then the extra it allows.
    assert float(service["TimeoutStopSec"]) > ControlConfig.grace_seconds + CONTROL_STOP_EXTRA_SECONDS


def test_the_data_plane_joins_the_control_planes_redis_and_may_bind_port_25():
    unit = load("poolmta-dataplane.service")
    service = unit["Service"]
    argv = exec_start(unit)
    command, global_options, dataplane_args = _find_passthrough(argv)
    assert command == "dataplane"
    options = build_parser().parse_args([*global_options, command])
    assert str(options.data_dir) == DATA_DIR
    # The socket of the Redis that poolmta-control.service runs for the same directory.
    assert options.redis_url == embedded_redis_url(Path(DATA_DIR))

    args = dataplane_parser({}).parse_args(dataplane_args)
    args.data_dir = options.data_dir
    config = build_config(args, options.redis_url)  # the data plane's own validation
    assert config.server_id == 1 and config.smtp_port == 587 and config.inbound.port == 25

    assert "poolmta-control.service" in unit["Unit"]["After"].split()
    assert "poolmta-control.service" in unit["Unit"]["Wants"].split()
    assert "Requires" not in unit["Unit"]  # a control-plane restart must not stop mail acceptance
    assert service["CapabilityBoundingSet"] == service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    # Longer than a worker's drain and the supervisor's bound on it, and than up's own wait.
    assert float(service["TimeoutStopSec"]) > max(DataplaneConfig.shutdown_grace + 5.0, DATAPLANE_STOP_SECONDS)
