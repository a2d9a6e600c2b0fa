"""`poolmta up` hands its data-plane options (--route, --smarthost, --workers, the
STARTTLS certificate) to the data plane it starts: the README's table lists them on
`up`, and before, only their environment variables reached the data plane."""

from __future__ import annotations

from pathlib import Path

from control.cli.main import build_parser
from control.cli.up_options import dataplane_args
from control.cli.serve import ServeOptions, _Stack
from tests.cli.cli_support import exit_of_up, start_up, stop_process


def test_up_turns_its_dataplane_options_into_the_dataplanes_arguments(tmp_path):
    args = build_parser().parse_args([
        "up", "--route", "example.net=127.0.0.1:2600", "--route", "*=127.0.0.1:2601",
        "--smarthost", "relay.example:587", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--allow-insecure-auth",
        "--workers", "3",
    ])
    forwarded = dataplane_args(args)
    assert forwarded == ("--route", "example.net=127.0.0.1:2600", "--route", "*=127.0.0.1:2601",
                         "--smarthost", "relay.example:587", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                         "--allow-insecure-auth")
    opts = ServeOptions(data_dir=Path(tmp_path), redis_url=None, grpc_listen="127.0.0.1:0", dataplane=True,
                        workers=3, dataplane_args=forwarded)
    command = _Stack(opts, "unix:///r.sock", None, None)._dataplane_command()
    assert command[command.index("--workers") + 1] == "3"
    assert command[-len(forwarded):] == list(forwarded)
    assert dataplane_args(build_parser().parse_args(["up"])) == ()


def test_a_bad_route_given_to_up_reaches_the_dataplane_which_says_what_is_wrong(tmp_path):
    proc, lines, errors = start_up(tmp_path / "up", "--smtp-listen", "127.0.0.1:0", "--workers", "1",
                                   "--route", "not a route")
    try:
        code, err = exit_of_up(proc, lines, errors)
    finally:
        stop_process(proc)
    assert code == 1
    assert "route must be DOMAIN=HOST:PORT" in err and "THE DATA PLANE EXITED UNEXPECTEDLY" in err
