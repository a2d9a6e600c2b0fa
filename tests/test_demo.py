"""`poolmta demo` end to end: the real console script in a subprocess, starting the
real embedded Redis, control plane, data plane and sink. It must exit 0, print the
per-Pool panel with the totals the demo's message plan implies, show a stamped
message, show the mail of each channel (SMTP, and the REST Bridge: JSON, batch and raw
requests) received from its Pool's IPs, and leave no process behind."""

from __future__ import annotations

import pytest

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from control.cli.demo.plan import BOUNCE_LOCAL_PART, DEMO_POOLS, REST, SMTP, DemoOptions
from control.cli.demo.traffic import plan_messages

# Every test here runs `poolmta` with its child processes.
pytestmark = pytest.mark.slow

MESSAGES = 300
DEMO_DEADLINE = 90.0


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, starttime) of a live process, None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].decode().split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _descendants(root: int) -> dict[tuple[int, str], str]:
    """{(pid, starttime): command line} of every live process under `root`."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            table[int(entry)] = stat
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and (pid, start) not in found:
                found[(pid, start)] = _cmdline(pid)
                todo.append(pid)
    return found


def _expected_rows() -> dict[str, tuple[int, int, int]]:
    """label -> (sent, delivered, bounced) for the demo's seeded message plan."""
    options = DemoOptions(messages=MESSAGES)
    batches, _ = plan_messages(options)
    rows = {}
    for index, plan in enumerate(options.pools):
        messages = [m for batch in batches for m in batch if m.pool == index]
        bounced = sum(m.recipient.startswith(BOUNCE_LOCAL_PART) for m in messages)
        rows[plan.label] = (len(messages), len(messages) - bounced, bounced)
    return rows


def _expected_channels() -> dict[tuple[str, str], tuple[int, int]]:
    """(channel, label) -> (accepted, bounced) for the demo's seeded message plan."""
    options = DemoOptions(messages=MESSAGES)
    batches, _ = plan_messages(options)
    rows = {(channel, plan.label): (0, 0) for channel in (SMTP, REST) for plan in options.pools}
    for message in (m for batch in batches for m in batch):
        key = (message.channel, options.pools[message.pool].label)
        accepted, bounced = rows[key]
        rows[key] = (accepted + 1, bounced + message.recipient.startswith(BOUNCE_LOCAL_PART))
    return rows


def test_demo_shows_the_panel_with_totals_that_add_up_and_leaves_nothing_running(tmp_path):
    poolmta = Path(sys.executable).with_name("poolmta")
    assert poolmta.exists(), f"the console script {poolmta} is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLMTA_")}
    env["TMPDIR"] = str(tmp_path)  # the demo's data directory lands here
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    seen: dict[tuple[int, str], str] = {}
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([str(poolmta), "demo", "--messages", str(MESSAGES)], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + DEMO_DEADLINE
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                # A zombie's command line reads empty: keep what a live process showed.
                for key, cmdline in _descendants(proc.pid).items():
                    if cmdline or key not in seen:
                        seen[key] = cmdline
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
    output, errors = out_path.read_text(), err_path.read_text()
    assert code == 0, f"poolmta demo exited {code}\n--- stdout\n{output}\n--- stderr\n{errors}"

    # The per-Pool table, every figure as StatsService counted it.
    expected = _expected_rows()
    assert sum(sent for sent, _, _ in expected.values()) == MESSAGES
    for plan in DEMO_POOLS:
        sent, delivered, bounced = expected[plan.label]
        rate = f"{delivered / (delivered + bounced) * 100:.1f}%"
        row = rf"^\s*{plan.label}\s+active\s+{len(plan.addresses)}\s+{sent}\s+{delivered}\s+{bounced}\s+{rate}\s*$"
        assert re.search(row, output, re.MULTILINE), f"no row {row!r} in\n{output}"
    # The drill-in for acme-promotional, one line per IP.
    assert "Sending stats of acme-promotional pool" in output
    for address in DEMO_POOLS[0].addresses:
        assert re.search(rf"^\s*{re.escape(address)}\s+\d+", output, re.MULTILINE), address
    # A message as the sink received it: stamped headers and the Pool's custom headers.
    for header in ("Received:", "x-virtual-mta: promo-", "x-feedtype: newsletter", "x-zone: US-1",
                   "x-serverid: 1", "X-Brand: acme", "X-Campaign: black-friday"):
        assert header.lower() in output.lower(), f"{header!r} not shown\n{output}"
    assert "OK: StatsService counts 300 sent" in output
    # A third of the mail went through the REST Bridge, as JSON requests and batch requests,
    # and arrived, from its Pool's IPs, as often as it was accepted and not bounced.
    channels = _expected_channels()
    rest = sum(accepted for (channel, _), (accepted, _) in channels.items() if channel == REST)
    assert 0 < rest < MESSAGES
    assert re.search(rf"^of them {rest} through the REST Bridge at http://127\.0\.0\.1:\d+ \([1-9]\d* POST "
                     r"/v1/messages with JSON, [1-9]\d* POST /v1/messages/batch, [1-9]\d* POST /v1/messages "
                     r"\(message/rfc822\)\)", output, re.MULTILINE), output
    for (channel, label), (accepted, bounced) in channels.items():
        plan = next(p for p in DEMO_POOLS if p.label == label)
        ips = "|".join(re.escape(a) for a in plan.addresses)
        row = (rf"^\s*{channel}\s+{label}\s+{accepted}\s+{bounced}\s+{accepted - bounced}\s+"
               rf"(?:(?:{ips}) \d+(?: · )?)+\s+ok\s*$")
        assert re.search(row, output, re.MULTILINE), f"no row {row!r} in\n{output}"
    # The feedback loop: one DSN and one ARF report about mail it sent, both counted.
    assert re.search(r"^DSN \(asynchronous bounce\)\s.*report counted \(1 bounce", output, re.MULTILINE), output
    assert re.search(r"^ARF \(complaint\)\s.*report counted \(1 complaint.*complaints 0 -> 1", output,
                     re.MULTILINE), output
    assert "the stats are DSN-fed" in output
    assert "MISMATCH" not in output and "CHECK FAILED" not in output

    # Nothing left behind: every process the demo started is gone...
    commands = " | ".join(seen.values())
    assert "redis-server" in commands and "dataplane" in commands and "dataplane.sink" in commands, commands
    left = {key: cmd for key, cmd in seen.items() if _stat(key[0]) is not None and _stat(key[0])[1] == key[1]}
    assert not left, f"still running after the demo exited: {left}"
    # ...nothing else refers to its data directory, and the directory is removed.
    strays = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
              if str(tmp_path) in _cmdline(pid) and _stat(pid) is not None]
    assert not strays, [(pid, _cmdline(pid)) for pid in strays]
    assert not list(tmp_path.glob("poolmta-demo-*"))


def test_poolmta_sink_runs_the_sink_with_its_arguments(tmp_path):
    poolmta = Path(sys.executable).with_name("poolmta")
    counts = tmp_path / "counts.json"
    proc = subprocess.Popen([str(poolmta), "sink", "--listen", "127.0.0.1:0", "--counts-file", str(counts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        ready = proc.stdout.readline()
        assert re.fullmatch(r"sink ready listen=127\.0\.0\.1:\d+\n", ready), ready
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert json.loads(counts.read_text())["final"] is True
