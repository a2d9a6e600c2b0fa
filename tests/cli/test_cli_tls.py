"""The command line's side of gRPC TLS (issue 11 item 10): `poolmta control` with
--grpc-tls-cert / --grpc-tls-key, the refusal to serve plaintext off loopback
without --insecure, and client commands that verify the server with --grpc-ca (or
POOLMTA_GRPC_CA) and never send their token in clear to another host by accident."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from control import grpc_tls
from control.cli.main import main
from dataplane.tls import ensure_self_signed
from tests.cli.cli_support import Cli, Lines, stop_process, subprocess_env

TLS_FLAGS = "--grpc-tls-cert FILE --grpc-tls-key FILE"


@pytest.fixture
def certificate(tmp_path):
    """(cert, key): self-signed for localhost and 127.0.0.1, so it is its own CA."""
    return ensure_self_signed(tmp_path / "grpc-tls", "control.test")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cert_and_key_go_together(capsys, tmp_path, certificate):
    cert, key = certificate
    for given in (["--grpc-tls-cert", str(cert)], ["--grpc-tls-key", str(key)]):
        code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "control", *given)
        assert code == 2
        assert "--grpc-tls-cert and --grpc-tls-key go together: give both or neither" in err


def test_unusable_tls_files_exit_2_before_anything_starts(capsys, tmp_path, certificate):
    cert, key = certificate
    _, other_key = ensure_self_signed(tmp_path / "other", "control.test")
    data_dir = tmp_path / "data"
    for cert_file, key_file, expected in ((cert, other_key, "the key does not belong to the certificate"),
                                          (tmp_path / "nope.crt", key, "cannot read the gRPC TLS certificate")):
        code, _, err = run(capsys, "--data-dir", str(data_dir), "control", "--grpc-tls-cert", str(cert_file),
                           "--grpc-tls-key", str(key_file))
        assert code == 2
        assert expected in err and "Traceback" not in err and "PRIVATE KEY" not in err
    assert not data_dir.exists()  # refused before the data directory, Redis or gRPC


@pytest.mark.parametrize("command", ["control", "up"])
@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:50051"])
def test_plaintext_off_loopback_is_refused_naming_the_flags(capsys, tmp_path, command, listen):
    data_dir = tmp_path / "data"
    code, _, err = run(capsys, "--data-dir", str(data_dir), command, "--grpc-listen", listen)
    assert code == 2
    assert f"refusing to serve gRPC without TLS on {listen}" in err
    assert TLS_FLAGS in err and "--insecure" in err
    assert not data_dir.exists()


def test_the_token_is_not_sent_in_clear_to_another_host(capsys):
    code, _, err = run(capsys, "--grpc", "192.0.2.1:50051", "--token", "t0ken-secret", "server", "list")
    assert code == 2
    assert "refusing to send the API token without TLS to 192.0.2.1:50051" in err
    assert "--grpc-ca FILE" in err and "--insecure" in err
    assert "t0ken-secret" not in err


def test_insecure_lets_the_token_go_in_clear_off_loopback(cli: Cli, capsys):
    """0.0.0.0 is not a loopback address, yet connecting to it reaches this host's
    127.0.0.1 listener: the plaintext control plane answers once --insecure allows it."""
    port = cli.address.rpartition(":")[2]
    wildcard = Cli(capsys, f"0.0.0.0:{port}", cli.data_dir)
    refused = wildcard.fails(2, "server", "list")
    assert "refusing to send the API token without TLS" in refused.err
    assert wildcard.ok("--insecure", "--json", "server", "list").json() == {"servers": []}


def _start_control(tmp_path, redis_url: str, *args: str) -> tuple[subprocess.Popen, Lines, str]:
    """`poolmta control ARGS` as a process; returns it, its stdout lines and its gRPC port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "control.cli", "--data-dir", str(tmp_path / "data"), "--redis-url", redis_url,
         "control", "--metrics-listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )
    lines = Lines(proc.stdout, companion=Lines(proc.stderr))
    return proc, lines, lines.until(r"listening on \S+:(\d+)").group(1)


def _stop(proc: subprocess.Popen, lines: Lines) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        lines.until(r"poolmta: stopped")
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_control_serves_plaintext_on_every_interface_with_insecure(tmp_path, redis_url, capsys):
    proc, lines, port = _start_control(tmp_path, redis_url, "--grpc-listen", "0.0.0.0:0", "--insecure")
    try:
        assert "(plaintext)" in lines.text()
        cli = Cli(capsys, f"127.0.0.1:{port}", tmp_path / "data")
        cli.ok("server", "register", "--hostname", "mta1.example.net", "--zone", "US-1")
    finally:
        _stop(proc, lines)


@pytest.mark.slow
def test_control_serves_tls_on_every_interface_and_clients_verify_it(tmp_path, redis_url, capsys, certificate,
                                                                     monkeypatch):
    cert, key = certificate
    proc, lines, port = _start_control(tmp_path, redis_url, "--grpc-listen", "0.0.0.0:0",
                                       "--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key))
    try:
        assert f"(TLS, certificate {cert})" in lines.text()
        cli = Cli(capsys, f"localhost:{port}", tmp_path / "data")
        cli.ok("--grpc-ca", str(cert), "server", "register", "--hostname", "mta1.example.net", "--zone", "US-1")

        plaintext = cli.fails(1, "server", "list")
        assert "cannot reach the poolmta control plane" in plaintext.err and "--grpc-ca FILE" in plaintext.err
        default_roots = cli.fails(1, "--grpc-tls", "server", "list")  # self-signed: not in the default roots
        assert "--grpc-ca names the CA that signed its certificate" in default_roots.err

        monkeypatch.setenv("POOLMTA_GRPC_CA", str(cert))
        assert [s["zone"] for s in cli.ok("--json", "server", "list").json()["servers"]] == ["US-1"]
    finally:
        _stop(proc, lines)


def test_a_client_certificate_for_a_mutual_tls_control_plane(start_control_plane, capsys, tmp_path, certificate):
    client_cert, client_key = ensure_self_signed(tmp_path / "client", "operator.test")
    plane = start_control_plane(grpc_tls=grpc_tls.load_server_tls(*certificate, client_ca_file=client_cert))
    cli = Cli(capsys, plane.address, plane.config.data_dir)
    ca = ("--grpc-ca", str(certificate[0]))

    without = cli.fails(1, *ca, "server", "list")
    assert "--grpc-client-cert / --grpc-client-key" in without.err
    half = cli.fails(2, *ca, "--grpc-client-cert", str(client_cert), "server", "list")
    assert "--grpc-client-cert and --grpc-client-key go together" in half.err
    listed = cli.ok(*ca, "--grpc-client-cert", str(client_cert), "--grpc-client-key", str(client_key),
                    "--json", "server", "list")
    assert listed.json() == {"servers": []}


def test_a_client_ca_needs_the_servers_certificate(capsys, tmp_path, certificate):
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "control",
                       "--grpc-tls-client-ca", str(certificate[0]))
    assert code == 2
    assert "--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key" in err
