"""SuppressionService against a real control plane and the real Redis: paging over
the account's list, lookup, manual add and remove, another account's list
invisible, bad input refused, Redis down answered UNAVAILABLE; StatsService shows
the pool's `suppressed` count."""

from __future__ import annotations

import grpc
import pytest

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from control.contract.suppression import SuppressionEntry
from control.server import ControlPlane
from tests.control_support import Client, expect_error, start_config


def _fill(redis_client, user_id: int, n: int, prefix: str = "r", compact: bool = False) -> set[str]:
    """n bounce entries in the account's list, as the data plane writes them; their addresses.
    `compact` entries are short enough for Redis to keep a small hash as one listpack, which
    HSCAN returns whole whatever its COUNT (full entries make it a hash table)."""
    addresses = {f"{prefix}{i}@example.net" for i in range(n)}
    key = rediskeys.suppression_key(user_id)
    for start in range(0, n, 500):
        batch = sorted(addresses)[start:start + 500]
        redis_client.hset(key, mapping={
            a: '{"reason":"bounce"}' if compact else SuppressionEntry(
                "bounce", 1_795_000_000_000, message_id=f"m{a}", source="delivery",
                detail="550 5.1.1 no such user").encode()
            for a in batch})
    return addresses


async def _list_all(client: Client, page_size: int, between=None) -> list[list[pb.Suppression]]:
    pages, token = [], ""
    while True:
        reply = await client.suppressions.ListSuppressions(
            pb.ListSuppressionsRequest(page_size=page_size, page_token=token))
        pages.append(list(reply.suppressions))
        token = reply.next_page_token
        if not token:
            return pages
        if between is not None:
            between(len(pages))


@pytest.mark.parametrize("entries, page_size, compact", [
    (1_500, 100, False), (40, 7, False), (40, 7, True), (5, 0, False), (0, 3, False)])
async def test_paging_returns_every_entry_exactly_once(make_account, server, redis_client, entries, page_size,
                                                       compact):
    acme, account = await make_account("acme")
    addresses = _fill(redis_client, account.user_id, entries, compact=compact)
    pages = await _list_all(acme, page_size)
    listed = [s.address for page in pages for s in page]
    assert sorted(listed) == sorted(addresses)  # each once: no gap, no duplicate
    size = page_size or 100
    *full, last = [len(page) for page in pages]
    assert set(full) <= {size} and last <= size  # pages are full but the last (which may be empty)
    if entries and not compact:
        first = pages[0][0]
        assert (first.reason, first.source, first.detail, first.create_time.seconds) == (
            pb.SUPPRESSION_BOUNCE, "delivery", "550 5.1.1 no such user", 1_795_000_000)
        assert first.message_id == f"m{first.address}"


async def test_entries_present_throughout_are_listed_while_the_list_changes(make_account, server, redis_client):
    acme, account = await make_account("acme")
    stable = _fill(redis_client, account.user_id, 800, prefix="keep")
    key = rediskeys.suppression_key(account.user_id)

    def churn(page_number: int) -> None:  # bounces arrive and entries are lifted between pages
        _fill(redis_client, account.user_id, 60 * page_number, prefix=f"new{page_number}-")
        redis_client.hdel(key, *[f"new{page_number - 1}-{i}@example.net" for i in range(60 * (page_number - 1))]
                          or ["none@example.net"])

    pages = await _list_all(acme, 50, between=churn)
    listed = {s.address for page in pages for s in page}
    assert stable <= listed
    assert all(len(page) <= 50 for page in pages)


async def test_lookup_add_and_remove(acme, server, redis_client):
    request = pb.GetSuppressionRequest(address="Bob@Example.NET")
    await expect_error(acme.suppressions.GetSuppression(request), grpc.StatusCode.NOT_FOUND,
                       "bob@example.net is not on this account's suppression list")

    added = await acme.suppressions.AddSuppression(
        pb.AddSuppressionRequest(address=" <BOB@example.net> ", note="asked us to stop by phone"))
    assert (added.address, added.reason, added.source, added.detail, added.message_id) == (
        "bob@example.net", pb.SUPPRESSION_MANUAL, "api", "asked us to stop by phone", "")
    assert added.create_time.seconds > 0
    assert await acme.suppressions.GetSuppression(request) == added
    stored = SuppressionEntry.decode(redis_client.hget(rediskeys.suppression_key(1), "bob@example.net"))
    assert (stored.reason, stored.detail) == ("manual", "asked us to stop by phone")

    await expect_error(acme.suppressions.AddSuppression(pb.AddSuppressionRequest(address="bob@example.net")),
                       grpc.StatusCode.ALREADY_EXISTS, "already suppressed (manual since", "remove it first")

    await acme.suppressions.RemoveSuppression(pb.RemoveSuppressionRequest(address="bob@EXAMPLE.net"))
    await expect_error(acme.suppressions.GetSuppression(request), grpc.StatusCode.NOT_FOUND)
    await expect_error(acme.suppressions.RemoveSuppression(pb.RemoveSuppressionRequest(address="bob@example.net")),
                       grpc.StatusCode.NOT_FOUND, "not on this account's suppression list")
    assert (await acme.suppressions.ListSuppressions(pb.ListSuppressionsRequest())).suppressions == []


