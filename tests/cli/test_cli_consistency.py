"""One consistent command line (issue 10): names wherever ids are, one spelling per
option, `none` clears a Bridge's trusted networks, and `--server` optional when the
platform has one MTA server."""

from __future__ import annotations

from control.cli.main import build_parser
from tests.cli.cli_support import Cli, table_rows, token_after


def test_accounts_and_servers_are_named_by_name_or_id(cli: Cli):
    cli.ok("server", "register", "--hostname", "mta1.example.net", "--zone", "US-1")
    cli.ok("account", "create", "globex", "--tier", "PRO")
    assert cli.ok("--json", "account", "tier", "globex", "ESSENTIAL").json()["tier"] == "ESSENTIAL"
    assert cli.ok("--json", "account", "show", "globex").json()["user_id"] == "1"
    assert "New API token for account globex" in cli.ok("account", "token", "globex").out
    assert cli.ok("--json", "server", "show", "mta1.example.net").json()["zone"] == "US-1"
    cli.ok("server", "shared-ip", "add", "mta1.example.net", "198.51.100.9")
    assert cli.ok("--json", "server", "shared-ip", "list", "mta1.example.net").json()["ips"][0]["address"] == \
        "198.51.100.9"

    unknown = cli.fails(1, "account", "tier", "initech", "PRO")
    assert "no account with the name or id 'initech'" in unknown.err and "poolmta account list" in unknown.err
    unknown = cli.fails(1, "server", "status", "mta9.example.net")
    assert "no MTA server with the name or id 'mta9.example.net'" in unknown.err
    assert "NOT_FOUND" in cli.fails(1, "account", "show", "42").err


def test_bridges_are_named_by_name(cli: Cli, acme: str):
    cli.ok("--token", acme, "pool", "create", "news", "--feed-type", "newsletter")  # the only server
    cli.ok("--token", acme, "bridge", "create", "promo-app", "--pool", "news")
    shown = cli.ok("--json", "--token", acme, "bridge", "show", "promo-app").json()
    assert shown["name"] == "promo-app" and shown["bridge_id"] == "1"

    unknown = cli.fails(1, "--token", acme, "bridge", "revoke", "nope")
    assert "no bridge with the name or id 'nope'" in unknown.err


def test_bridge_trust_none_clears(cli: Cli, acme: str):
    cli.ok("--token", acme, "pool", "create", "news")
    cli.ok("--token", acme, "bridge", "create", "app", "--pool", "news", "--trust", "10.1.2.0/24")
    assert cli.ok("--json", "--token", acme, "bridge", "show", "app").json()["trusted_networks"] == ["10.1.2.0/24"]
    cleared = cli.ok("--json", "--token", acme, "bridge", "trust", "app", "none").json()
    assert cleared.get("trusted_networks", []) == []


def test_pool_create_needs_server_only_when_there_are_several(cli: Cli, acme: str):
    pool = cli.ok("--json", "--token", acme, "pool", "create", "news").json()
    assert pool["server_id"] == "1"
    cli.ok("--token", acme, "ip", "provision", "127.0.0.2")  # first IP: the only server too
    cli.ok("server", "register", "--hostname", "mta2.example.net", "--zone", "EU-1")
    refused = cli.fails(1, "--token", acme, "pool", "create", "drip")
    assert "INVALID_ARGUMENT" in refused.err and "2 MTA servers (1, 2)" in refused.err
    assert cli.ok("--json", "--token", acme, "pool", "create", "drip", "--server", "2").json()["server_id"] == "2"


def test_pool_headers_take_header_like_pool_create_and_set_stays_hidden(cli: Cli, acme: str):
    cli.ok("--token", acme, "pool", "create", "news", "--header", "X-Brand=acme")
    pool = cli.ok("--json", "--token", acme, "pool", "headers", "news", "--header", "X-List=weekly").json()
    assert pool["headers"] == [{"name": "X-List", "value": "weekly"}]
    pool = cli.ok("--json", "--token", acme, "pool", "headers", "news", "--set", "X-Old=1").json()
    assert pool["headers"] == [{"name": "X-Old", "value": "1"}]
    refused = cli.fails(2, "--token", acme, "pool", "headers", "news", "--header", "a=b", "--clear")
    assert "give either --header or --clear" in refused.err


def test_the_hidden_alias_is_not_in_the_help():
    parser = build_parser()
    pool = parser._subparsers._group_actions[0].choices["pool"]
    text = pool._subparsers._group_actions[0].choices["headers"].format_help()
    assert "--header NAME=VALUE" in text and "--set" not in text


def test_an_account_token_never_needs_a_server_name_lookup(cli: Cli):
    cli.ok("server", "register", "--hostname", "mta1.example.net", "--zone", "US-1")
    token = token_after(cli.ok("account", "create", "acme", "--tier", "PRO").out, "API token")
    cli.ok("--token", token, "pool", "create", "news", "--server", "1")


def test_whoami_says_who_each_token_speaks_for(cli: Cli, acme: str):
    assert "The platform admin" in cli.ok("whoami").out
    assert "Account acme (user 1, PRO)." in cli.ok("--token", acme, "whoami").out
    assert cli.ok("--json", "--token", acme, "whoami").json()["account"]["name"] == "acme"


def test_op_list_follows_every_page(cli: Cli, acme: str):
    cli.ok("--token", acme, "pool", "create", "home")
    cli.ok("--token", acme, "pool", "create", "away")
    for n in (2, 3, 4):
        cli.ok("--token", acme, "ip", "provision", f"127.0.0.{n}", "--pool", "home")
        cli.ok("--token", acme, "ip", "assign", f"127.0.0.{n}", "away")
    listed = cli.ok("--json", "--token", acme, "op", "list", "--all", "--page-size", "1").json()
    assert [op["address"] for op in listed["operations"]] == ["127.0.0.4", "127.0.0.3", "127.0.0.2"]
    rows = table_rows(cli.ok("--token", acme, "op", "list", "--ip", "127.0.0.3").out)
    assert len(rows) == 1 and rows[0][2] == "127.0.0.3"


def test_list_commands_follow_every_page(cli: Cli, acme: str):
    for n in range(3):
        cli.ok("--token", acme, "pool", "create", f"p{n}")
        cli.ok("--token", acme, "bridge", "create", f"b{n}", "--pool", f"p{n}")
        cli.ok("--token", acme, "ip", "provision", f"127.0.0.{n + 2}", "--pool", f"p{n}")
    for group, field in (("pool", "pools"), ("bridge", "bridges"), ("ip", "ips")):
        listed = cli.ok("--json", "--token", acme, group, "list", "--all", "--page-size", "1").json()[field]
        assert len(listed) == 3, (group, listed)
    assert len(cli.ok("--json", "account", "list", "--page-size", "1").json()["accounts"]) == 1
