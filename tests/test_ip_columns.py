"""A pool's IPs kept column-wise (`control.contract.ip_list.IpList`) read back exactly
as encoded, and the source selector's flat address index and bounded caches answer
as a dict of every address and a fresh pick would."""

import pickle
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from _fastpath import RotationTable
from control.contract import snapshot
from control.contract.ip_list import IP_ACTIVE, IP_PAUSED, IpList, IpRoute
from dataplane.delivery.address_index import AddressIndex
from dataplane.delivery.source_selector import SourceSelector
from tests.dataplane_support import make_pool, make_snapshot

_address = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
_hostname = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@st.composite
def _ips(draw):
    """IPs with unique addresses, IPv4 and IPv6, paused ones and weight 0, and hostnames
    that may contain another IP's address (where a scan by text could be fooled)."""
    addresses = draw(st.lists(_address, min_size=0, max_size=12, unique=True))
    ips = []
    for address in addresses:
        hostname = draw(st.one_of(_hostname, st.sampled_from(addresses).map(lambda a: f"{a}.{a}"),
                                  st.sampled_from(addresses)))
        ips.append(IpRoute(address, draw(st.sampled_from([0, 1, 7, 100])),
                           draw(st.sampled_from([IP_ACTIVE, IP_PAUSED])), hostname))
    return ips


@given(_ips())
def test_an_ip_read_through_the_columns_is_what_was_encoded(ips):
    pool = make_pool(5, [])
    pool = replace(pool, ips=tuple(ips))
    decoded = snapshot.decode(snapshot.encode(make_snapshot(1, 1, [pool], []))).pools[0]
    for columns in (pool.ips, decoded.ips):
        assert isinstance(columns, IpList)
        assert len(columns) == len(ips) and tuple(columns) == tuple(ips) and columns == ips
        for index, ip in enumerate(ips):
            assert columns[index] == ip and columns[index - len(ips)] == ip
            assert (columns.address(index), columns.hostname(index)) == columns.source(index) == \
                (ip.address, ip.hostname)
            assert (columns.weight(index), columns.state(index), columns.usable(index)) == \
                (ip.weight, ip.state, ip.usable)
            assert columns.position(ip.address) == index
        assert list(columns.addresses()) == [ip.address for ip in ips]
        assert columns.rotation_entries() == [(ip.address, ip.weight, ip.usable) for ip in ips]
        assert columns.position("203.0.113.254x") == -1
    assert decoded == pool and hash(decoded.ips) == hash(tuple(ips))
    assert pickle.loads(pickle.dumps(decoded.ips)) == decoded.ips


def test_an_ip_list_joins_and_slices_as_the_tuple_it_replaces():
    one, two = IpRoute("192.0.2.1", 1, IP_ACTIVE, "a.example"), IpRoute("2001:db8::2", 0, IP_PAUSED, "b.example")
    ips = IpList([one, two])
    assert ips + (two,) == (one, two, two) and (one,) + IpList([two]) == (one, two)
    assert ips[1:] == (two,) and ips.index(two) == 1 and two in ips and bool(IpList()) is False
    assert repr(ips) == f"IpList({(one, two)!r})"


class _Registry:
    """Values handed to an AddressIndex, each naming one address for good."""

    def __init__(self):
        self.addresses: dict[int, str] = {}

    def value(self, address: str) -> int:
        value = len(self.addresses)
        self.addresses[value] = address
        return value

    def holds(self, value: int, address: str) -> bool:
        return self.addresses.get(value) == address


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=300))
def test_the_address_index_answers_as_a_dict_of_every_address(steps):
    addresses = [f"10.0.{n // 7}.{n}" for n in range(50)] + [f"2001:db8::{n:x}" for n in range(11)]
    registry = _Registry()
    index, model = AddressIndex(registry.holds), {}
    for add, n in steps:
        address = addresses[n]
        if add:
            model[address] = registry.value(address)
            index.set(address, model[address])
        else:
            model.pop(address, None)
            index.discard(address)
        assert len(index) == len(model)
    assert {a: index.get(a) for a in addresses} == {a: model.get(a) for a in addresses}
    copy = index.copy(registry.holds)
    assert {a: copy.get(a) for a in addresses} == {a: model.get(a) for a in addresses}


def _pools(count: int):
    return [make_pool(n, [(f"10.{n // 250}.{n % 250}.1", 3), (f"10.{n // 250}.{n % 250}.2", 1),
                          (f"10.{n // 250}.{n % 250}.3", 2, IP_PAUSED)]) for n in range(1, count + 1)]


def test_picks_through_the_bounded_caches_follow_the_rotation_exactly():
    pools = _pools(2600)  # more pools than the picked-IP cache keeps
    selector = SourceSelector(pools)
    table = RotationTable.from_pools((p.smtp_id, p.ips.rotation_entries()) for p in pools)
    for _ in range(3):
        for pool in pools:
            ip = pool.ips[table.pick_key(pool.smtp_id)]
            assert selector.pick(pool.smtp_id) == (ip.address, ip.hostname)
            assert selector.pool_of(ip.address) is pool
            assert selector.ip(ip.address) == (True, ip.hostname)
    assert selector.ip(pools[7].ips[2].address) == (False, pools[7].ips[2].hostname)
    assert selector.pool_of("10.99.99.99") is None and selector.ip("10.99.99.99") is None


def test_a_change_in_place_drops_what_the_caches_kept_of_the_pools_it_touched():
    pools = _pools(3)
    selector = SourceSelector(pools)
    moved = pools[0].ips[0]
    assert selector.pick(1) == (moved.address, moved.hostname) and selector.ip(moved.address).usable
    # The IP moves to pool 2 under a new HELO name; pool 1 keeps only its second IP.
    renamed = IpRoute(moved.address, 1, IP_ACTIVE, "renamed.example")
    one = replace(pools[0], ips=(pools[0].ips[1],))
    two = replace(pools[1], ips=(renamed, *pools[1].ips))
    selector.replace(selector.prepare({1: one, 2: two}))
    assert selector.pick(1) == (one.ips[0].address, one.ips[0].hostname)
    assert selector.pool_of(moved.address) is two and selector.ip(moved.address) == (True, "renamed.example")
    selector.replace(selector.prepare({2: None}))
    assert selector.pool_of(moved.address) is None and selector.ip(moved.address) is None
