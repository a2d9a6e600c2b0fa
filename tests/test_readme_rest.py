"""The README's operator surface cannot drift from the code: the REST section's `curl`
example, read from the README and sent as written (its options interpreted here: the
same credentials, URL, headers and body) to a real data plane, gets the 202 and the
reply its comment shows; its endpoint table names every route the data plane serves;
the metrics table names every metric of both planes; every `poolmta queue` / `top`
command of the queue section is one the CLI's parser takes."""

from __future__ import annotations

import base64
import json
import re
import shlex
import urllib.request
from pathlib import Path

from control.cli.main import build_parser
from control.metrics import ControlMetrics
from dataplane import metrics
from dataplane.rest.openapi import OPENAPI
from tests.dataplane_support import make_bridge, make_pool, make_snapshot, publish

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
SERVER = 1
SECRET = "readme-s3cret"


def _section(heading: str) -> str:
    return README.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def _shell_lines(text: str) -> list[str]:
    """The ```sh blocks of `text`: continuation lines joined, comments and `#` lines dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _curl(block: str, env: dict[str, str]) -> urllib.request.Request:
    """The request the `curl` command of a shell block makes (the options the README uses:
    -sS, -u, -H, -d), its $VARIABLES taken from `env`."""
    lexer = shlex.shlex(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], re.sub(r"\\\n", " ", block)), posix=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = list(lexer)
    assert words[0] == "curl", block
    url, headers, data = None, {}, None
    i = 1
    while i < len(words):
        word = words[i]
        if word == "-u":
            i += 1
            headers["Authorization"] = "Basic " + base64.b64encode(words[i].encode()).decode()
        elif word == "-H":
            i += 1
            name, _, value = words[i].partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            i += 1
            data = words[i].encode()
        elif word not in ("-s", "-S", "-sS"):
            assert not word.startswith("-"), f"an option this test does not know: {word}"
            url = word
        i += 1
    return urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")


def test_the_readme_curl_example_sends_as_it_says(redis_client, redis_url, start_dataplane):
    bridge = make_bridge(1, 7, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [("127.0.0.2", 1)])], [bridge]))
    plane = start_dataplane(redis_url, SERVER)
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", _section("## REST API"), flags=re.DOTALL) if "curl " in b]
    assert "http://127.0.0.1:8025/v1/messages" in block  # the default address, as documented
    block = block.replace("127.0.0.1:8025", f"127.0.0.1:{plane.http_port}")
    request = _curl(block, {"BRIDGE_USERNAME": bridge.username, "BRIDGE_SECRET": SECRET})
    with urllib.request.urlopen(request, timeout=30) as reply:
        status, body = reply.status, json.loads(reply.read())
    documented = re.search(r"^# (\d{3}) (\{.*\})$", block, re.MULTILINE)
    assert documented, "no '# STATUS {reply}' comment after the curl example"
    assert status == int(documented.group(1)) == 202
    shown = json.loads(documented.group(2))
    assert set(body) == set(shown) and body["recipients"] == shown["recipients"] and body["rejected"] == []
    assert list(plane.record(body["id"]).rcpt_tos) == shown["recipients"]  # in the durable spool, as it says


def test_the_readme_lists_every_endpoint_and_metric():
    table = _section("## REST API")
    for path, operations in OPENAPI["paths"].items():  # what the data plane serves, as it describes it
        for method in operations:
            assert f"`{method.upper()} {path}`" in table, f"`{method.upper()} {path}` is not in the README's REST table"
    assert "`GET /metrics`" in table  # served beside them while the metrics are on
    names = [family.name + ("_total" if family.type == "counter" else "")
             for registry in (metrics.REGISTRY, ControlMetrics().registry) for family in registry.collect()
             if family.name.startswith("poolmta_")]
    metrics_table = _section("## Metrics and logs")
    missing = [name for name in names if f"`{name}`" not in metrics_table]
    assert not missing, f"not in the README's metrics table: {missing}"


def test_every_queue_and_top_command_of_the_readme_parses():
    parser = build_parser()
    commands = [line.split("#", 1)[0].strip() for line in _shell_lines(_section("## Queue control and `poolmta top`"))]
    assert any(c.startswith("poolmta queue list") for c in commands) and "poolmta top" in commands
    for command in commands:
        words = shlex.split(command.replace("ID...", "0194f3a2c1d7").replace("...", ""))
        assert words[0] == "poolmta"
        parser.parse_args(words[1:])  # SystemExit (a usage error) fails the test
