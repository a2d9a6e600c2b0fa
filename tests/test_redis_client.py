"""The one Redis client factory (`control.contract.redis_client`): which client a URL
gets, what a `redis+cluster://` URL and `--redis-cluster` accept and refuse, and
URLs printed without their password. Against the session's real Redis where a
client has to answer; the cluster itself is exercised in tests/test_redis_cluster.py."""

from __future__ import annotations

import argparse
import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from control.cli.main import main
from control.contract import rediskeys
from control.contract.redis_client import redis_client as make_client
from control.contract.redis_client import (
    POOL_CONNECTIONS,
    ClusterAddress,
    RedisUrlError,
    check_redis_url,
    cluster_option,
    cluster_url,
    is_cluster_url,
    parse_cluster_url,
    redacted_url,
    subscribe,
    sync_redis_client,
)
from control.contract.runtime import redis_answers
from tests.redis_cluster_support import cluster_ports


def test_a_cluster_url_names_its_nodes_tls_and_credentials():
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001") == ClusterAddress(
        (("10.0.0.1", 7000), ("10.0.0.2", 7001)))
    assert parse_cluster_url("rediss+cluster://app:s%40cret@[2001:db8::1]:7000/") == ClusterAddress(
        (("2001:db8::1", 7000),), tls=True, username="app", password="s@cret")
    assert parse_cluster_url("redis+cluster://:pw@h:1").password == "pw"
    assert is_cluster_url("REDIS+CLUSTER://h:1") and not is_cluster_url("redis://h:1")
    assert not is_cluster_url("unix:///run/redis.sock")


@pytest.mark.parametrize(("url", "fragment"), [
    ("redis://h:1", "has the form redis+cluster://HOST:PORT"),
    ("redis+cluster://", "names at least one node"),
    ("redis+cluster://h", "not 'h'"),
    ("redis+cluster://h:0", "port from 1 to 65535"),
    ("redis+cluster://h:1,h:99999", "not 'h:99999'"),
    ("redis+cluster://:secret@h:x", "not 'h:x'"),
    ("redis+cluster://h:1/2", "has one database"),
])
def test_a_bad_cluster_url_says_what_fits(url, fragment):
    with pytest.raises(RedisUrlError, match=fragment.replace("+", r"\+")) as info:
        parse_cluster_url(url)
    assert "secret" not in str(info.value)


def test_a_url_poolmta_cannot_use_is_refused_at_start(tmp_path, capsys):
    for url in ("redis://h:1/0", "rediss://:pw@h:1", "unix:///r.sock", "redis+cluster://h:1"):
        check_redis_url(url)
    with pytest.raises(RedisUrlError, match="starts with redis://") as info:
        check_redis_url("http://user:hunter2@h:1")
    assert "hunter2" not in str(info.value)
    assert main(["--data-dir", str(tmp_path), "--redis-url", "redis+cluster://bad", "control"]) != 0
    assert "error: a Redis Cluster node is HOST:PORT" in capsys.readouterr().err


def test_the_cluster_option_is_a_url_or_a_usage_error():
    assert cluster_url(" 127.0.0.1:7000,127.0.0.1:7001 ") == "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    assert cluster_option("h:1") == "redis+cluster://h:1"
    with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT"):
        cluster_option("h")


def test_cli_takes_one_of_redis_url_and_redis_cluster(capsys):
    assert main(["--redis-cluster", "h:1", "--redis-url", "redis://h:2", "pool", "list"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["--redis-cluster", "h", "pool", "list"]) == 2
    assert "a Redis Cluster node is HOST:PORT" in capsys.readouterr().err


@given(st.sampled_from(["redis", "rediss", "redis+cluster"]), st.text("abc:@%", min_size=1, max_size=12))
def test_a_printed_url_never_shows_the_password(scheme, password):
    url = f"{scheme}://user:{password}@h1:1,h2:2/0"
    assert f":{password}@" not in redacted_url(url) or password == "***"
    assert redacted_url(url).startswith(f"{scheme}://user:***@")


def test_urls_without_a_password_print_as_they_are():
    for url in ("redis://h:1/0", "unix:///tmp/r.sock", "redis+cluster://h:1,h:2", "redis://user@h:1"):
        assert redacted_url(url) == url


def test_one_redis_gets_the_plain_client_and_a_cluster_url_the_cluster_client(redis_url):
    assert type(make_client(redis_url)) is aioredis.Redis
    assert isinstance(make_client("redis+cluster://127.0.0.1:1"), AsyncRedisCluster)
    with sync_redis_client(redis_url, socket_timeout=5) as client:
        assert type(client) is redis.Redis and client.ping()


async def test_more_concurrent_commands_than_connections_wait_for_one_instead_of_failing(redis_url):
    # Each BLPOP holds its connection until its timeout: more of them than the pool
    # has connections must queue, not fail with "Too many connections" (a burst of
    # SMTP sessions each checking the suppression list once answered 451).
    client = make_client(redis_url)
    try:
        waits = [client.blpop([f"poolmta:test:burst:{n}"], timeout=0.3) for n in range(POOL_CONNECTIONS + 60)]
        assert await asyncio.gather(*waits) == [None] * (POOL_CONNECTIONS + 60)
        assert client.connection_pool.max_connections == POOL_CONNECTIONS
    finally:
        await client.aclose()


async def test_a_cluster_nobody_answers_is_a_redis_error_as_one_redis_down_is():
    port, _ = cluster_ports(2)
    client = make_client(f"redis+cluster://127.0.0.1:{port}", socket_connect_timeout=0.5)
    with pytest.raises(redis.RedisError):
        await client.get(rediskeys.snapshot_current_key(1))
    with pytest.raises(redis.RedisError):
        sync_redis_client(f"redis+cluster://127.0.0.1:{port}", socket_connect_timeout=0.5)
    assert not redis_answers(f"redis+cluster://127.0.0.1:{port}")
    assert not redis_answers("redis+cluster://nonsense")


async def test_subscribe_on_one_redis_hears_the_notice(redis_url, redis_client):
    client = make_client(redis_url)
    channel = rediskeys.snapshot_channel(2)
    pubsub = await subscribe(client, channel)
    try:
        redis_client.publish(channel, "3")
        message = None
        for _ in range(50):
            message = await pubsub.get_message(timeout=0.2)
            if message is not None:
                break
        assert message is not None and message["data"] == b"3"
    finally:
        await pubsub.aclose()
        await client.aclose()
