"""Paged lists done in SQL (issue 14): every List RPC reads one page with a keyset
query (`WHERE key > :after ORDER BY key LIMIT :size + 1`) that an index serves as a
range scan; ListAccounts, ListPools, ListIps and ListBridges filter by MTA server and
state in the same query, and a token is bound to its filter; ListUnattributedReports
pages with a cursor of its own; GetMtaServer names a server for an account token.

The property tests walk a listing while another SQLite connection inserts and
deletes rows between pages (as another control-plane writer would): no row comes
twice, none that stayed throughout is skipped, and the order holds."""

from __future__ import annotations

import base64
import sqlite3
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.contract import rediskeys
from control.contract.unattributed import UnattributedReport
from control.registry import Registry
from control.store import Store
from tests.control_support import expect_error
from control._pb.poolmta.v1 import poolmta_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


# -- between pages, another writer inserts and deletes -----------------------------

# A step between two pages: insert IPs (created at one of a few instants, so keys tie
# on created_at and the address breaks the tie) or delete the n-th IP still there.
_STEP = st.one_of(
    st.tuples(st.just("insert"), st.lists(st.integers(0, 5), min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 40)),
)


class _Platform:
    """A real Store and Registry on a temporary database, with one PRO account, its
    pool, and a second connection that writes behind the Registry's back."""

    def __init__(self, directory: Path):
        self.path = directory / "poolmta.sqlite"
        self.store = Store.open(self.path)
        self.registry = Registry(self.store)
        self.server = self.registry.register_server("mta1.example.net", "EU-1")
        self.account, _ = self.registry.create_account("acme", "PRO")
        self.pool = self.registry.create_pool(self.account, label="promo", server_id=self.server.server_id)
        self.other = sqlite3.connect(self.path, isolation_level=None)
        self.serial = 0

    def insert_ips(self, instants: list[int]) -> None:
        for instant in instants:
            self.serial += 1
            self.other.execute(
                """INSERT INTO ips (address, user_id, server_id, smtp_id, weight, state, hostname, created_at)
                   VALUES (?, ?, ?, ?, 1, 'active', 'mta1.example.net', ?)""",
                (f"10.{self.serial // 65536}.{self.serial // 256 % 256}.{self.serial % 256}",
                 self.account.user_id, self.server.server_id, self.pool.smtp_id, 1_700_000_000.0 + instant / 4))

    def addresses(self) -> list[str]:
        return [r[0] for r in self.other.execute("SELECT address FROM ips ORDER BY created_at, address")]

    def close(self) -> None:
        self.other.close()
        self.store.close()


@settings(max_examples=40, deadline=None)
@given(initial=st.lists(st.integers(0, 5), max_size=25), size=st.integers(1, 4),
       steps=st.lists(st.lists(_STEP, max_size=3), max_size=12))
def test_a_listing_under_concurrent_writes_never_repeats_or_skips(initial, size, steps):
    with tempfile.TemporaryDirectory() as directory:
        platform = _Platform(Path(directory))
        try:
            platform.insert_ips(initial)
            stayed = set(platform.addresses())
            seen: list = []
            token, page_number = "", 0
            while True:
                page = platform.registry.list_ips_page(platform.account, size, token)
                assert len(page.items) <= size
                seen += [(ip.created_at, ip.address) for ip in page.items]
                token = page.next_page_token
                if not token:
                    break
                for kind, value in steps[page_number] if page_number < len(steps) else ():
                    if kind == "insert":
                        platform.insert_ips(value)
                    elif platform.addresses():
                        gone = platform.addresses()[value % len(platform.addresses())]
                        platform.other.execute("DELETE FROM ips WHERE address = ?", (gone,))
                        stayed.discard(gone)
                page_number += 1
            addresses = [address for _, address in seen]
            assert len(addresses) == len(set(addresses)), "an IP came twice"
            assert seen == sorted(seen), "out of order"
            assert stayed <= set(addresses), "an IP present throughout was skipped"
        finally:
            platform.close()


