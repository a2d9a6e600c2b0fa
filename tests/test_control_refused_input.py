"""Input the control plane refuses (issue 11, items 4, 7 and 8): addresses that cannot
be one host's sending address or that alias another account's, error messages that
would echo a whole input value, enum numbers the API does not define, and custom
headers that would forge a message's identity or trace fields."""

import grpc
import pytest

from control import validation
from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.errors import InvalidArgument
from tests.control_support import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# What a refusal may say about an 8 KB value: the reason and a short quoted prefix.
MESSAGE_BOUND = 400
HUGE = "x" * 8192


# -- item 4: addresses ------------------------------------------------------------------

@pytest.mark.parametrize("written, canonical", [
    ("::ffff:127.0.0.5", "127.0.0.5"),
    ("::FFFF:7f00:5", "127.0.0.5"),
    ("2001:DB8::0001", "2001:db8::1"),
    ("127.0.0.5", "127.0.0.5"),
    ("::1", "::1"),
])
def test_addresses_are_canonicalised(written, canonical):
    assert validation.check_address(written) == canonical
    assert validation.canonical_address(written) == canonical


@pytest.mark.parametrize("address, why", [
    ("fe80::1%eth0", "zone"),
    ("2001:db8::1%2", "zone"),
    ("fe80::1", "link-local"),
    ("169.254.10.1", "link-local"),
    ("::ffff:169.254.10.1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("255.255.255.255", "broadcast"),
    ("::127.0.0.5", "IPv4-compatible"),
])
def test_addresses_no_host_can_send_from_are_refused_saying_why(address, why):
    with pytest.raises(InvalidArgument, match=why):
        validation.check_address(address)


async def test_an_ipv4_mapped_address_is_the_ipv4_address_it_maps(make_account, admin, server):
    acme, _ = await make_account("acme")
    globex, _ = await make_account("globex")
    sid = server.server_id
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.5", server_id=sid))
    for mapped in ("::ffff:127.0.0.5", "::ffff:7f00:5"):
        await expect_error(globex.ips.ProvisionIp(pb.ProvisionIpRequest(address=mapped, server_id=sid)),
                           grpc.StatusCode.ALREADY_EXISTS, "127.0.0.5")
        await expect_error(admin.servers.ProvisionSharedIp(
            pb.ProvisionSharedIpRequest(server_id=sid, address=mapped)), grpc.StatusCode.ALREADY_EXISTS)
    shared = await admin.servers.ProvisionSharedIp(
        pb.ProvisionSharedIpRequest(server_id=sid, address="::ffff:127.0.0.6"))
    assert shared.address == "127.0.0.6"
    # The owner finds its IP under either spelling.
    assert (await acme.ips.GetIp(pb.GetIpRequest(address="::ffff:127.0.0.5"))).address == "127.0.0.5"


async def test_scoped_link_local_multicast_and_unspecified_addresses_are_refused(acme, admin, server):
    sid = server.server_id
    cases = {"fe80::1%eth0": "zone", "fe80::1": "link-local", "169.254.0.9": "link-local",
             "ff05::2": "multicast", "239.1.2.3": "multicast", "0.0.0.0": "unspecified", "::": "unspecified"}
    for address, why in cases.items():
        await expect_error(acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=address, server_id=sid)),
                           INVALID, why)
        await expect_error(admin.servers.ProvisionSharedIp(
            pb.ProvisionSharedIpRequest(server_id=sid, address=address)), INVALID, why)
    assert list((await acme.ips.ListIps(pb.ListIpsRequest())).ips) == []


# -- item 7: echoed values and enums ----------------------------------------------------

def test_refusals_quote_a_short_escaped_prefix_of_the_value():
    checks = [
        lambda v: validation.check_label(v + " !"),
        lambda v: validation.check_account_name(v),
        lambda v: validation.check_tag(v),
        lambda v: validation.check_header(v + ":", "x"),
        lambda v: validation.check_address(v),
        lambda v: validation.check_hostname(v),
        lambda v: validation.check_zone(v),
        lambda v: validation.check_feed_type(v + "!"),
        lambda v: validation.check_bounce_domain(v + "!"),
    ]
    for check in checks:
        with pytest.raises(InvalidArgument) as info:
            check("\x1b[31m" + HUGE)
        message = str(info.value)
        assert len(message) < MESSAGE_BOUND, message
        assert "\x1b" not in message


