"""Every List RPC pages (issue 10): page_size (0 = 100, at most 1000), an opaque
page_token bound to its listing and filter, next_page_token empty on the last page;
following the tokens gives every object exactly once, in the list's order."""

from __future__ import annotations

import grpc
import pytest

from control import paging
from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.errors import InvalidArgument
from tests.control_support import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _copy(request, **changes):
    copy = type(request)()
    copy.CopyFrom(request)
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy


async def _walk(method, request, field: str, size: int) -> tuple[list, int]:
    """Every item, following tokens with `size` per page; and the number of pages."""
    items, pages = [], 0
    request.page_size = size
    while True:
        page = await method(request)
        assert len(getattr(page, field)) <= size
        items += getattr(page, field)
        pages += 1
        if not page.next_page_token:
            return items, pages
        request.page_token = page.next_page_token


async def test_every_list_of_the_registry_pages(admin, make_account, server):
    acme, _ = await make_account("acme")
    for n in range(4):
        await make_account(f"tenant{n}")
    await admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="mta2.example.net", zone="EU-1"))
    for n in range(3):
        await admin.servers.ProvisionSharedIp(pb.ProvisionSharedIpRequest(server_id=server.server_id,
                                                                          address=f"198.51.100.{n + 1}"))
    pools = [await acme.pools.CreatePool(pb.CreatePoolRequest(label=f"p{n}", server_id=server.server_id))
             for n in range(5)]
    for n in range(5):
        await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=f"127.0.0.{n + 2}", smtp_id=pools[n % 2].smtp_id))
        await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name=f"b{n}", smtp_id=pools[0].smtp_id))
    for domain in ("a.example", "b.example", "c.example"):
        await acme.dkim.GenerateDkimKey(pb.GenerateDkimKeyRequest(domain=domain, selector="s1"))

    cases = [
        (admin.accounts.ListAccounts, pb.ListAccountsRequest(), "accounts", lambda a: a.user_id, 5),
        (admin.servers.ListMtaServers, pb.ListMtaServersRequest(), "servers", lambda s: s.server_id, 2),
        (admin.servers.ListSharedIps, pb.ListSharedIpsRequest(server_id=server.server_id), "ips",
         lambda i: i.address, 3),
        (acme.pools.ListPools, pb.ListPoolsRequest(), "pools", lambda p: p.smtp_id, 5),
        (acme.ips.ListIps, pb.ListIpsRequest(), "ips", lambda i: i.address, 5),
        (acme.ips.ListIps, pb.ListIpsRequest(smtp_id=pools[0].smtp_id), "ips", lambda i: i.address, 3),
        (acme.bridges.ListBridges, pb.ListBridgesRequest(), "bridges", lambda b: b.bridge_id, 5),
        (acme.dkim.ListDkimKeys, pb.ListDkimKeysRequest(), "keys", lambda k: k.key_id, 3),
    ]
    for method, request, field, key, total in cases:
        whole = await method(_copy(request))
        everything = [key(x) for x in getattr(whole, field)]
        assert len(everything) == total and not whole.next_page_token
        for size in (1, 2):
            walked, pages = await _walk(method, _copy(request), field, size)
            assert [key(x) for x in walked] == everything, (field, size)
            assert pages == -(-total // size), (field, size)
        await expect_error(method(_copy(request, page_size=1001)), INVALID, "page_size")
        await expect_error(method(_copy(request, page_token="made-up")), INVALID, "page_token")


async def test_a_token_belongs_to_its_listing_and_filter(acme, server):
    pools = [await acme.pools.CreatePool(pb.CreatePoolRequest(label=f"p{n}", server_id=server.server_id))
             for n in range(3)]
    first = await acme.pools.ListPools(pb.ListPoolsRequest(page_size=1))
    await expect_error(acme.bridges.ListBridges(pb.ListBridgesRequest(page_token=first.next_page_token)),
                       INVALID, "page_token")
    for n in range(2):
        await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=f"127.0.0.{n + 2}", smtp_id=pools[0].smtp_id))
    ips = await acme.ips.ListIps(pb.ListIpsRequest(page_size=1))
    await expect_error(acme.ips.ListIps(pb.ListIpsRequest(smtp_id=pools[0].smtp_id, page_token=ips.next_page_token)),
                       INVALID, "page_token")


@pytest.mark.parametrize("size", [-1, 1001])
def test_page_size_bounds(size):
    with pytest.raises(InvalidArgument, match="page_size must be 1 to 1000"):
        paging.request("x", size, "")
