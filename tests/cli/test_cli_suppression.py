"""`poolmta suppression list | show | add | remove` end to end: the real CLI (in
process, as in test_cli.py) against a real control plane on the real Redis, and the
`suppressed` figure in the pool panel."""

from __future__ import annotations

import re

import redis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.cli.suppression_commands import reason
from control.contract import rediskeys
from control.contract.suppression import SuppressionEntry
from tests.cli.cli_support import field, table_rows


def _bounced(redis_url: str, user_id: int, *addresses: str) -> None:
    """Entries as the data plane writes them for bounced recipients."""
    client = redis.Redis.from_url(redis_url)
    try:
        for n, address in enumerate(addresses):
            client.hset(rediskeys.suppression_key(user_id), address, SuppressionEntry(
                "bounce", 1_795_000_000_000, message_id=f"01ab{n}", source="delivery",
                detail="550 5.1.1 no such user").encode())
    finally:
        client.close()


def test_reasons_read_as_people_say_them():
    assert [reason(r) for r in (pb.SUPPRESSION_BOUNCE, pb.SUPPRESSION_COMPLAINT, pb.SUPPRESSION_MANUAL)] == [
        "bounce", "complaint", "manual"]
    assert reason(pb.SUPPRESSION_REASON_UNSPECIFIED) == reason(99) == "-"


def test_add_show_list_and_remove(cli, acme, redis_url):
    added = cli.ok("--token", acme, "suppression", "add", "Ann@Example.NET", "--reason", "asked by phone")
    assert field(added.out, "Address") == "ann@example.net" and field(added.out, "Reason") == "manual"
    assert field(added.out, "Detail") == "asked by phone" and field(added.out, "Source") == "api"
    assert field(added.out, "Since").endswith("Z")
    _bounced(redis_url, 1, "bob@example.net")

    shown = cli.ok("--token", acme, "suppression", "show", "BOB@example.net").out
    assert (field(shown, "Reason"), field(shown, "Message"), field(shown, "Since")) == (
        "bounce", "01ab0", "2026-11-18T11:06:40Z")
    assert field(shown, "Detail") == "550 5.1.1 no such user"

    rows = table_rows(cli.ok("--token", acme, "suppression", "list").out)
    assert [row[:3] for row in rows] == [["ann@example.net", "manual", field(added.out, "Since")],
                                         ["bob@example.net", "bounce", "2026-11-18T11:06:40Z"]]
    data = cli.ok("--token", acme, "--json", "suppression", "list").json()
    assert sorted(s["address"] for s in data["suppressions"]) == ["ann@example.net", "bob@example.net"]
    assert "next_page_token" not in data  # the end of the list

    again = cli.fails(1, "--token", acme, "suppression", "add", "ann@example.net")
    assert "ALREADY_EXISTS" in again.err and "already suppressed (manual since" in again.err

    removed = cli.ok("--token", acme, "suppression", "remove", "ann@example.net")
    assert "Removed ann@example.net from the suppression list" in removed.out
    gone = cli.fails(1, "--token", acme, "suppression", "show", "ann@example.net")
    assert "NOT_FOUND" in gone.err and "ann@example.net is not on this account's suppression list" in gone.err
    assert "NOT_FOUND" in cli.fails(1, "--token", acme, "suppression", "remove", "ann@example.net").err


def test_pages_one_at_a_time_or_all(cli, acme, redis_url):
    addresses = [f"r{n:02d}@example.net" for n in range(25)]
    _bounced(redis_url, 1, *addresses)

    first = cli.ok("--token", acme, "suppression", "list", "--page-size", "10")
    assert len(table_rows(first.out)) == 10
    token = re.search(r"--page-token (\S+)", first.err).group(1)
    second = cli.ok("--token", acme, "--json", "suppression", "list", "--page-size", "10", "--page-token", token)
    page = second.json()
    assert len(page["suppressions"]) == 10 and page["next_page_token"]
    assert second.err == ""  # JSON: the token is in the output, not a note

    everything = cli.ok("--token", acme, "--json", "suppression", "list", "--page-size", "10", "--all").json()
    assert sorted(s["address"] for s in everything["suppressions"]) == addresses
    assert len(table_rows(cli.ok("--token", acme, "suppression", "list", "--all", "--page-size", "7").out)) == 25


def test_bad_input_is_refused_with_a_reason(cli, acme):
    bad = cli.fails(1, "--token", acme, "suppression", "add", "not-an-address")
    assert "INVALID_ARGUMENT" in bad.err and "expected local-part@domain" in bad.err
    assert "page_size must be 1 to 1000" in cli.fails(1, "--token", acme, "suppression", "list",
                                                      "--page-size", "5000").err
    assert "page_token is not one" in cli.fails(1, "--token", acme, "suppression", "list",
                                                "--page-token", "garbage").err
    # The admin token is not an account's: the hint says which token to use.
    refused = cli.fails(1, "suppression", "list")
    assert "PERMISSION_DENIED" in refused.err and "suppression commands take an account token" in refused.err


def test_the_pool_panel_shows_what_was_suppressed(cli, acme, redis_url):
    cli.ok("--token", acme, "pool", "create", "promo", "--server", "1")
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(rediskeys.pool_stats_key(1, 2),
                    mapping={"sent": 100, "delivered": 97, "bounced": 3, "suppressed": 12})
    finally:
        client.close()
    panel = cli.ok("--token", acme, "stats", "pool", "promo").out
    assert re.search(r"Total Sent\s+100", panel) and re.search(r"Suppressed at RCPT\s+12", panel)
    assert cli.ok("--token", acme, "--json", "stats", "pool", "promo").json()["suppressed"] == "12"
