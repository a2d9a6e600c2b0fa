"""Every `list` command pages (issue 14): one page by default with a hint line when
more follow, `--limit N` for the first N over as many pages as needed, `--all` for
every page, `--page-token` to go on; `--server` (id or hostname, with an account
token too) and `--state` filter where the RPC has them; names are resolved by one
Get call each, never by listing."""

from __future__ import annotations

from control.cli import commands
from control.cli.client import ControlClient
from tests.cli.cli_support import Cli, table_rows


def _pools(cli: Cli, acme: str, *args: str) -> list[str]:
    return [p["label"] for p in cli.ok("--json", "--token", acme, "pool", "list", *args).json()["pools"]]


def test_list_shows_one_page_then_goes_on_with_its_token(cli: Cli, acme: str, monkeypatch):
    monkeypatch.setattr(commands, "DEFAULT_LIST_PAGE", 3)
    for n in range(7):
        cli.ok("--token", acme, "pool", "create", f"p{n}")
    first = cli.ok("--token", acme, "pool", "list")
    assert [row[1] for row in table_rows(first.out)] == ["p0", "p1", "p2"]
    hint = first.err.strip().splitlines()[-1]
    assert hint.startswith("more: --all or --page-token ")
    token = hint.rsplit(" ", 1)[1]
    page = cli.ok("--json", "--token", acme, "pool", "list", "--page-token", token).json()
    assert [p["label"] for p in page["pools"]] == ["p3", "p4", "p5"] and page["next_page_token"]
    last = cli.ok("--json", "--token", acme, "pool", "list", "--page-token", page["next_page_token"]).json()
    assert [p["label"] for p in last["pools"]] == ["p6"] and "next_page_token" not in last
    assert "more:" not in cli.ok("--token", acme, "pool", "list", "--all").err

    assert _pools(cli, acme, "--limit", "5", "--page-size", "2") == [f"p{n}" for n in range(5)]
    limited = cli.ok("--json", "--token", acme, "pool", "list", "--limit", "5").json()
    assert _pools(cli, acme, "--page-token", limited["next_page_token"], "--all") == ["p5", "p6"]
    assert _pools(cli, acme, "--all", "--page-size", "2") == [f"p{n}" for n in range(7)]
    assert "either --limit N or --all" in cli.fails(2, "--token", acme, "pool", "list", "--all", "--limit", "2").err


def test_filters_by_server_name_and_state_with_an_account_token(cli: Cli, acme: str):
    cli.ok("server", "register", "--hostname", "mta2.example.net", "--zone", "EU-1")
    cli.ok("--token", acme, "pool", "create", "here", "--server", "mta1.example.net")
    cli.ok("--token", acme, "pool", "create", "there", "--server", "mta2.example.net")
    cli.ok("--token", acme, "ip", "provision", "127.0.0.2", "--pool", "there")
    cli.ok("--token", acme, "ip", "provision", "127.0.0.3", "--pool", "there")
    cli.ok("--token", acme, "ip", "pause", "127.0.0.3")
    cli.ok("--token", acme, "bridge", "create", "app", "--pool", "here")
    cli.ok("--token", acme, "bridge", "revoke", "app")

    assert _pools(cli, acme, "--server", "mta2.example.net") == ["there"]
    assert _pools(cli, acme, "--state", "empty") == ["here"]
    assert _pools(cli, acme, "--state", "active", "--server", "mta1.example.net") == []
    ips = cli.ok("--json", "--token", acme, "ip", "list", "--state", "paused").json()["ips"]
    assert [i["address"] for i in ips] == ["127.0.0.3"]
    bridges = cli.ok("--json", "--token", acme, "bridge", "list", "--state", "revoked").json()["bridges"]
    assert [b["name"] for b in bridges] == ["app"]
    assert cli.ok("--json", "--token", acme, "bridge", "list", "--state", "active").json()["bridges"] == []
    accounts = cli.ok("--json", "account", "list", "--server", "mta2.example.net", "--tier", "pro").json()
    assert [a["name"] for a in accounts["accounts"]] == ["acme"]

    unknown = cli.fails(1, "--token", acme, "pool", "list", "--server", "mta9.example.net")
    assert "no MTA server with the name or id 'mta9.example.net'" in unknown.err


def test_a_name_costs_one_call_whatever_the_number_of_objects(cli: Cli, acme: str, monkeypatch):
    for n in range(5):
        cli.ok("--token", acme, "pool", "create", f"p{n}")
    calls: list[str] = []
    call = ControlClient.call

    def counted(self, service, method, request):
        calls.append(method)
        return call(self, service, method, request)

    monkeypatch.setattr(ControlClient, "call", counted)
    cli.ok("--token", acme, "pool", "show", "p3")
    assert calls == ["GetPool", "GetPool"]  # the label, then the pool shown
    calls.clear()
    cli.ok("--token", acme, "pool", "create", "p9", "--server", "mta1.example.net")
    assert calls == ["GetMtaServer", "CreatePool"]
