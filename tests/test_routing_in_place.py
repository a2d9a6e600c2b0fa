"""A worker applying routing deltas in place (`advance_in_place`) ends up routing
exactly as a worker that built each version from its full snapshot: the same pools,
Bridges, trusted networks, source IPs and stamped headers, and every pool's rotation
goes on from where it was (or starts afresh when the pool changed)."""

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from _fastpath import NoUsableIp
from control.contract.routing_delta import diff
from dataplane.delivery.egress import SourceSelector
from dataplane.return_path import bounce_domains
from dataplane.routing import PoolGone, Routing
from dataplane.snapshot_loader import advance_in_place, advances_in_place
from tests.dataplane_support import make_bridge, make_pool, make_snapshot

POOL_IDS = range(1, 7)
BRIDGE_IDS = range(1, 5)
ADDRESSES = [f"192.0.2.{n}" for n in range(1, 13)]  # few, so pools trade IPs
PROBES = ["198.51.100.7", "198.51.100.200", "203.0.113.9"]

_pool = st.tuples(
    st.lists(st.tuples(st.sampled_from(ADDRESSES), st.sampled_from([1, 2, 3, 0]),
                       st.sampled_from(["active", "active", "paused"])),
             min_size=1, max_size=4, unique_by=lambda ip: ip[0]),
    st.sampled_from(["", "news", "promo"]),
    st.sampled_from([(), (("X-Campaign", "spring"),), (("X-Campaign", "fall"),)]),
    st.sampled_from(["", "", "b1.example", "b2.example"]))
_bridge = st.tuples(st.sampled_from(POOL_IDS), st.sampled_from(["", "alerts"]),
                    st.sampled_from([(), ("198.51.100.0/24",), ("198.51.100.7/32",)]),
                    st.sampled_from(["a", "b", "c"]))
# Per entry and version: keep it as it was, drop it, or (most often) give it a new value.
_STEPS = st.sampled_from(["new", "keep", "new", "drop"])


def _evolve(draw, entries: dict, ids, strategy, make) -> None:
    """Each of `ids` kept as it was, dropped, or (most often) made anew from a draw."""
    for key in ids:
        step = draw(_STEPS)
        if step == "drop":
            entries.pop(key, None)
        elif step == "new":
            entries[key] = make(key, *draw(strategy))


def _new_pool(smtp_id, ips, feed, headers, bounce_domain):
    return replace(make_pool(smtp_id, ips, feed_type=feed, headers=headers), bounce_domain=bounce_domain)


def _new_bridge(bridge_id, smtp_id, feed, trusted, name):
    return make_bridge(bridge_id, smtp_id, "s3cret", username=f"{name}{bridge_id}", feed_type=feed, trusted=trusted)


@st.composite
def _versions(draw):
    """A few snapshots of one server, each from the last by random changes; an IP
    is in one pool only per version (as the control plane has it)."""
    pools, bridges, snapshots = {}, {}, []
    for version in range(1, draw(st.integers(2, 6)) + 1):
        _evolve(draw, pools, POOL_IDS, _pool, _new_pool)
        taken: set[str] = set()
        for smtp_id in sorted(pools):  # an IP another pool has already is dropped from this one
            pool = pools[smtp_id]
            if any(ip.address in taken for ip in pool.ips):
                pools[smtp_id] = replace(pool, ips=tuple(ip for ip in pool.ips if ip.address not in taken))
            taken.update(ip.address for ip in pools[smtp_id].ips)
        _evolve(draw, bridges, BRIDGE_IDS, _bridge, _new_bridge)
        snapshots.append(make_snapshot(1, version, [pools[k] for k in sorted(pools)],
                                       [bridges[k] for k in sorted(bridges)]))
    return snapshots


def _pick(selector: SourceSelector, smtp_id: int):
    try:
        return selector.pick(smtp_id)
    except NoUsableIp:
        return None


def _pool_or_gone(routing: Routing, smtp_id: int):
    try:
        return routing.pool(smtp_id)
    except PoolGone:
        return None


