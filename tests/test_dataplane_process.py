"""The `python -m dataplane` process: the embedded Redis when no URL is given,
STARTTLS certificates (generated or configured), restart of a dead worker,
clean stops on SIGINT / SIGTERM, and a clear error for an address in use."""

from __future__ import annotations

import pytest

import os
import re
import signal
import smtplib
import socket
import ssl
import stat
import subprocess

import redis
from cryptography import x509
from cryptography.x509.oid import NameOID

from control.embedded_redis import EmbeddedRedis
from dataplane.tls import ensure_self_signed
from tests.dataplane_support import (
    Dataplane,
    acked_versions,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queued_id,
)
from tests.support import process_gone, wait_until

# Every test here starts data-plane processes.
pytestmark = pytest.mark.slow

SERVER = 8
SECRET = "s3cret"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("POOLMTA_")}


def _publish_routes(client: redis.Redis) -> str:
    bridge = make_bridge(1, 81, SECRET)
    publish(client, make_snapshot(SERVER, 1, [make_pool(81, [("192.0.2.81", 1)], server_id=SERVER)], [bridge]))
    return bridge.username


def _send(port: int, username: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.login(username, SECRET)
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        code, reply = client.data(message(1))
        assert code == 250, reply
        return queued_id(reply)


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def test_without_a_redis_url_it_joins_or_starts_the_embedded_redis(tmp_path, start_dataplane):
    # Joined: `poolmta up` / `control` already runs the data directory's embedded Redis.
    shared = EmbeddedRedis(tmp_path / "shared")
    url = shared.start()
    client = redis.Redis.from_url(url)
    try:
        username = _publish_routes(client)
        plane = start_dataplane("", SERVER, data_dir=tmp_path / "shared", env=_clean_env())
        plane.wait_version(client, 1)
        _send(plane.port, username)
        assert plane.stop() == 0
        assert _answers(url), "a Redis the data plane did not start is left running"
    finally:
        client.close()
        shared.stop()

    # Nothing runs yet: the data plane starts no Redis itself (it imports nothing of
    # the control plane); it says how to get one and exits.
    alone = subprocess.run(Dataplane(tmp_path / "alone", "", SERVER).cmd, env=_clean_env(),
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 1, alone.stderr
    assert "poolmta up" in alone.stderr and "poolmta dataplane" in alone.stderr and "--redis-url" in alone.stderr
    assert not _answers(EmbeddedRedis(tmp_path / "alone").url)

    # Started: `poolmta dataplane` starts it, runs the data plane beside it, and stops both on exit.
    plane = Dataplane(tmp_path / "own", "", SERVER, env=_clean_env())
    plane.cmd[1:3] = ["-m", "control.cli", "dataplane"]
    try:
        plane.start()
        own_url = EmbeddedRedis(tmp_path / "own").url
        assert _answers(own_url)
        dataplane_pid = int(re.search(r"poolmta: data plane starting \(pid (\d+)\)", plane.log()).group(1))
        client = redis.Redis.from_url(own_url)
        try:
            username = _publish_routes(client)
            assert wait_until(lambda: list(acked_versions(client, SERVER, dataplane_pid).values()) == [1], 15), \
                plane.log()
            _send(plane.port, username)
        finally:
            client.close()
        assert plane.stop() == 0
    finally:
        plane.kill()
    assert not _answers(own_url)
    assert process_gone(dataplane_pid)


def _peer_common_name(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=context)
        der = client.sock.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_starttls_with_generated_and_configured_certificates(redis_client, redis_url, tmp_path, start_dataplane):
    _publish_routes(redis_client)
    plane = start_dataplane(redis_url, SERVER, args=["--hostname", "bridge.test.example"])
    key = plane.data_dir / "tls" / "smtp-selfsigned.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _peer_common_name(plane.port) == "bridge.test.example"
    assert plane.stop() == 0

    cert, key = ensure_self_signed(tmp_path / "operator-certs", "custom.example")
    plane = start_dataplane(redis_url, SERVER, data_dir=tmp_path / "dp2",
                            args=["--tls-cert", str(cert), "--tls-key", str(key)])
    assert _peer_common_name(plane.port) == "custom.example"
    assert not (tmp_path / "dp2" / "tls").exists()


def test_dead_worker_is_restarted_and_sigint_stops_cleanly(redis_client, redis_url, start_dataplane):
    username = _publish_routes(redis_client)
    plane = start_dataplane(redis_url, SERVER, workers=2)
    first = plane.worker_pids()
    assert sorted(first) == [0, 1]
    os.kill(first[1], signal.SIGKILL)
    assert wait_until(lambda: plane.worker_pids()[1] != first[1], 30), plane.log()
    plane.wait_version(redis_client, 1)
    for _ in range(4):  # connections reach both workers again
        _send(plane.port, username)

    plane.proc.send_signal(signal.SIGINT)
    assert plane.proc.wait(30) == 0
    for pid in plane.worker_pids().values():
        assert wait_until(lambda: process_gone(pid), 10)
    assert "Traceback" not in plane.log()


def test_address_in_use_is_a_clear_error(redis_url, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plane = Dataplane(tmp_path / "dp", redis_url, SERVER, listen=f"127.0.0.1:{port}")
        try:
            plane.start()
        except AssertionError:
            pass
        else:
            raise AssertionError("the data plane started on a taken port")
        finally:
            plane.stop()  # also waits until its output is collected
    assert plane.proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in plane.log()


def test_unusable_tls_files_are_a_clear_error(redis_url, tmp_path):
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("not PEM\n")
    plane = Dataplane(tmp_path / "dp", redis_url, SERVER, args=["--tls-cert", str(bad), "--tls-key", str(bad)])
    try:
        plane.start()
    except AssertionError:
        pass
    else:
        raise AssertionError("the data plane started with an unusable certificate")
    finally:
        plane.stop()  # also waits until its output is collected
    assert plane.proc.returncode == 1
    assert "cannot load the STARTTLS certificate and key" in plane.log()


def test_sigterm_lets_a_message_in_data_finish(redis_client, redis_url, start_dataplane):
    username = _publish_routes(redis_client)
    plane = start_dataplane(redis_url, SERVER)
    client = smtplib.SMTP("127.0.0.1", plane.port, timeout=20)
    try:
        client.login(username, SECRET)
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        code, _ = client.docmd("DATA")
        assert code == 354
        client.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        plane.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "1 message(s) in DATA" in plane.log(), 10), plane.log()
        client.send(b"second half\r\n.\r\n")
        code, reply = client.getreply()
        assert code == 250, reply
        message_id = queued_id(reply)
        code, goodbye = client.getreply()  # then the session is closed
        assert code == 421 and b"shutting down" in goodbye
    finally:
        client.close()
    assert plane.proc.wait(30) == 0
    record = plane.record(message_id)
    assert record.message.endswith(b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n")
