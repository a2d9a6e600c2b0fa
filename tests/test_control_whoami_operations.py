"""WhoAmI (either token says who it speaks for) and ListOperations (an account's
reassignments, newest first, paged with opaque tokens bound to their listing)."""

from __future__ import annotations

import base64
import json

import grpc

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from tests.control_support import Client, expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_whoami_takes_either_token_and_says_who(admin, make_account, channel):
    assert await admin.accounts.WhoAmI(pb.WhoAmIRequest()) == pb.WhoAmIResponse(admin=True)
    acme, account = await make_account("acme", pb.BUSINESS)
    mine = await acme.accounts.WhoAmI(pb.WhoAmIRequest())
    assert not mine.admin and mine.account == account
    await expect_error(Client(channel, "not-a-token").accounts.WhoAmI(pb.WhoAmIRequest()),
                       grpc.StatusCode.UNAUTHENTICATED)
    # The rest of AccountService stays the admin's.
    await expect_error(acme.accounts.ListAccounts(pb.ListAccountsRequest()), grpc.StatusCode.PERMISSION_DENIED)


async def _five_operations(acme, server) -> list[pb.Operation]:
    home = await acme.pools.CreatePool(pb.CreatePoolRequest(label="home", server_id=server.server_id))
    away = await acme.pools.CreatePool(pb.CreatePoolRequest(label="away", server_id=server.server_id))
    ops = []
    for n in range(2, 7):
        address = f"127.0.0.{n}"
        await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=address, smtp_id=home.smtp_id))
        ops.append(await acme.ips.AssignPool(pb.AssignPoolRequest(address=address, smtp_id=away.smtp_id)))
    return ops


async def test_operations_are_listed_newest_first_a_page_at_a_time(acme, server, make_account):
    ops = await _five_operations(acme, server)
    newest_first = [op.operation_id for op in reversed(ops)]

    seen, token, pages = [], "", 0
    while True:
        page = await acme.ips.ListOperations(pb.ListOperationsRequest(page_size=2, page_token=token))
        assert len(page.operations) <= 2
        seen += [op.operation_id for op in page.operations]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == newest_first and pages == 3

    whole = await acme.ips.ListOperations(pb.ListOperationsRequest())
    assert [op.operation_id for op in whole.operations] == newest_first and not whole.next_page_token
    one = await acme.ips.ListOperations(pb.ListOperationsRequest(address="127.0.0.4"))
    assert [op.operation_id for op in one.operations] == [ops[2].operation_id]

    globex, _ = await make_account("globex")
    assert not (await globex.ips.ListOperations(pb.ListOperationsRequest())).operations


async def test_page_sizes_and_tokens_are_checked(acme, server):
    await _five_operations(acme, server)
    for size in (-1, 1001):
        await expect_error(acme.ips.ListOperations(pb.ListOperationsRequest(page_size=size)), INVALID, "page_size")
    first = await acme.ips.ListOperations(pb.ListOperationsRequest(page_size=1))
    # A token is bound to its listing: another filter's, a made-up one, or a forged key are refused.
    filtered = pb.ListOperationsRequest(address="127.0.0.2", page_token=first.next_page_token)
    await expect_error(acme.ips.ListOperations(filtered), INVALID, "page_token")
    forged = base64.urlsafe_b64encode(json.dumps([1, "operations:", [True]]).encode()).decode()
    for token in ("garbage", forged, "%%%"):
        await expect_error(acme.ips.ListOperations(pb.ListOperationsRequest(page_token=token)), INVALID,
                           "page_token")
