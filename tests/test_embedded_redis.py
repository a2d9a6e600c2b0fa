"""The embedded Redis server: lifecycle, durability, and never being left orphaned."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from control.contract.runtime import SUN_PATH_MAX
from control.cli.main import memory_size_arg
from control.embedded_redis import DEFAULT_MAXMEMORY, EmbeddedRedis, EmbeddedRedisError, redis_server_executable
from control.redis_supervisor import resolve_redis
from tests.support import free_port, process_gone, wait_until


def _client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_start_serves_a_private_unix_socket_and_stop_cleans_up(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    url = server.start()
    try:
        sock = tmp_path / "redis" / "redis.sock"
        assert url == f"unix://{sock}" == server.url
        assert server.running and server.pid is not None
        assert server.start() == url  # idempotent
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "redis").stat().st_mode) == 0o700
        client = _client(server)
        try:
            assert client.ping()
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("port") == {"port": "0"}
            assert client.config_get("maxmemory") == {"maxmemory": str(DEFAULT_MAXMEMORY)}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert client.config_get("auto-aof-rewrite-percentage") == {"auto-aof-rewrite-percentage": "100"}
            assert client.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(64 * 1024**2)}
        finally:
            client.close()
        pid = server.pid
    finally:
        server.stop()
    assert not server.running and server.pid is None
    assert process_gone(pid)
    assert not sock.exists()
    assert not (tmp_path / "redis" / "redis.pid").exists()
    server.stop()  # a second stop is harmless


def test_the_memory_cap_is_configurable(tmp_path: Path) -> None:
    assert memory_size_arg("512mb") == 512 * 1024**2 and memory_size_arg("2GB") == 2 * 1024**3
    for wrong in ("lots", "512k", "12"):
        with pytest.raises(argparse.ArgumentTypeError):
            memory_size_arg(wrong)
    with EmbeddedRedis(tmp_path, maxmemory=memory_size_arg("64mb")) as server:
        assert _client(server).config_get("maxmemory") == {"maxmemory": str(64 * 1024**2)}


def test_tcp_port_binds_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedRedis(tmp_path, port=port) as server:
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert not (tmp_path / "redis" / "redis.sock").exists()
        client = _client(server)
        try:
            assert client.config_get("bind") == {"bind": "127.0.0.1"}
            assert client.ping()
        finally:
            client.close()
    assert not server.running


def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = _client(server)
        client.hset("pool:1", mapping={"sent": 7, "delivered": 5})
        client.close()
    with EmbeddedRedis(tmp_path) as server:
        client = _client(server)
        assert client.hgetall("pool:1") == {b"sent": b"7", b"delivered": b"5"}
        client.close()


def test_acknowledged_counter_survives_a_redis_crash(fresh_redis: EmbeddedRedis) -> None:
    client = _client(fresh_redis)
    try:
        for _ in range(25):
            client.incr("delivered")
        assert client.incr("delivered") == 26
    finally:
        client.close()
    crashed_pid = fresh_redis.pid
    fresh_redis.kill()
    assert not fresh_redis.running and process_gone(crashed_pid)

    fresh_redis.start()
    client = _client(fresh_redis)
    try:
        assert client.get("delivered") == b"26"
    finally:
        client.close()


@pytest.mark.slow
def test_a_server_left_by_a_crashed_run_is_killed_at_next_start(tmp_path: Path) -> None:
    # A crashed run: its redis-server still serves the data dir, nobody owns it.
    with EmbeddedRedis(tmp_path) as server:
        config = server.config_path
        pidfile = server.pidfile_path
    leftover = subprocess.Popen(
        [redis_server_executable(), str(config)],
        cwd=config.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() == str(leftover.pid))
        server = EmbeddedRedis(tmp_path)
        server.start()
        try:
            assert leftover.wait(timeout=10) is not None
            assert server.pid != leftover.pid
            client = _client(server)
            assert client.ping()
            client.close()
            assert pidfile.read_text().strip() == str(server.pid)
        finally:
            server.stop()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_a_second_owner_of_a_live_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        second = EmbeddedRedis(tmp_path)
        with pytest.raises(EmbeddedRedisError, match="already managed by another live process"):
            second.start()
        assert first.running
        client = _client(first)
        assert client.ping()
        client.close()


@pytest.mark.slow
def test_redis_dies_when_its_parent_process_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from control.embedded_redis import EmbeddedRedis

        server = EmbeddedRedis(Path(sys.argv[1]))
        server.start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"child printed {line!r}"
        redis_pid = int(line)
        assert not process_gone(redis_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    assert wait_until(lambda: process_gone(redis_pid), timeout=10), "redis-server outlived its parent"


def test_a_data_dir_too_long_for_a_unix_socket_still_works(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(data_dir / "redis" / "redis.sock")) > SUN_PATH_MAX
    server = EmbeddedRedis(data_dir)
    server.start()
    try:
        assert server.socket_path is not None
        short_dir = server.socket_path.parent
        assert len(os.fsencode(server.socket_path)) <= SUN_PATH_MAX
        assert str(short_dir).startswith("/tmp/poolmta-redis-")
        assert stat.S_IMODE(short_dir.stat().st_mode) == 0o700
        client = _client(server)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        server.stop()
    assert not short_dir.exists()
    # The data itself stays in the data directory.
    assert (data_dir / "redis" / "appendonly.aof").exists()


def test_start_failure_raises_with_the_redis_log_and_does_not_hang(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = EmbeddedRedis(tmp_path, port=port)
        started = time.monotonic()
        with pytest.raises(EmbeddedRedisError, match=r"(?s)exited with code .*Address already in use"):
            server.start(timeout=10)
        assert time.monotonic() - started < 10
    assert not server.running and server.pid is None
    # The failed start released the data directory: the next start can take it.
    with EmbeddedRedis(tmp_path) as again:
        assert again.running


def test_bad_arguments_are_rejected_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="log_level"):
        EmbeddedRedis(tmp_path, log_level="loud")
    with pytest.raises(ValueError, match="port"):
        EmbeddedRedis(tmp_path, port=70000)


def test_resolve_redis_uses_a_given_url_and_otherwise_starts_one(tmp_path: Path) -> None:
    assert resolve_redis(tmp_path, "redis://example.invalid:6379/0") == ("redis://example.invalid:6379/0", None)
    assert not (tmp_path / "redis").exists()

    url, server = resolve_redis(tmp_path, None)
    try:
        assert server is not None and server.server.running and server.watching and url == server.url
    finally:
        assert server is not None
        server.stop()


def test_fixtures_give_each_test_an_empty_session_redis(redis_client: redis.Redis, redis_server: EmbeddedRedis) -> None:
    assert redis_server.running
    assert redis_client.dbsize() == 0
    redis_client.set("left-behind", 1)  # the next test using redis_url must not see it


def test_fixtures_flush_between_tests(redis_client: redis.Redis) -> None:
    assert redis_client.get("left-behind") is None
