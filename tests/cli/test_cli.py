"""The `poolmta` command line against a real control plane on a real Redis.

Client commands run in-process through `control.cli.main.main(argv)` (fast; output
captured with capsys) against a ControlPlane served from a background thread's
event loop, so the CLI's blocking gRPC calls never stall it. Exit codes,
tracebacks, signals and `poolmta up` run as real subprocesses.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.cli import render, stats_render, trends
from control.cli.main import _split_passthrough, main
from control.contract import rediskeys
from tests.cli.cli_support import (
    Cli,
    exit_of_up,
    field,
    run_poolmta,
    start_up,
    stop_process,
    subprocess_env,
    table_rows,
    token_after,
)
from tests.support import free_port, process_gone, wait_until


def test_enum_names_lose_their_prefixes_for_people():
    assert render.ip_state(pb.IP_ACTIVE) == "active"
    assert render.ip_state(pb.IP_PAUSED) == "paused"
    assert render.tier(pb.ESSENTIAL) == "ESSENTIAL"
    assert render.pool_status(pb.EMPTY) == "empty"
    assert render.op_state(pb.APPLYING) == "applying"
    assert render.window(pb.LAST_30_DAYS) == "30d"
    assert render.tier(pb.TIER_UNSPECIFIED) == render.ip_state(pb.IP_STATE_UNSPECIFIED) == "-"


def test_timestamps_are_iso_8601_utc():
    account = pb.Account(user_id=1)
    assert render.when(account, "create_time") == "-"
    account.create_time.FromSeconds(1_800_000_000)
    account.create_time.nanos = 999_000_000
    assert render.when(account, "create_time") == "2027-01-15T08:00:00Z"


def test_delivery_rate_is_a_percentage_once_anything_is_final():
    assert render.rate(0.97, 970, 30) == "97.0%"
    assert render.rate(0.0, 0, 0) == "-"
    assert render.rate(0.0, 0, 5) == "0.0%"


def test_pool_stats_panel_reads_like_the_product():
    stats = pb.PoolStats(
        smtp_id=3, label="acme-promotional", internal_name="promo-7-1-pool-3", window=pb.LAST_30_DAYS,
        sent=5_346_920, delivered=5_187_761, bounced=159_159, delivery_rate=5_187_761 / 5_346_920,
        ips=[pb.IpStats(address=f"192.0.2.{n}") for n in (1, 2, 3)],
    )
    printer = render.Printer(json_mode=False, out=_Buffer())
    printer.show(stats_render.pool_stats(stats))
    out = printer.out.getvalue()
    assert "Sending stats of acme-promotional pool" in out
    assert re.search(r"Total Sent\s+5,346,920", out)
    assert re.search(r"Total Delivered\s+5,187,761", out)
    assert re.search(r"Total Bounced\s+159,159", out)
    assert "Delivery rate 97.0% · across 3 IPs in this Pool" in out
    assert "30d" in out


class _Buffer:
    def __init__(self):
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def getvalue(self) -> str:
        return "".join(self.parts)


def test_json_keeps_proto_field_names_and_default_values():
    data = render.to_dict(pb.Pool(smtp_id=4, label="x", is_default=False))
    assert data["smtp_id"] == "4" and data["is_default"] is False and data["ip_count"] == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dataplane", "--server-id", "2"], ([], ["--server-id", "2"])),
        (["--data-dir", "/d", "--json", "dataplane", "--data-dir", "/x"],
         (["--data-dir", "/d", "--json"], ["--data-dir", "/x"])),
        (["--redis-url=redis://h/0", "-v", "dataplane"], (["--redis-url=redis://h/0", "-v"], [])),
        (["pool", "dataplane"], None),
        (["--token", "dataplane", "pool", "list"], None),
        ([], None),
    ],
)
def test_dataplane_arguments_pass_through_untouched(argv, expected):
    assert _split_passthrough(argv) == expected


def test_usage_errors_exit_2(capsys):
    assert main(["pool"]) == 2
    assert main(["pool", "create", "x", "--server", "1", "--header", "no-equals-sign"]) == 2
    assert main(["account", "create", "x", "--tier", "GOLD"]) == 2
    assert main(["up", "--grpc-listen", "nohostport"]) == 2
    err = capsys.readouterr().err
    assert "expected NAME=VALUE" in err and "tier must be one of" in err and "expected HOST:PORT" in err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert main(["stats", "pool", "--help"]) == 0
    out = capsys.readouterr().out
    assert "account" in out and "--window" in out


def test_a_token_that_begins_with_a_dash_is_still_a_value(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    done = run_poolmta("--grpc", address, "pool", "list", "--token", "-abc")
    assert done.returncode == 1 and "cannot reach" in done.stderr  # parsed, then tried to connect


def test_no_token_anywhere_is_a_clear_error(capsys, tmp_path):
    assert main(["--data-dir", str(tmp_path), "--grpc", f"127.0.0.1:{free_port()}", "account", "list"]) == 1
    err = capsys.readouterr().err
    assert "no token" in err and str(tmp_path / "admin.token") in err


# -- accounts ------------------------------------------------------------------------


def test_account_create_prints_a_token_once_that_then_works(cli):
    created = cli.ok("account", "create", "acme", "--tier", "pro")
    token = token_after(created.out, "API token")
    assert "shown once" in created.out and len(token) >= 20
    assert field(created.out, "Tier") == "PRO"

    pools = cli.ok("--token", token, "--json", "pool", "list")
    assert pools.json() == {"pools": []}

    listed = cli.ok("account", "list")
    assert [row[:3] for row in table_rows(listed.out)] == [["1", "acme", "PRO"]]
    assert token not in listed.out
    shown = cli.ok("--json", "account", "show", "1").json()
    assert shown["name"] == "acme" and shown["tier"] == "PRO" and shown["create_time"].endswith("Z")


def test_account_tier_and_token_rotation(cli):
    first = token_after(cli.ok("account", "create", "acme", "--tier", "BUSINESS").out, "API token")
    assert cli.ok("--json", "account", "tier", "1", "essential").json()["tier"] == "ESSENTIAL"

    reissued = cli.ok("account", "token", "1", "--revoke-existing")
    second = token_after(reissued.out, "shown once")
    assert second != first and "revoked" in reissued.out
    cli.ok("--token", second, "pool", "list")
    refused = cli.fails(1, "--token", first, "pool", "list")
    assert "UNAUTHENTICATED" in refused.err


def test_wrong_kind_of_token_gets_a_hint(cli, acme):
    refused = cli.fails(1, "pool", "list")  # the admin token from <data-dir>/admin.token
    assert "PERMISSION_DENIED" in refused.err and "account token" in refused.err
    refused = cli.fails(1, "--token", acme, "account", "list")
    assert "PERMISSION_DENIED" in refused.err and "admin token" in refused.err


# -- servers -------------------------------------------------------------------------


def test_server_commands(cli, redis_url):
    registered = cli.ok("--json", "server", "register", "--hostname", "mta1.example.net", "--zone", "EU-1").json()
    assert registered["server_id"] == "1" and registered["zone"] == "EU-1"
    assert table_rows(cli.ok("server", "list").out)[0][:3] == ["1", "mta1.example.net", "EU-1"]
    assert field(cli.ok("server", "show", "1").out, "Hostname") == "mta1.example.net"

    ip = cli.ok("--json", "server", "shared-ip", "add", "1", "198.51.100.7", "--weight", "2").json()
    assert ip["address"] == "198.51.100.7" and ip["weight"] == 2 and ip["state"] == "IP_ACTIVE"
    assert table_rows(cli.ok("server", "shared-ip", "list", "1").out)[0][0] == "198.51.100.7"
    assert "Released shared IP 198.51.100.7" in cli.ok("server", "shared-ip", "release", "198.51.100.7").out
    assert cli.ok("--json", "server", "shared-ip", "list", "1").json() == {"ips": []}

    republished = cli.ok("--json", "server", "republish").json()
    version = int(republished["snapshots"][0]["version"])
    assert republished["snapshots"][0]["server_id"] == "1" and version >= 1

    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(rediskeys.worker_acks_key(1), "worker-a", f"{version}:{int(time.time() * 1000)}")
    finally:
        client.close()
    status = cli.ok("server", "status", "1")
    assert field(status.out, "Live workers") == "1"
    assert ["worker-a", str(version), "yes"] in table_rows(status.out)
    assert cli.ok("--json", "server", "status", "1").json()["workers"] == [
        {"worker_id": "worker-a", "version": str(version)}
    ]


# -- pools ---------------------------------------------------------------------------


def test_pool_lifecycle_in_tables_and_json(cli, acme):
    created = cli.ok("--token", acme, "pool", "create", "Acme Promo", "--server", "1",
                     "--header", "X-Campaign=spring", "--feed-type", "promo")
    promo = field(created.out, "ID (smtp_id)")
    assert field(created.out, "Default") == "yes" and field(created.out, "Status") == "empty"
    assert field(created.out, "Headers") == "X-Campaign: spring"
    internal = field(created.out, "Internal name")
    assert internal.endswith(f"-pool-{promo}")

    other = cli.ok("--token", acme, "--json", "pool", "create", "transactional", "--server", "1").json()
    assert other["is_default"] is False and other["label"] == "transactional"

    rows = table_rows(cli.ok("--token", acme, "pool", "list").out)
    assert [(r[0], r[1]) for r in rows] == [(promo, "Acme Promo"), (other["smtp_id"], "transactional")]
    listed = cli.ok("--token", acme, "--json", "pool", "list").json()["pools"]
    assert [p["label"] for p in listed] == ["Acme Promo", "transactional"]

    # a POOL argument is an smtp_id or an exact label, and global options may follow the command
    by_label = cli.ok("pool", "show", "Acme Promo", "--token", acme, "--json").json()
    by_id = cli.ok("pool", "show", promo, "--token", acme, "--json").json()
    assert by_label == by_id and by_label["internal_name"] == internal

    renamed = cli.ok("--token", acme, "--json", "pool", "rename", "Acme Promo", "Spring Promo").json()
    assert renamed["label"] == "Spring Promo" and renamed["internal_name"] == internal

    refused = cli.fails(1, "--token", acme, "pool", "delete", "Spring Promo")
    assert "FAILED_PRECONDITION" in refused.err and "set-default" in refused.err

    assert cli.ok("--token", acme, "--json", "pool", "set-default", "transactional").json()["is_default"] is True
    assert "Deleted pool" in cli.ok("--token", acme, "pool", "delete", "Spring Promo").out
    assert [p["label"] for p in cli.ok("--token", acme, "--json", "pool", "list").json()["pools"]] == ["transactional"]

    unknown = cli.fails(1, "--token", acme, "pool", "show", "Spring Promo")
    assert "no pool with the label or id 'Spring Promo'" in unknown.err and "poolmta pool list" in unknown.err


def test_pool_headers_and_feed_type(cli, acme):
    cli.ok("--token", acme, "pool", "create", "news", "--server", "1")
    assert "has no custom headers" in cli.ok("--token", acme, "pool", "headers", "news").out

    cli.ok("--token", acme, "pool", "headers", "news", "--header", "X-List=weekly", "X-Brand=acme")
    shown = cli.ok("--token", acme, "pool", "headers", "news")
    assert table_rows(shown.out) == [["X-List", "weekly"], ["X-Brand", "acme"]]
    data = cli.ok("--token", acme, "--json", "pool", "headers", "news").json()
    assert data["headers"] == [{"name": "X-List", "value": "weekly"}, {"name": "X-Brand", "value": "acme"}]

    refused = cli.fails(1, "--token", acme, "pool", "headers", "news", "--header", "x-zone=EU")
    assert "INVALID_ARGUMENT" in refused.err
    cli.fails(2, "--token", acme, "pool", "headers", "news", "--header", "a=b", "--clear")

    assert cli.ok("--token", acme, "--json", "pool", "headers", "news", "--clear").json()["headers"] == []
    changed = cli.ok("--token", acme, "--json", "pool", "feed-type", "news", "newsletter").json()
    assert changed["feed_type"] == "newsletter"


# -- IPs and operations --------------------------------------------------------------


def test_ip_provision_assign_wait_and_state_changes(cli, acme):
    first = cli.ok("--token", acme, "--json", "ip", "provision", "192.0.2.10", "--server", "1").json()
    default = first["smtp_id"]  # the account's first IP created its default pool
    assert first["state"] == "IP_ACTIVE" and first["hostname"] == "mta1.example.net"
    cli.ok("--token", acme, "pool", "create", "bulk", "--server", "1")
    cli.ok("--token", acme, "ip", "provision", "192.0.2.11", "--pool", "bulk", "--weight", "5",
           "--hostname", "o1.acme.example")

    rows = table_rows(cli.ok("--token", acme, "ip", "list").out)
    assert [r[0] for r in rows] == ["192.0.2.10", "192.0.2.11"]
    assert rows[1][1:6] == ["bulk (3)", "1", "5", "active", "o1.acme.example"]
    assert [i["address"] for i in cli.ok("--token", acme, "--json", "ip", "list", "--pool", "bulk").json()["ips"]] == [
        "192.0.2.11"
    ]

    moved = cli.ok("--token", acme, "ip", "assign", "192.0.2.10", "bulk", "--wait")
    states = [line.split()[2] for line in moved.out.splitlines()]
    assert states[0] == "queued" and states[-1] == "done"
    assert field(cli.ok("--token", acme, "ip", "show", "192.0.2.10").out, "Pool") == "bulk (3)"

    back = cli.ok("--token", acme, "--json", "ip", "assign", "192.0.2.10", default, "--wait")
    ops = [json.loads(line) for line in back.out.splitlines()]
    assert ops[0]["state"] == "QUEUED" and ops[-1]["state"] == "DONE"
    op_id = ops[-1]["operation_id"]
    assert field(cli.ok("--token", acme, "op", "show", op_id).out, "State") == "done"
    watched = cli.ok("--token", acme, "op", "watch", op_id)
    assert len(watched.out.splitlines()) == 1 and " done " in watched.out

    queued = cli.ok("--token", acme, "ip", "assign", "192.0.2.10", "bulk")
    assert "moving 192.0.2.10" in queued.out and "poolmta op watch op-" in queued.out

    assert field(cli.ok("--token", acme, "ip", "pause", "192.0.2.11").out, "State") == "paused"
    assert field(cli.ok("--token", acme, "ip", "resume", "192.0.2.11").out, "State") == "active"
    assert cli.ok("--token", acme, "--json", "ip", "weight", "192.0.2.11", "0").json()["weight"] == 0
    assert "Released IP 192.0.2.11" in cli.ok("--token", acme, "ip", "release", "192.0.2.11").out
    refused = cli.fails(1, "--token", acme, "ip", "show", "192.0.2.11")
    assert "NOT_FOUND" in refused.err


@pytest.mark.slow
def test_op_watch_exits_1_when_the_operation_fails(start_control_plane, capsys):
    # A reconciler that never gets round to it keeps the operation QUEUED until
    # releasing the IP fails it.
    plane = start_control_plane(reconcile_interval=3600)
    cli = Cli(capsys, plane.address, plane.config.data_dir)
    cli.ok("server", "register", "--hostname", "mta1.example.net", "--zone", "US-1")
    token = token_after(cli.ok("account", "create", "acme", "--tier", "PRO").out, "API token")
    cli.ok("--token", token, "ip", "provision", "192.0.2.20", "--server", "1")
    cli.ok("--token", token, "pool", "create", "bulk", "--server", "1")
    op_id = cli.ok("--token", token, "--json", "ip", "assign", "192.0.2.20", "bulk").json()["operation_id"]

    watcher = subprocess.Popen(
        [sys.executable, "-m", "control.cli", *cli.argv("--token", token, "op", "watch", op_id)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )
    try:
        first = watcher.stdout.readline()
        assert op_id in first and " queued " in first
        cli.ok("--token", token, "ip", "release", "192.0.2.20")
        out, err = watcher.communicate(timeout=20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 1
    assert " failed " in out and "IP 192.0.2.20 was released" in out
    assert f"error: operation {op_id} failed: IP 192.0.2.20 was released" in err
    assert "Traceback" not in err


# -- bridges -------------------------------------------------------------------------


def test_bridge_secret_is_shown_once_and_never_listed(cli, acme):
    cli.ok("--token", acme, "pool", "create", "app", "--server", "1")
    created = cli.ok("--token", acme, "bridge", "create", "webapp", "--pool", "app", "--trust", "10.8.0.0/24")
    secret = token_after(created.out, "SMTP secret")
    username = created.out.split("SMTP username: ")[1].split()[0]
    assert len(secret) >= 20 and "shown once" in created.out
    assert "SMTP AUTH" in created.out and "port 2525" in created.out
    assert field(created.out, "Trusted networks") == "10.8.0.0/24"

    listed = cli.ok("--token", acme, "bridge", "list")
    assert table_rows(listed.out)[0][:4] == ["1", "webapp", "app (2)", username]
    for args in (("bridge", "list"), ("--json", "bridge", "list"), ("bridge", "show", "1"),
                 ("--json", "bridge", "show", "1"), ("--json", "bridge", "list", "--pool", "app")):
        assert secret not in cli.ok("--token", acme, *args).out

    rotated = cli.ok("--token", acme, "--json", "bridge", "rotate", "1").json()
    assert rotated["secret"] and rotated["secret"] != secret
    assert rotated["bridge"]["secret_rotate_time"].endswith("Z")

    trusted = cli.ok("--token", acme, "--json", "bridge", "trust", "1", "10.9.0.0/24", "192.168.5.0/24").json()
    assert trusted["trusted_networks"] == ["10.9.0.0/24", "192.168.5.0/24"]
    assert cli.ok("--token", acme, "--json", "bridge", "trust", "1").json()["trusted_networks"] == []

    assert field(cli.ok("--token", acme, "bridge", "revoke", "1").out, "State") == "revoked"
    cli.fails(2, "--token", acme, "bridge", "create", "x", "--pool", "app", "--server", "1")


def test_essential_bridge_routes_through_the_shared_pool(cli):
    cli.ok("server", "register", "--hostname", "mta1.example.net", "--zone", "US-1")
    token = token_after(cli.ok("account", "create", "tiny", "--tier", "ESSENTIAL").out, "API token")
    refused = cli.fails(1, "--token", token, "pool", "create", "mine", "--server", "1")
    assert "FAILED_PRECONDITION" in refused.err and "ESSENTIAL" in refused.err
    created = cli.ok("--token", token, "bridge", "create", "site", "--server", "1")
    assert field(created.out, "Routes through") == "shared pool of server 1"


# -- stats ---------------------------------------------------------------------------


def _count(redis_url: str, key: str, **figures: int) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for name, value in figures.items():
            client.hincrby(key, name, value)
    finally:
        client.close()


def test_stats_pool_and_ip(cli, acme, redis_url):
    cli.ok("--token", acme, "pool", "create", "promo", "--server", "1")
    for address in ("192.0.2.31", "192.0.2.32"):
        cli.ok("--token", acme, "ip", "provision", address, "--pool", "promo")
    smtp_id = 2
    _count(redis_url, rediskeys.pool_stats_key(1, smtp_id), sent=1000, delivered=970, bounced=30)
    _count(redis_url, rediskeys.pool_ip_stats_key(1, smtp_id, "192.0.2.31"), sent=600, delivered=590, bounced=10)
    _count(redis_url, rediskeys.pool_ip_stats_key(1, smtp_id, "192.0.2.32"), sent=400, delivered=380, bounced=20)
    _count(redis_url, rediskeys.ip_stats_key(1, "192.0.2.32"), sent=400, delivered=380, bounced=20, complaints=3)

    panel = cli.ok("--token", acme, "stats", "pool", "promo").out
    assert "Sending stats of promo pool" in panel
    assert re.search(r"Total Sent\s+1,000", panel) and re.search(r"Total Bounced\s+30", panel)
    assert "Delivery rate 97.0% · across 2 IPs in this Pool" in panel
    assert ["192.0.2.32", "400", "380", "20", "0", "0", "95.0%"] in table_rows(panel)

    data = cli.ok("--token", acme, "--json", "stats", "pool", "promo").json()
    assert data["sent"] == "1000" and data["window"] == "LIFETIME" and len(data["ips"]) == 2

    ip_panel = cli.ok("--token", acme, "stats", "ip", "192.0.2.32").out
    assert re.search(r"Complaints\s+3", ip_panel) and "Delivery rate 95.0%" in ip_panel
    month = cli.ok("--token", acme, "--json", "stats", "ip", "192.0.2.32", "--window", "30d").json()
    assert month["sent"] == "0"  # only the lifetime hash was written


def test_sparklines_scale_each_counter_to_its_peak_and_columns_sum_runs():
    assert trends.sparkline([0, 1, 2, 4, 8]) == " ▁▂▄█"
    assert trends.sparkline([0, 0]) == "  " and trends.sparkline([-1, 3]) == " █"
    assert trends.columns(list(range(10)), 4) == [0 + 1 + 2, 3 + 4 + 5, 6 + 7 + 8, 9]
    assert trends.columns([5, 6], 60) == [5, 6]


def test_stats_trend_of_a_pool_and_an_ip(cli, acme, redis_url):
    cli.ok("--token", acme, "pool", "create", "promo", "--server", "1")
    cli.ok("--token", acme, "ip", "provision", "192.0.2.41", "--pool", "promo")
    smtp_id, now = 2, time.time()
    for ago, sent, bounced in ((0, 30, 3), (120, 10, 0), (7200, 50, 5)):
        at = now - ago
        for key in (rediskeys.pool_stats_key(1, smtp_id, rediskeys.MINUTE, at),
                    rediskeys.pool_stats_key(1, smtp_id, rediskeys.HOUR, at),
                    rediskeys.ip_stats_key(1, "192.0.2.41", rediskeys.MINUTE, at),
                    rediskeys.pool_ip_stats_key(1, smtp_id, "192.0.2.41", rediskeys.MINUTE, at)):
            _count(redis_url, key, sent=sent, delivered=sent - bounced, bounced=bounced)

    chart = cli.ok("--token", acme, "stats", "pool", "promo", "--trend").out
    assert "Trend of promo pool" in chart and "per minute · last 60 minutes" in chart
    sent_row = next(line for line in chart.splitlines() if line.startswith("Sent"))
    assert sent_row.rstrip().endswith("40  peak 30/minute") and "█" in sent_row
    assert "Total Sent 40 · Delivered 37 · Bounced 3 · Delivery rate 92.5%" in chart

    hours = cli.ok("--token", acme, "--json", "stats", "pool", "promo", "--hours", "3").json()
    assert hours["resolution"] == "HOUR" and len(hours["points"]) == 3 and hours["sent"] == "90"
    assert hours["points"][0]["sent"] == "50"  # two hours ago; the rest in the last hour or this one
    share = cli.ok("--token", acme, "--json", "stats", "pool", "promo", "--trend", "--ip", "192.0.2.41").json()
    assert share["address"] == "192.0.2.41" and share["sent"] == "40"
    ip = cli.ok("--token", acme, "--json", "stats", "ip", "192.0.2.41", "--minutes", "5").json()
    assert len(ip["points"]) == 5 and ip["sent"] == "40" and ip["smtp_id"] == "0"
    assert "Trend of IP 192.0.2.41" in cli.ok("--token", acme, "stats", "ip", "192.0.2.41", "--trend").out

    assert "does not go with --trend" in cli.fails(2, "--token", acme, "stats", "pool", "promo", "--trend",
                                                   "--watch").err
    assert "give it with --trend" in cli.fails(2, "--token", acme, "stats", "pool", "promo", "--ip", "192.0.2.41").err
    cli.fails(2, "--token", acme, "stats", "ip", "192.0.2.41", "--minutes", "0")
    cli.fails(2, "--token", acme, "stats", "ip", "192.0.2.41", "--minutes", "5", "--hours", "2")
    too_many = cli.fails(1, "--token", acme, "stats", "pool", "promo", "--minutes", "2881").err
    assert "INVALID_ARGUMENT" in too_many and "between 1 and 2880" in too_many


@pytest.mark.slow
def test_stats_watch_follows_changes_until_ctrl_c(cli, acme, redis_url):
    cli.ok("--token", acme, "pool", "create", "live", "--server", "1")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "control.cli", *cli.argv("--token", acme, "--json", "stats", "pool", "live", "--watch")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )
    try:
        assert json.loads(watcher.stdout.readline())["sent"] == "0"
        _count(redis_url, rediskeys.pool_stats_key(1, 2), sent=7)
        assert json.loads(watcher.stdout.readline())["sent"] == "7"
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 130
    assert err == ""


# -- exit codes as a process sees them -------------------------------------------------


@pytest.mark.slow
def test_grpc_error_exits_1_with_the_status_and_no_traceback(cli):
    done = run_poolmta(*cli.argv("account", "show", "42"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: NOT_FOUND: ")
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_unreachable_control_plane_names_the_address_and_poolmta_up(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    done = run_poolmta("--grpc", address, "--token", "t0ken", "pool", "list")
    assert done.returncode == 1
    assert f"cannot reach the poolmta control plane at {address}" in done.stderr
    assert "poolmta up" in done.stderr and "Traceback" not in done.stderr
    assert "t0ken" not in done.stderr


# -- poolmta up ------------------------------------------------------------------------




@pytest.mark.slow
def test_up_without_dataplane_serves_and_stops_cleanly_on_sigterm(tmp_path):
    data_dir = tmp_path / "up"
    proc, lines, errors = start_up(data_dir, "--no-dataplane")
    try:
        redis_pid = int(lines.until(r"Redis unix://\S+ \(embedded, pid (\d+)\)").group(1))
        address = lines.until(r"control plane \(gRPC\) listening on (\S+)").group(1)
        assert lines.until(r"admin token in (\S+)").group(1) == str(data_dir / "admin.token")
        lines.until(r"poolmta: up")

        # the admin token works out of the box: it is read from <data-dir>/admin.token
        done = run_poolmta("--data-dir", str(data_dir), "--grpc", address, "--json", "server", "register",
                           "--hostname", "mta1.example.net", "--zone", "US-1")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["server_id"] == "1"
        assert (data_dir / "admin.token").stat().st_mode & 0o777 == 0o600

        proc.send_signal(signal.SIGTERM)
        lines.until(r"poolmta: stopped")
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)
    assert "Traceback" not in errors.rest()
    assert wait_until(lambda: process_gone(redis_pid), timeout=10), f"redis-server {redis_pid} left running"


@pytest.mark.slow
def test_up_runs_the_dataplane_and_stops_it_all_on_sigterm(tmp_path):
    data_dir = tmp_path / "up"
    proc, lines, errors = start_up(data_dir, "--smtp-listen", "127.0.0.1:0", "--workers", "1")
    try:
        redis_pid = int(lines.until(r"\(embedded, pid (\d+)\)").group(1))
        address = lines.until(r"listening on (\S+)").group(1)
        lines.until(r"MTA server 1 is not registered yet")
        dataplane_pid = int(lines.until(r"data plane for MTA server 1 starting \(pid (\d+)\)").group(1))
        lines.until(r"dataplane ready", timeout=60)
        smtp_port = int(lines.until(r"poolmta: data plane ready \(SMTP bridge on 127.0.0.1:(\d+)\); up").group(1))

        done = run_poolmta("--data-dir", str(data_dir), "--grpc", address, "server", "register",
                           "--hostname", "mta1.example.net", "--zone", "US-1")
        assert done.returncode == 0, done.stderr
        with socket.create_connection(("127.0.0.1", smtp_port), timeout=10) as smtp:
            assert smtp.recv(512).startswith(b"220")

        proc.send_signal(signal.SIGTERM)
        lines.until(r"poolmta: stopped", timeout=60)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)
    assert "Traceback" not in errors.rest()
    assert wait_until(lambda: process_gone(dataplane_pid), timeout=10), f"data plane {dataplane_pid} left running"
    assert wait_until(lambda: process_gone(redis_pid), timeout=10), f"redis-server {redis_pid} left running"


def test_dataplane_command_hands_its_arguments_to_python_m_dataplane(tmp_path):
    done = run_poolmta("--data-dir", str(tmp_path), "dataplane", "--help")
    assert done.returncode == 0, done.stderr
    assert "--server-id" in done.stdout and "--smtp-listen" in done.stdout


@pytest.mark.slow
def test_up_says_loudly_when_the_dataplane_dies_and_stops_the_rest(tmp_path):
    # The SMTP port is taken, so the data plane cannot serve and exits.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        smtp = f"127.0.0.1:{taken.getsockname()[1]}"
        proc, lines, errors = start_up(tmp_path / "up", "--smtp-listen", smtp)
        try:
            redis_pid = int(lines.until(r"\(embedded, pid (\d+)\)").group(1))
            lines.until(r"MTA server 1 is not registered yet")
            lines.until(r"poolmta server register --hostname")
            code, err = exit_of_up(proc, lines, errors)
        finally:
            stop_process(proc)
    assert code == 1
    assert "THE DATA PLANE EXITED UNEXPECTEDLY" in err
    assert wait_until(lambda: process_gone(redis_pid), timeout=10), f"redis-server {redis_pid} left running"


# -- the outbound feedback loop: bounce domains, the DSN switch, VERP keys ------------------


def test_pool_bounce_domain_and_bridge_dsn_switch(cli, acme):
    cli.ok("--token", acme, "pool", "create", "promo", "--server", "1")
    assert field(cli.ok("--token", acme, "pool", "show", "promo").out, "Bounce domain").startswith(
        "the MTA server's bounce domain")
    said = cli.ok("--token", acme, "pool", "bounce-domain", "promo", "Bounces.Acme.Example")
    assert "bounces to bounces.acme.example" in said.out
    assert cli.ok("--token", acme, "--json", "pool", "show", "promo").json()["bounce_domain"] == "bounces.acme.example"
    refused = cli.fails(1, "--token", acme, "pool", "bounce-domain", "promo", "bounces..example")
    assert "INVALID_ARGUMENT" in refused.err and "not a valid domain name" in refused.err
    cli.fails(2, "--token", acme, "pool", "bounce-domain", "promo", "x.example", "--clear")
    assert cli.ok("--token", acme, "--json", "pool", "bounce-domain", "promo", "--clear").json()["bounce_domain"] == ""

    cli.ok("--token", acme, "bridge", "create", "webapp", "--pool", "promo")
    assert field(cli.ok("--token", acme, "bridge", "show", "1").out, "DSNs to senders") == "on"
    assert "DSNs to senders off" in cli.ok("--token", acme, "bridge", "dsn", "1", "off").out
    assert cli.ok("--token", acme, "--json", "bridge", "show", "1").json()["send_dsns"] is False
    assert "DSNs to senders off" in cli.ok("--token", acme, "bridge", "dsn", "1").out
    assert cli.ok("--token", acme, "--json", "bridge", "dsn", "1", "on").json()["send_dsns"] is True
    cli.fails(2, "--token", acme, "bridge", "dsn", "1", "maybe")


def test_server_bounce_domain(cli, acme):
    assert field(cli.ok("server", "show", "1").out, "Bounce domain").startswith("mta1.example.net (its hostname")
    assert "bounces to mta1.example.net (its hostname" in cli.ok("server", "bounce-domain", "1").out
    said = cli.ok("server", "bounce-domain", "1", "Bounces.MTA1.Example")
    assert "MTA server 1 (mta1.example.net) bounces to bounces.mta1.example." in said.out
    assert field(cli.ok("server", "show", "1").out, "Bounce domain") == "bounces.mta1.example"
    assert cli.ok("--json", "server", "show", "1").json()["bounce_domain"] == "bounces.mta1.example"
    assert table_rows(cli.ok("server", "list").out)[0][:4] == ["1", "mta1.example.net", "US-1", "bounces.mta1.example"]
    assert cli.ok("--json", "server", "list").json()["servers"][0]["bounce_domain"] == "bounces.mta1.example"
    refused = cli.fails(1, "server", "bounce-domain", "1", "bounces..example")
    assert "INVALID_ARGUMENT" in refused.err and "not a valid domain name" in refused.err
    refused = cli.fails(1, "--token", acme, "server", "bounce-domain", "1", "bounces.acme.example")
    assert "PERMISSION_DENIED" in refused.err and "admin token" in refused.err
    cli.fails(2, "server", "bounce-domain", "1", "x.example", "--clear")
    assert cli.ok("--json", "server", "bounce-domain", "1", "--clear").json()["bounce_domain"] == ""

    registered = cli.ok("--json", "server", "register", "--hostname", "mta2.example.net", "--zone", "EU-1",
                        "--bounce-domain", "bounces.mta2.example").json()
    assert registered["bounce_domain"] == "bounces.mta2.example"


@pytest.mark.slow
def test_verp_keys_are_listed_rotated_and_pruned_never_shown(tmp_path):
    data_dir = tmp_path / "data"
    listed = run_poolmta("--data-dir", str(data_dir), "--json", "verp", "list")
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)["keys"]
    assert [(k["id"], k["current"]) for k in keys] == [(1, True)]
    keyring = data_dir / "verp.keys"
    assert keyring.stat().st_mode & 0o777 == 0o600
    secret = json.loads(keyring.read_text())["keys"][0]["secret"]

    rotated = run_poolmta("verp", "rotate", "--data-dir", str(data_dir))
    assert rotated.returncode == 0 and "Key 2 now signs" in rotated.stdout, rotated.stderr
    assert secret not in rotated.stdout
    keys = json.loads(run_poolmta("--data-dir", str(data_dir), "verp", "list", "--json").stdout)["keys"]
    assert [(k["id"], k["current"], k["superseded"] is not None) for k in keys] == [(1, False, True), (2, True, False)]

    # Key 1 keeps verifying until every address it signed has expired.
    kept = run_poolmta("--data-dir", str(data_dir), "--json", "verp", "prune")
    assert json.loads(kept.stdout) == {"pruned": []}
    retired = run_poolmta("--data-dir", str(data_dir), "verp", "retire", "2")
    assert retired.returncode == 1 and "current signing key" in retired.stderr and "Traceback" not in retired.stderr
    time.sleep(0.1)
    pruned = run_poolmta("--data-dir", str(data_dir), "--json", "verp", "prune", "--max-age", "0.05s")
    assert json.loads(pruned.stdout) == {"pruned": [1]}