async def test_another_accounts_list_is_invisible(make_account, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    await acme.suppressions.AddSuppression(pb.AddSuppressionRequest(address="bob@example.net"))
    await expect_error(globex.suppressions.GetSuppression(pb.GetSuppressionRequest(address="bob@example.net")),
                       grpc.StatusCode.NOT_FOUND)
    await expect_error(globex.suppressions.RemoveSuppression(pb.RemoveSuppressionRequest(address="bob@example.net")),
                       grpc.StatusCode.NOT_FOUND)
    assert (await globex.suppressions.ListSuppressions(pb.ListSuppressionsRequest())).suppressions == []
    # globex may list the same address for itself; acme's entry is untouched.
    await globex.suppressions.AddSuppression(pb.AddSuppressionRequest(address="bob@example.net"))
    assert (await acme.suppressions.GetSuppression(pb.GetSuppressionRequest(address="bob@example.net"))).address


@pytest.mark.parametrize("address, fragment", [
    ("", "not an email address"),
    ("bob", "not an email address"),
    ("bob smith@example.net", "cannot hold spaces"),
    ("x" * 5000 + "@example.net", "longer than 64 octets"),
])
async def test_bad_addresses_are_invalid_argument(acme, server, address, fragment):
    for call in (acme.suppressions.GetSuppression(pb.GetSuppressionRequest(address=address)),
                 acme.suppressions.AddSuppression(pb.AddSuppressionRequest(address=address)),
                 acme.suppressions.RemoveSuppression(pb.RemoveSuppressionRequest(address=address))):
        details = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, fragment)
        assert len(details) < 200  # at most a short prefix of the bad value


async def test_bad_pages_and_notes_are_invalid_argument(acme, server):
    for request, fragment in (
        (pb.ListSuppressionsRequest(page_size=-1), "page_size must be 1 to 1000"),
        (pb.ListSuppressionsRequest(page_size=1001), "page_size must be 1 to 1000"),
        (pb.ListSuppressionsRequest(page_token="not-a-token"), "page_token is not one this service gave out"),
        (pb.ListSuppressionsRequest(page_token="WyJzMSIsICItMSIsIDEwLCBudWxsLCAiIl0"), "page_token"),
    ):
        await expect_error(acme.suppressions.ListSuppressions(request), grpc.StatusCode.INVALID_ARGUMENT, fragment)
    for note in ("x" * 301, "two\nlines"):
        await expect_error(acme.suppressions.AddSuppression(pb.AddSuppressionRequest(address="a@b.example", note=note)),
                           grpc.StatusCode.INVALID_ARGUMENT, "at most 300 printable characters")


async def test_the_admin_token_is_refused(admin, server):
    await expect_error(admin.suppressions.ListSuppressions(pb.ListSuppressionsRequest()),
                       grpc.StatusCode.PERMISSION_DENIED, "needs an account token")


async def test_pool_stats_show_the_suppressed_count(acme, server, redis_client):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    redis_client.hset(rediskeys.pool_stats_key(server.server_id, pool.smtp_id),
                      mapping={"sent": 10, "delivered": 10, "suppressed": 4})
    stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
    assert (stats.sent, stats.delivered, stats.suppressed) == (10, 10, 4)


async def test_redis_down_is_unavailable(tmp_path, fresh_redis):
    plane = ControlPlane(start_config(tmp_path / "control", fresh_redis.url))
    await plane.start()
    try:
        channel = grpc.aio.insecure_channel(plane.grpc_address)
        admin = Client(channel, plane.admin_token_path.read_text().strip())
        created = await admin.accounts.CreateAccount(pb.CreateAccountRequest(name="acme", tier=pb.PRO))
        acme = Client(channel, created.token)
        fresh_redis.stop()
        for call in (acme.suppressions.ListSuppressions(pb.ListSuppressionsRequest()),
                     acme.suppressions.GetSuppression(pb.GetSuppressionRequest(address="bob@example.net")),
                     acme.suppressions.AddSuppression(pb.AddSuppressionRequest(address="bob@example.net")),
                     acme.suppressions.RemoveSuppression(pb.RemoveSuppressionRequest(address="bob@example.net"))):
            await expect_error(call, grpc.StatusCode.UNAVAILABLE, "Redis, which holds the suppression lists, "
                               "is unreachable", "retry shortly")
        await channel.close()
    finally:
        await plane.stop(0)