async def test_an_8_kb_value_is_refused_with_a_short_message(acme, admin, server):
    sid = server.server_id
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=sid))
    calls = [
        acme.pools.CreatePool(pb.CreatePoolRequest(label=HUGE, server_id=sid)),
        acme.pools.CreatePool(pb.CreatePoolRequest(label=HUGE + "!", server_id=sid)),
        acme.pools.RenamePool(pb.RenamePoolRequest(smtp_id=pool.smtp_id, label="é" * 4096)),
        acme.pools.CreatePool(pb.CreatePoolRequest(label="p2", server_id=sid, tag=HUGE)),
        acme.pools.SetPoolHeaders(pb.SetPoolHeadersRequest(
            smtp_id=pool.smtp_id, headers=[pb.Header(name=HUGE + ":", value="v")])),
        acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=HUGE, server_id=sid)),
        acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", server_id=sid, hostname=HUGE)),
        acme.bridges.CreateBridge(pb.CreateBridgeRequest(name=HUGE, smtp_id=pool.smtp_id)),
        acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="b", smtp_id=pool.smtp_id, feed_type=HUGE)),
        admin.accounts.CreateAccount(pb.CreateAccountRequest(name=HUGE, tier=pb.PRO)),
        admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname=HUGE, zone="US-1")),
        admin.servers.RegisterMtaServer(pb.RegisterMtaServerRequest(hostname="m.example", zone=HUGE)),
    ]
    for call in calls:
        details = await expect_error(call, INVALID)
        assert len(details) < MESSAGE_BOUND, details
    details = await expect_error(acme.ips.GetOperation(pb.GetOperationRequest(operation_id=HUGE)),
                                 grpc.StatusCode.NOT_FOUND)
    assert len(details) < MESSAGE_BOUND, details


def test_stats_windows_are_the_defined_ones():
    from control import convert, stats_reader

    assert convert.window_name(pb.STATS_WINDOW_UNSPECIFIED) == stats_reader.LIFETIME
    assert convert.window_name(pb.LIFETIME) == stats_reader.LIFETIME
    assert convert.window_name(pb.LAST_30_DAYS) == stats_reader.LAST_30_DAYS
    for number in (3, 99, -1):
        with pytest.raises(InvalidArgument, match="LIFETIME.*LAST_30_DAYS"):
            convert.window_name(number)


async def test_undefined_enum_numbers_are_refused_naming_the_allowed_values(acme, admin, server):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address="127.0.0.2", smtp_id=pool.smtp_id))
    for window in (3, 99):
        await expect_error(acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id, window=window)),
                           INVALID, "LIFETIME", "LAST_30_DAYS", str(window))
        await expect_error(acme.stats.GetIpStats(pb.GetIpStatsRequest(address="127.0.0.2", window=window)),
                           INVALID, "LAST_30_DAYS")
        stream = acme.stats.WatchPoolStats(pb.WatchPoolStatsRequest(smtp_id=pool.smtp_id, window=window))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
        assert info.value.code() == INVALID and "LAST_30_DAYS" in info.value.details()
    await expect_error(acme.stats.GetPoolTrend(pb.GetPoolTrendRequest(smtp_id=pool.smtp_id, resolution=99)),
                       INVALID, "MINUTE", "HOUR")
    await expect_error(admin.accounts.CreateAccount(pb.CreateAccountRequest(name="x", tier=99)),
                       INVALID, "ESSENTIAL", "PRO", "BUSINESS")
    # Unset still means LIFETIME.
    stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
    assert stats.window == pb.LIFETIME


# -- item 8: pool custom headers --------------------------------------------------------

REFUSED_HEADERS = ["From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID",
                   "Received", "Return-Path", "DKIM-Signature", "ARC-Seal", "ARC-Message-Signature",
                   "ARC-Authentication-Results", "Authentication-Results", "MIME-Version",
                   "Content-Type", "Content-Transfer-Encoding", "Resent-From", "In-Reply-To",
                   "References", "Received-SPF", "Delivered-To"]


@pytest.mark.parametrize("name", REFUSED_HEADERS)
def test_identity_and_trace_fields_are_refused_in_any_case(name):
    for spelling in (name, name.lower(), name.upper()):
        assert validation.is_identity_or_trace_header(spelling)
        with pytest.raises(InvalidArgument, match="identity or trace field"):
            validation.check_header(spelling, "v")


@pytest.mark.parametrize("name", ["X-Campaign", "List-Unsubscribe", "X-From", "Contents", "Archive", "Tox"])
def test_other_fields_stay_allowed(name):
    assert validation.check_header(name, "v") == (name, "v")


async def test_a_pool_cannot_set_identity_or_trace_headers(acme, server):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    for name in ("From", "bcc", "RECEIVED", "Return-Path", "message-id", "DKIM-Signature", "ARC-Seal",
                 "Content-Type"):
        request = pb.SetPoolHeadersRequest(smtp_id=pool.smtp_id, headers=[
            pb.Header(name="X-Campaign", value="q4"), pb.Header(name=name, value="v")])
        await expect_error(acme.pools.SetPoolHeaders(request), INVALID, repr(name), "identity or trace field")
        await expect_error(acme.pools.CreatePool(pb.CreatePoolRequest(
            label="other", server_id=server.server_id, headers=[pb.Header(name=name, value="v")])),
            INVALID, "identity or trace field")
    assert list((await acme.pools.GetPool(pb.GetPoolRequest(smtp_id=pool.smtp_id))).headers) == []