@given(_versions(), st.booleans())
def test_deltas_applied_in_place_route_as_the_full_snapshot_does(versions, two_at_once):
    live = Routing(versions[0])
    live.pool_named("")  # the name index built now: from here on advance keeps it
    # Each pool's rotation as it should be: its own selector, rebuilt only when the pool changed.
    expected = {p.smtp_id: SourceSelector([p]) for p in versions[0].pools}
    at = 0
    while at < len(versions) - 1:
        step = 2 if two_at_once and at + 2 < len(versions) else 1
        deltas = tuple(diff(versions[n], versions[n + 1]) for n in range(at, at + step))
        at += step
        new = versions[at]
        assert advances_in_place(deltas)
        assert advance_in_place(live, deltas) is live
        fresh = Routing(new)

        assert live.snapshot == new and live.version == new.version
        assert [_pool_or_gone(live, i) for i in POOL_IDS] == [_pool_or_gone(fresh, i) for i in POOL_IDS]
        assert live.bridges_by_id == fresh.bridges_by_id
        assert live.bridges_by_username == fresh.bridges_by_username
        assert [live.trusted_bridge(a) for a in PROBES] == [fresh.trusted_bridge(a) for a in PROBES]
        assert [live.sources.ip(a) for a in ADDRESSES] == [fresh.sources.ip(a) for a in ADDRESSES]
        # The indexes return paths and the inbound listener read, kept by advance.
        assert live.bounce_domains == fresh.bounce_domains == bounce_domains(new)
        assert [live.bounce_domain(i) for i in POOL_IDS] == [fresh.bounce_domain(i) for i in POOL_IDS]
        names = [f"PROMO-3-1-pool-{i}" for i in POOL_IDS]
        assert [live.pool_named(n) for n in names] == [fresh.pool_named(n) for n in names]
        assert [live.pool_of_ip(a) for a in ADDRESSES] == [fresh.pool_of_ip(a) for a in ADDRESSES]

        for pool in new.pools:
            kept = expected.get(pool.smtp_id)
            if kept is None or kept._pools[pool.smtp_id][0] != pool:
                expected[pool.smtp_id] = SourceSelector([pool])
        for pool in new.pools:  # the rotation exact to the message
            assert [_pick(live.sources, pool.smtp_id) for _ in range(4)] == \
                [_pick(expected[pool.smtp_id], pool.smtp_id) for _ in range(4)]
        for bridge in new.bridges:
            if _pool_or_gone(fresh, bridge.smtp_id) is None:
                continue
            try:
                route = live.route(bridge)
            except NoUsableIp:
                assert _pick(expected[bridge.smtp_id], bridge.smtp_id) is None
                continue
            again = fresh.route(bridge)
            assert (route.pool, route.feed_type, route.headers, route.bounce_domain) == \
                (again.pool, again.feed_type, again.headers, again.bounce_domain)
            assert (route.address, route.ip_hostname) == expected[bridge.smtp_id].pick(bridge.smtp_id)


def test_a_large_or_server_wide_change_is_rebuilt_in_a_thread_not_in_place():
    pools = [make_pool(n, [(f"10.0.{n // 250}.{n % 250}", 1)]) for n in range(1, 300)]
    old = make_snapshot(1, 1, [], [])
    assert not advances_in_place((diff(old, replace(old, version=2, pools=tuple(pools))),))
    assert not advances_in_place((diff(old, replace(old, version=2, zone="EU-9")),))
    assert advances_in_place((diff(old, replace(old, version=2, pools=tuple(pools[:3]))),))


def test_a_one_pool_change_at_thousands_of_pools_rebuilds_no_per_version_index():
    """What return paths and inbound reports ask of a version (a pool's bounce domain,
    the set of bounce domains, a pool by internal name or IP) is kept by the in-place
    apply: after a one-pool change the untouched pools' entries are the same objects,
    the domain set is the same object while no domain came or went, and the snapshot's
    own lazy pool index (O(pools) per version) is never built."""
    pools = [make_pool(n, [(f"10.{n >> 8}.{n & 255}.{k}", 1) for k in range(1, 4)]) for n in range(1, 3001)]
    old = make_snapshot(1, 1, pools, [])
    routing = Routing(old)
    domains = routing.bounce_domains
    by_name = {p.smtp_id: routing.pool_named(p.internal_name) for p in pools}
    changed = replace(pools[1499], feed_type="alerts")
    new = replace(old, version=2, pools=(*pools[:1499], changed, *pools[1500:]))
    advance_in_place(routing, (diff(old, new),))
    assert routing.bounce_domains is domains  # no domain came or went: nothing to rebuild
    assert routing.pool_named(changed.internal_name) is changed
    assert routing.pool_of_ip("10.5.220.1") is changed
    assert all(routing.pool_named(p.internal_name) is by_name[p.smtp_id] for p in pools if p.smtp_id != 1500)
    assert routing.snapshot._pools_by_id is None  # Snapshot.pool() was never needed

    own = replace(make_pool(5000, [("10.99.0.1", 1)]), bounce_domain="b.acme.example")
    newer = replace(new, version=3, pools=(*new.pools, own))
    advance_in_place(routing, (diff(new, newer),))
    assert routing.bounce_domains == domains | {"b.acme.example"} and routing.bounce_domain(5000) == "b.acme.example"
    advance_in_place(routing, (diff(newer, replace(newer, version=4, pools=new.pools)),))
    assert routing.bounce_domains == domains and routing.pool_named(own.internal_name) is None
    assert routing.pool_of_ip("10.99.0.1") is None and routing.bounce_domain(5000) == routing.bounce_domain(1)