@settings(max_examples=20, deadline=None)
@given(initial=st.integers(0, 30), size=st.integers(1, 5),
       deletions=st.lists(st.integers(0, 60), max_size=10), inserts=st.integers(0, 5))
def test_pools_page_through_deletes_and_inserts(initial, size, deletions, inserts):
    with tempfile.TemporaryDirectory() as directory:
        platform = _Platform(Path(directory))
        try:
            for n in range(initial):
                platform.registry.create_pool(platform.account, label=f"p{n}", server_id=platform.server.server_id)
            stayed = {p.smtp_id for p in platform.store.pools_of(platform.account.user_id)}
            seen, token, step = [], "", 0
            while True:
                page = platform.registry.list_pools_page(platform.account, size, token)
                seen += [p.smtp_id for p in page.items]
                token = page.next_page_token
                if not token:
                    break
                if step < len(deletions):  # delete a pool already given out or still ahead
                    ids = sorted(stayed - {platform.pool.smtp_id})
                    if ids:
                        gone = ids[deletions[step] % len(ids)]
                        platform.other.execute("DELETE FROM pools WHERE smtp_id = ?", (gone,))
                        stayed.discard(gone)
                if step < inserts:
                    platform.registry.create_pool(platform.account, label=f"new{step}",
                                                  server_id=platform.server.server_id)
                step += 1
            assert len(seen) == len(set(seen)) and seen == sorted(seen)
            assert stayed <= set(seen)
        finally:
            platform.close()


def test_every_page_query_is_one_range_scan(tmp_path):
    """The query plan of each listing, filtered or not, walks an index in the listing's
    order: no temporary B-tree to sort, no scan of a whole table."""
    platform = _Platform(tmp_path)
    try:
        platform.insert_ips([1, 2, 3])
        plans: list[str] = []
        conn = platform.store._conn
        conn.set_trace_callback(lambda sql: plans.extend(
            " / ".join(r[3] for r in platform.other.execute(f"EXPLAIN QUERY PLAN {sql}"))
            for _ in [0] if sql.lstrip().upper().startswith("SELECT") and "LIMIT" in sql))
        registry, account, server_id = platform.registry, platform.account, platform.server.server_id
        token = registry.list_ips_page(account, 1, "").next_page_token
        for call in (
            lambda: registry.list_accounts_page(10, ""),
            lambda: registry.list_accounts_page(10, "", server_id=server_id, tier="PRO"),
            lambda: registry.list_servers_page(10, ""),
            lambda: registry.list_pools_page(account, 10, ""),
            lambda: registry.list_pools_page(account, 10, "", server_id=server_id, status="ACTIVE"),
            lambda: registry.list_ips_page(account, 1, token),
            lambda: registry.list_ips_page(account, 10, "", server_id=server_id, state="paused"),
            lambda: registry.list_ips_page(account, 10, "", smtp_id=platform.pool.smtp_id),
            lambda: registry.list_shared_ips_page(server_id, 10, ""),
            lambda: registry.list_bridges_page(account, 10, ""),
            lambda: registry.list_bridges_page(account, 10, "", server_id=server_id, revoked=False),
            lambda: registry.list_bridges_page(account, 10, "", smtp_id=platform.pool.smtp_id),
            lambda: registry.list_dkim_keys_page(account, 10, ""),
            lambda: registry.list_dkim_keys_page(account, 10, "", domain="example.com"),
        ):
            plans.clear()
            call()
            page_plans = [p for p in plans if "SCAN" in p or "SEARCH" in p]
            assert page_plans, plans
            main = page_plans[-1]
            assert "TEMP B-TREE" not in main, main
            assert not any(f"SCAN {table}" in main.split(" / ")[0] for table in ("i", "p", "b", "dkim_keys")), main
    finally:
        conn.set_trace_callback(None)
        platform.close()


# -- filters over gRPC --------------------------------------------------------------


