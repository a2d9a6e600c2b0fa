"""The embedded Redis is supervised: restarted from its AOF when it dies, with
bounded backoff, and never after stop() (issue 11 item 5)."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from control.embedded_redis import EmbeddedRedis
from control.redis_supervisor import RedisSupervisor, resolve_redis, restart_delay
from tests.redis_support import aof_path, crash_into_a_loop, replace_file
from tests.support import process_gone, wait_until


def test_backoff_doubles_from_a_tenth_of_a_second_to_five_seconds():
    assert [restart_delay(n) for n in range(1, 10)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert restart_delay(10_000) == 5.0  # no overflow however long the crash loop
    # A crash loop of n restarts takes at least the sum of its delays: 100 restarts, > 7 minutes.
    assert sum(restart_delay(n) for n in range(1, 101)) > 420
    with pytest.raises(ValueError):
        restart_delay(0)
    with pytest.raises(ValueError):
        RedisSupervisor(EmbeddedRedis(Path("/nonexistent")), initial_delay=6.0, max_delay=5.0)


@pytest.mark.slow
def test_a_killed_redis_is_restarted_from_its_aof_with_every_acknowledged_write(supervised, caplog):
    caplog.set_level(logging.WARNING, logger="control.redis_supervisor")
    client = redis.Redis.from_url(supervised.url)
    try:
        for _ in range(500):
            client.hincrby("{stats:1}:pool:7", "sent", 1)
        first_pid = supervised.server.pid
        os.kill(first_pid, signal.SIGKILL)

        assert wait_until(lambda: supervised.restarts == 1 and supervised.server.running, timeout=20)
        assert supervised.server.pid != first_pid
        assert wait_until(lambda: process_gone(first_pid), timeout=5)
        # Same URL, and every increment Redis acknowledged before the kill is there.
        assert client.hget("{stats:1}:pool:7", "sent") == b"500"
    finally:
        client.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("exited (code -9)" in m for m in messages), messages
    assert any("restarted (pid" in m for m in messages), messages


@pytest.mark.slow
def test_a_crash_loop_backs_off_and_recovers_once_redis_can_start(supervised, caplog):
    caplog.set_level(logging.ERROR, logger="control.redis_supervisor")
    client = redis.Redis.from_url(supervised.url)
    try:
        client.set("kept", "yes")
        good = crash_into_a_loop(supervised)
        assert wait_until(lambda: supervised.attempts >= 3, timeout=20)
        time.sleep(3.0)
        # Spinning would make hundreds of attempts in these seconds; the backoff
        # (0.1, 0.2, 0.4, 0.8, 1.6, 3.2 s...) allows a handful.
        assert supervised.attempts <= 8, supervised.attempts
        assert supervised.restarts == 0 and not supervised.server.running
        assert any("Bad file format" in r.getMessage() for r in caplog.records), "the log tail is not logged"

        replace_file(aof_path(supervised.server), good)
        assert wait_until(lambda: supervised.restarts == 1, timeout=20)
        assert supervised.server.running
        assert client.get("kept") == b"yes"
    finally:
        client.close()


@pytest.mark.slow
def test_stop_during_backoff_stops_cleanly_and_nothing_restarts_after(supervised):
    crash_into_a_loop(supervised)
    assert wait_until(lambda: supervised.attempts >= 2, timeout=20)
    replace_file(aof_path(supervised.server), b"")  # from now on a restart would succeed

    supervised.stop()

    assert not supervised.watching
    attempts = supervised.attempts
    time.sleep(1.0)  # longer than the next restart was due
    assert supervised.attempts == attempts
    assert not supervised.server.running
    assert not (supervised.server.redis_dir / "redis.pid").exists()
    supervised.stop()  # idempotent


@pytest.mark.slow
def test_stop_ends_the_watcher_and_the_server_without_a_restart(supervised):
    pid = supervised.server.pid
    supervised.stop()
    assert not supervised.watching and supervised.restarts == 0
    assert wait_until(lambda: process_gone(pid), timeout=5)


def test_an_external_redis_is_not_started_or_supervised(tmp_path):
    assert resolve_redis(tmp_path, "redis://127.0.0.1:1/0") == ("redis://127.0.0.1:1/0", None)
    assert not (tmp_path / "redis").exists()
