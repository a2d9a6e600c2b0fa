"""The end-to-end load harness (`bench/load.py`) on a tiny workload against the full
stack (over SMTP and, `--rest`, through the REST Bridge) and the bare aiosmtpd
baseline, run as the documented command. Its numbers must be consistent with each
other; their size is never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The load harness starts the whole stack.
pytestmark = pytest.mark.slow

LOAD = Path(__file__).resolve().parent.parent / "bench" / "load.py"
MESSAGES = 50


def test_tiny_run_reports_consistent_numbers(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(LOAD), "--messages", str(MESSAGES), "--size", "2K", "--concurrency", "5",
         "--per-connection", "4", "--baseline", "aiosmtpd", "--rest", "--timeout", "60", "--json"],
        capture_output=True, text=True, timeout=150, cwd=tmp_path,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    results = {r["system"]: r for r in json.loads(proc.stdout)}
    assert set(results) == {"poolmta", "poolmta REST", "bare aiosmtpd (250 only)"}

    for r in results.values():
        assert (r["messages"], r["size"], r["concurrency"], r["per_connection"]) == (MESSAGES, 2000, 5, 4)
        assert r["accepted"] == MESSAGES and r["failed"] == 0 and r["errors"] == []
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["accept_seconds"] > 0
        assert r["accept_rate"] == pytest.approx(MESSAGES / r["accept_seconds"], rel=0.01)
        assert r["cpu_seconds"] > 0 and r["cpu_per_1000"] > 0 and r["cpu_includes"]

    for poolmta in (results["poolmta"], results["poolmta REST"]):  # over SMTP, and through the REST Bridge
        assert poolmta["relayed"] == MESSAGES  # every accepted message reached the sink
        assert 0 < poolmta["relayed_rate"]
        assert "data plane" in poolmta["cpu_includes"]
    assert results["bare aiosmtpd (250 only)"]["relayed"] is None  # the baseline relays nothing