async def test_lists_filter_by_server_and_state(admin, make_account, server):
    acme, _ = await make_account("acme")
    await make_account("initech", pb.ESSENTIAL)
    other = await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta2.example.net",
                                                                              zone="US-1"))
    here = await acme.pools.CreatePool(pb.CreatePoolRequest(label="here", server_id=server.server_id))
    there = await acme.pools.CreatePool(pb.CreatePoolRequest(label="there", server_id=other.server_id))
    idle = await acme.pools.CreatePool(pb.CreatePoolRequest(label="idle", server_id=server.server_id))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=here.smtp_id))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.3", smtp_id=there.smtp_id))
    await acme.ips.PauseIp(pb.PauseIpRequest(address="127.0.0.3"))
    await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="a", smtp_id=here.smtp_id))
    gone = (await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="b", smtp_id=there.smtp_id))).bridge
    await acme.bridges.RevokeBridge(pb.RevokeBridgeRequest(bridge_id=gone.bridge_id))

    async def labels(request):
        return [p.label for p in (await acme.pools.ListPools(request)).pools]

    assert await labels(pb.ListPoolsRequest(server_id=server.server_id)) == ["here", "idle"]
    assert await labels(pb.ListPoolsRequest(status=pb.ACTIVE)) == ["here"]
    assert await labels(pb.ListPoolsRequest(status=pb.PAUSED)) == ["there"]
    assert await labels(pb.ListPoolsRequest(status=pb.EMPTY, server_id=server.server_id)) == ["idle"]
    assert idle.status == pb.EMPTY

    ips = await acme.ips.ListIps(pb.ListIpsRequest(state=pb.IP_PAUSED))
    assert [i.address for i in ips.ips] == ["127.0.0.3"]
    ips = await acme.ips.ListIps(pb.ListIpsRequest(server_id=server.server_id, state=pb.IP_ACTIVE))
    assert [i.address for i in ips.ips] == ["127.0.0.2"]

    bridges = await acme.bridges.ListBridges(pb.ListBridgesRequest(state=pb.BRIDGE_REVOKED))
    assert [b.name for b in bridges.bridges] == ["b"]
    bridges = await acme.bridges.ListBridges(pb.ListBridgesRequest(state=pb.BRIDGE_ACTIVE, server_id=other.server_id))
    assert list(bridges.bridges) == []

    accounts = await admin.accounts.ListAccounts(pb.ListAccountsRequest(server_id=other.server_id))
    assert [a.name for a in accounts.accounts] == ["acme"]
    accounts = await admin.accounts.ListAccounts(pb.ListAccountsRequest(tier=pb.ESSENTIAL))
    assert [a.name for a in accounts.accounts] == ["initech"]

    await expect_error(acme.pools.ListPools(pb.ListPoolsRequest(server_id=99)), NOT_FOUND, "server_id 99")
    await expect_error(acme.pools.ListPools(pb.ListPoolsRequest(status=9)), INVALID, "status must be one of ACTIVE")
    await expect_error(acme.ips.ListIps(pb.ListIpsRequest(state=7)), INVALID, "IP_ACTIVE, IP_PAUSED")
    await expect_error(acme.bridges.ListBridges(pb.ListBridgesRequest(state=3)), INVALID, "BRIDGE_REVOKED")
    await expect_error(admin.accounts.ListAccounts(pb.ListAccountsRequest(tier=8)), INVALID, "tier")


