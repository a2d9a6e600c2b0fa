"""Benchmark ListPools at 50,000 pools: one page read in SQL against the whole list.

The platform of issue 14's table at its largest size, written to SQLite directly
(as the issue measured it): one MTA server, one PRO account holding 50,000 pools,
each with one dedicated IP and one Bridge (so every pool's counts have rows to
count). Measured through the Registry, the call the ListPools servicer makes:

- `first`: `list_pools_page(account, 100, "")`, the first page;
- `deep`: the same for the page after pool 45,000 (its token taken by walking there);
- `whole`: `list_pools(account)`, every pool read, which is what ListPools did before
  it paged in SQL (it then cut one page out in Python).

The ratios whole / first and whole / deep are printed after the table; deep / first
near 1 shows a page costs the same however deep it is.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest

from control.registry import Registry
from control.store import Store

POOLS = 50_000
PAGE = 100
DEEP = 45_000


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, object, str]]:
    """A Registry over 50,000 pools of one account, and the token of the page after pool DEEP."""
    path = tmp_path_factory.mktemp("bench-lists") / "poolmta.sqlite"
    store = Store.open(path)
    registry = Registry(store)
    server = registry.register_server("mta1.example.net", "EU-1")
    account, _ = registry.create_account("acme", "PRO")
    conn = sqlite3.connect(path, isolation_level=None)
    now = time.time()
    first_id = 1_000
    conn.execute("BEGIN")
    conn.executemany(
        """INSERT INTO pools (smtp_id, user_id, server_id, label, tag, internal_name, is_default, created_at)
           VALUES (?, ?, ?, ?, 'bench', ?, ?, ?)""",
        [(first_id + n, account.user_id, server.server_id, f"pool {n}", f"bench-{account.user_id}-pool-{n}",
          int(n == 0), now) for n in range(POOLS)])
    conn.executemany(
        """INSERT INTO ips (address, user_id, server_id, smtp_id, weight, state, hostname, created_at)
           VALUES (?, ?, ?, ?, 1, 'active', 'mta1.example.net', ?)""",
        [(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", account.user_id, server.server_id, first_id + n, now + n)
         for n in range(POOLS)])
    conn.executemany(
        """INSERT INTO bridges (bridge_id, user_id, name, smtp_id, server_id, username, secret_hash, created_at)
           VALUES (?, ?, ?, ?, ?, ?, 'x', ?)""",
        [(n + 1, account.user_id, f"bridge {n}", first_id + n, server.server_id, f"br-{n}", now)
         for n in range(POOLS)])
    conn.execute("COMMIT")
    conn.close()
    token = ""
    for _ in range(DEEP // 1000):
        token = registry.list_pools_page(account, 1000, token).next_page_token
    try:
        yield registry, account, token
    finally:
        store.close()


@pytest.mark.parametrize("variant", ["first", "deep", "whole"])
def test_list_pools(benchmark, measure, platform, variant):
    benchmark.group = f"list pools of {POOLS:,} (page of {PAGE})"
    benchmark.extra_info["variant"] = variant
    registry, account, deep_token = platform
    if variant == "whole":
        assert len(measure(registry.list_pools, account)) == POOLS
        return
    page = measure(registry.list_pools_page, account, PAGE, deep_token if variant == "deep" else "")
    assert len(page.items) == PAGE and page.next_page_token
    assert page.items[0].label == f"pool {DEEP if variant == 'deep' else 0}"
