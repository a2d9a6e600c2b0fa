"""`poolmta up --log-format json`: the control plane and the data plane it starts both
log one JSON object per line on stderr (the data plane's passed through), from start
to a clean stop; the control plane's metrics are served on `--metrics-listen` and the
data plane's on `--dataplane-metrics-listen`."""

from __future__ import annotations

import json
import re
import signal

import pytest

from tests.cli.cli_support import start_up, stop_process
from tests.support import scrape_metrics

pytestmark = pytest.mark.slow


def test_up_logs_json_lines_and_serves_both_metrics(tmp_path):
    proc, lines, errors = start_up(tmp_path / "up", "--smtp-listen", "127.0.0.1:0", "--workers", "1",
                                   "--log-format", "json")
    try:
        control_metrics = lines.until(r"control plane metrics on http://(\S+)/metrics").group(1)
        ready = lines.until(r"dataplane ready .*", timeout=60).group(0)
        dataplane_metrics = re.search(r"metrics=(\S+)", ready).group(1)
        assert "poolmta_control_health_serving" in scrape_metrics(control_metrics)
        assert "poolmta_snapshot_version" in scrape_metrics(dataplane_metrics)
        proc.send_signal(signal.SIGTERM)
        lines.until(r"poolmta: stopped", timeout=60)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)
    records = [json.loads(line) for line in errors.rest().splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "msg", "role", "pid"} <= set(r) for r in records)
    roles = {r["role"] for r in records}
    assert "up" in roles and "supervisor" in roles and "w0" in roles, roles