async def test_a_token_is_bound_to_its_filter(admin, acme, server):
    for n in range(3):
        await acme.pools.CreatePool(pb.CreatePoolRequest(label=f"p{n}", server_id=server.server_id))
    first = await acme.pools.ListPools(pb.ListPoolsRequest(page_size=1, server_id=server.server_id))
    assert first.next_page_token
    second = await acme.pools.ListPools(pb.ListPoolsRequest(page_size=1, server_id=server.server_id,
                                                            page_token=first.next_page_token))
    assert [p.label for p in second.pools] == ["p1"]
    for changed in (pb.ListPoolsRequest(page_token=first.next_page_token),
                    pb.ListPoolsRequest(server_id=server.server_id, status=pb.EMPTY, page_token=first.next_page_token)):
        await expect_error(acme.pools.ListPools(changed), INVALID, "same filter")
    # An edited token (its key changed, still well-formed JSON) fails its check.
    raw = base64.urlsafe_b64decode(first.next_page_token + "=" * (-len(first.next_page_token) % 4))
    assert b"]]" in raw
    edited = base64.urlsafe_b64encode(raw.replace(b"]]", b"0]]", 1)).decode().rstrip("=")
    await expect_error(acme.pools.ListPools(pb.ListPoolsRequest(server_id=server.server_id, page_token=edited)),
                       INVALID, "page_token is not one this list gave out")
    accounts = await admin.accounts.ListAccounts(pb.ListAccountsRequest(page_size=1, tier=pb.PRO))
    await expect_error(admin.accounts.ListAccounts(pb.ListAccountsRequest(page_token=accounts.next_page_token or "x")),
                       INVALID, "page_token")


async def test_an_account_names_a_server_by_hostname(acme, server):
    found = await acme.servers.GetMtaServer(pb.GetMtaServerRequest(hostname="mta1.example.net"))
    assert found.server_id == server.server_id
    await expect_error(acme.servers.GetMtaServer(pb.GetMtaServerRequest(hostname="mta9.example.net")), NOT_FOUND)
    await expect_error(acme.servers.ListMtaServers(pb.ListMtaServersRequest()), grpc.StatusCode.PERMISSION_DENIED)


# -- unattributed reports: a cursor over the kept Redis lists ------------------------


def _report(server_id: int, at_ms: int, n: int) -> str:
    return UnattributedReport(at_ms=at_ms, server_id=server_id, reason="names no pool", kind="dsn", peer="192.0.2.1",
                              mail_from="", rcpt_tos=("bounces@example.net",), size=10, sha256=f"{n:064x}",
                              subject=f"report {n}", raw=b"0123456789").encode()


async def test_unattributed_reports_page_newest_first_while_more_arrive(admin, server, redis_client):
    other = await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta2.example.net",
                                                                              zone="US-1"))
    now = int(time.time() * 1000)
    keys = {}
    for n in range(12):  # oldest pushed first (LPUSH: the head is the newest); two per millisecond
        server_id = (server.server_id, other.server_id)[n % 3 == 0]
        keys[f"report {n}"] = (now + n // 2, server_id, f"{n:064x}")
        redis_client.lpush(rediskeys.unattributed_reports_key(server_id), _report(server_id, now + n // 2, n))
    first = await admin.servers.ListUnattributedReports(pb.ListUnattributedReportsRequest(page_size=5))
    assert len(first.reports) == 5 and first.next_page_token
    # Newer reports arrive between pages: the next page goes on from the last one given.
    redis_client.lpush(rediskeys.unattributed_reports_key(server.server_id), _report(server.server_id, now + 99, 99))
    seen = list(first.reports)
    token = first.next_page_token
    while token:
        page = await admin.servers.ListUnattributedReports(
            pb.ListUnattributedReportsRequest(page_size=5, page_token=token))
        seen += page.reports
        token = page.next_page_token
    subjects = [r.subject for r in seen]
    assert len(subjects) == 12 == len(set(subjects)) and "report 99" not in subjects
    assert subjects == sorted(keys, key=keys.get, reverse=True)
    # `limit`, page_size's old name, still caps a page.
    legacy = await admin.servers.ListUnattributedReports(pb.ListUnattributedReportsRequest(limit=2))
    assert len(legacy.reports) == 2 and legacy.next_page_token
    await expect_error(admin.servers.ListUnattributedReports(pb.ListUnattributedReportsRequest(
        server_id=server.server_id, page_token=first.next_page_token)), INVALID, "page_token")


@pytest.mark.parametrize("size", [1001, -1])
async def test_unattributed_page_size_is_bounded(admin, server, size):
    await expect_error(admin.servers.ListUnattributedReports(pb.ListUnattributedReportsRequest(page_size=size)),
                       INVALID, "page_size must be 1-1000")
