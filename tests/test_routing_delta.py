"""Routing deltas: a delta turns one snapshot into the next exactly, survives its wire
form, and a chain with a gap is refused; workers following deltas keep the rotation
of the pools that did not change."""

from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from control.contract import rediskeys, routing_delta, snapshot
from control.contract.routing_delta import apply, decode_delta, delta_chain, diff, encode_delta
from dataplane.routing import Routing
from dataplane.snapshot_loader import SnapshotLoader, follow_deltas
from tests.dataplane_support import make_bridge, make_pool, make_snapshot
from tests.support import eventually

_pool = st.builds(
    lambda smtp_id, ips, feed: make_pool(smtp_id, [(f"192.0.2.{smtp_id * 10 + n}", w) for n, w in enumerate(ips)],
                                         feed_type=feed),
    st.integers(1, 8), st.lists(st.integers(0, 5), max_size=4), st.sampled_from(["", "news", "promo"]))
_bridge = st.builds(lambda bridge_id, smtp_id: make_bridge(bridge_id, smtp_id, "s3cret"),
                    st.integers(1, 6), st.integers(1, 8))
_key = st.builds(lambda user_id, domain: snapshot.DkimKeyRoute(user_id, domain, "s1", "ed25519-sha256", b"sealed"),
                 st.integers(1, 3), st.sampled_from(["a.example", "b.example"]))


@st.composite
def _snapshots(draw, version: int):
    pools = {p.smtp_id: p for p in draw(st.lists(_pool, max_size=6))}
    bridges = {b.bridge_id: b for b in draw(st.lists(_bridge, max_size=4))}
    keys = {(k.user_id, k.domain): k for k in draw(st.lists(_key, max_size=4))}
    snap = make_snapshot(1, version, [pools[k] for k in sorted(pools)], [bridges[k] for k in sorted(bridges)],
                         zone=draw(st.sampled_from(["US-1", "EU-1"])))
    return replace(snap, published_at_ms=version, dkim_keys=tuple(keys[k] for k in sorted(keys)))


@given(_snapshots(3), _snapshots(7))
def test_a_delta_turns_the_old_snapshot_into_the_new_one_through_its_wire_form(old, new):
    delta = decode_delta(encode_delta(diff(old, new)))
    assert delta == diff(old, new)
    assert apply(old, delta) == new
    assert delta.entries == 0 or old != replace(new, version=old.version, published_at_ms=old.published_at_ms)


def test_a_delta_names_only_what_changed_and_keeps_the_rest_as_it_was():
    pools = [make_pool(n, [(f"192.0.2.{n}", 1)]) for n in range(1, 5)]
    old = make_snapshot(1, 1, pools, [make_bridge(1, 1, "s")])
    new = replace(old, version=2, pools=(pools[0], replace(pools[1], feed_type="promo"), pools[3]))
    delta = diff(old, new)
    assert ([p.smtp_id for p in delta.pools], delta.pools_gone, delta.bridges, delta.server) == ([2], (3,), (), None)
    applied = apply(old, delta)
    assert applied.pools[0] is pools[0] and applied.bridges is old.bridges


def test_a_chain_with_a_gap_or_from_elsewhere_is_refused():
    snaps = [make_snapshot(1, v, [make_pool(1, [("192.0.2.1", v)])], []) for v in (1, 2, 5)]
    d2, d5 = (encode_delta(diff(a, b)) for a, b in zip(snaps, snaps[1:]))
    assert [d.version for d in delta_chain(1, 5, [d2, d5])] == [2, 5]
    assert delta_chain(1, 5, [d5]) is None  # 2 is missing
    assert delta_chain(2, 5, [d5])[0].base == 2
    assert delta_chain(1, 9, [d2, d5]) is None  # does not reach 9
    with pytest.raises(snapshot.SnapshotError):
        apply(snaps[0], diff(snaps[1], snaps[2]))
    with pytest.raises(snapshot.SnapshotError):
        decode_delta(b"\x81\xa6schema\x02")
    assert routing_delta.newest_full([3, 9, 12], 10) == 9 and routing_delta.newest_full([12], 10) is None


def test_rotation_stays_exact_to_the_message_across_a_change_to_another_pool():
    weighted = make_pool(1, [("192.0.2.1", 5), ("192.0.2.2", 1), ("192.0.2.3", 1)])
    other = make_pool(2, [("192.0.2.9", 1)])
    bridge, other_bridge = make_bridge(1, 1, "s"), make_bridge(2, 2, "t")
    old = make_snapshot(1, 1, [weighted, other], [bridge, other_bridge])
    routing = Routing(old)
    picks = [routing.route(bridge).address[-1] for _ in range(3)]
    # Another pool gains an IP, a third pool appears: pool 1's rotation goes on where it was.
    third = make_pool(3, [("192.0.2.7", 1)])
    new = replace(old, version=2, pools=(weighted, replace(other, ips=other.ips + make_pool(
        2, [("192.0.2.8", 1)]).ips), third))
    routing = follow_deltas(routing, (diff(old, new),), None)
    picks += [routing.route(bridge).address[-1] for _ in range(11)]
    assert "".join(picks) == "1121311" * 2  # smooth weighted 5:1:1 (a a b a c a a), never restarted
    assert routing.sources.ip("192.0.2.8").usable and routing.sources.ip("192.0.2.7").usable
    # The changed pool's IPs are the new ones; a removed pool's IPs are gone.
    newest = replace(new, version=3, pools=(weighted, third))
    routing = follow_deltas(routing, (diff(new, newest),), None)
    assert routing.sources.ip("192.0.2.9") is None and routing.route(bridge).address == "192.0.2.1"


async def test_a_worker_follows_the_log_and_after_a_gap_loads_the_newest_full_snapshot(redis_client, redis_url):
    weighted = make_pool(1, [("192.0.2.1", 5), ("192.0.2.2", 1), ("192.0.2.3", 1)])
    bridge = make_bridge(1, 1, "s")
    v1 = make_snapshot(1, 1, [weighted], [bridge])
    v2 = replace(v1, version=2, pools=(weighted, make_pool(2, [("192.0.2.9", 1)])))
    v5 = replace(v2, version=5, pools=(weighted,))
    full, changes, current = (rediskeys.snapshot_full_key(1), rediskeys.snapshot_changes_key(1),
                              rediskeys.snapshot_current_key(1))
    redis_client.hset(full, "1", snapshot.encode(v1))
    redis_client.set(current, 1)
    loader = SnapshotLoader(aioredis.Redis.from_url(redis_url), 1, "w1", heartbeat_interval=0.05)
    await loader.start()
    try:
        assert loader.version == 1
        picks = [loader.current.route(bridge).address[-1] for _ in range(3)]
        redis_client.xadd(changes, {"d": encode_delta(diff(v1, v2))}, id="2-0")
        redis_client.set(current, 2)
        await eventually(lambda: loader.version == 2)
        assert loader.current.snapshot == v2
        picks += [loader.current.route(bridge).address[-1] for _ in range(2)]
        # A repair published version 5 as a full snapshot alone: no delta reaches it.
        redis_client.hset(full, "5", snapshot.encode(v5))
        redis_client.set(current, 5)
        await eventually(lambda: loader.version == 5)
        assert loader.current.snapshot == v5
        picks += [loader.current.route(bridge).address[-1] for _ in range(9)]
        assert "".join(picks) == "1121311" * 2  # pool 1 was never touched: its rotation went on
    finally:
        await loader.stop()
        await loader._redis.aclose()
