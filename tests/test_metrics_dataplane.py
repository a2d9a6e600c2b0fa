"""The data plane's Prometheus metrics and JSON logs, end to end: two workers take mail
through the Bridge and deliver it to a real sink; the supervisor's metrics endpoint,
parsed with prometheus-client's own parser, sums both workers' counts and agrees with
the stats in Redis (what StatsService reads) and with the sink, reports to the inbound
listener included; a killed worker's counts stay, its gauges go. Every line the data plane logs with `--log-format json`
is a JSON object, with one line per delivery outcome naming the recipient's domain only.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
from collections import Counter

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.dataplane_support import (HOSTNAME, events_of, make_bridge, make_pool, make_snapshot, message, publish,
                                     queue_empty, send_all, stats_of)
from tests.inbound_support import arf, codec_of, dsn, return_path, returned_headers, send_report
from tests.support import scrape_metrics, wait_until

pytestmark = pytest.mark.slow

SERVER = 1
SECRET = "metrics-s3cret-never-logged"
IPS = ["127.0.0.2", "127.0.0.3"]
POOL = "promo-3-1-pool-7"
MESSAGES = 60


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s series whose labels include `labels`."""
    return sum(value for key, value in samples.get(name, {}).items() if set(labels.items()) <= set(key))


def _rcpt(n: int) -> str:
    if n % 10 == 0:
        return f"bounce{n}@example.net"
    return f"defer{n}@example.org" if n % 10 == 1 else f"rcpt{n}@example.net"


def test_two_workers_metrics_sum_and_match_the_stats_and_the_sink_and_logs_are_json(
        redis_client, redis_url, start_dataplane, start_sink):
    pool = make_pool(7, [(ip, 1) for ip in IPS])
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [make_bridge(1, 7, SECRET)]))
    sink = start_sink()
    plane = start_dataplane(redis_url, SERVER, workers=2, delivery=True,
                            args=["--route", f"*={sink.address}", "--retry-schedule", "0.2s", "--log-format", "json"])
    endpoint = f"127.0.0.1:{plane.metrics_port}"
    plan = [(n, [_rcpt(n)], message(n)) for n in range(MESSAGES)]
    ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=20)
    with smtplib.SMTP(plane.host, plane.port, timeout=10) as smtp:
        smtp.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("br-test1", "wrong-" + SECRET)

    bounced = sum(1 for n in range(MESSAGES) if n % 10 == 0)
    delivered = MESSAGES - bounced

    def settled() -> bool:
        stats = stats_of(redis_client, SERVER, 7, [])["pool"]
        return queue_empty(plane) and stats["delivered"] == delivered and stats["bounced"] == bounced

    assert wait_until(settled, timeout=90, interval=0.2), stats_of(redis_client, SERVER, 7, IPS)
    assert wait_until(lambda: total(scrape_metrics(endpoint), "poolmta_spool_messages") == 0, timeout=10)
    samples = scrape_metrics(endpoint)
    # The workers' HTTP port (REST Bridge, health) serves the same merged figures.
    on_http_port = scrape_metrics(f"127.0.0.1:{plane.http_port}")
    for name in ("poolmta_messages_accepted_total", "poolmta_deliveries_total"):
        assert on_http_port[name] == samples[name], name

    # Per source IP: exactly the counters StatsService reads, and what the sink saw.
    stats = stats_of(redis_client, SERVER, 7, IPS)
    counts = sink.counts()
    for ip in IPS:
        assert total(samples, "poolmta_recipients_accepted_total", pool=POOL, source_ip=ip) == stats[ip]["sent"]
        assert total(samples, "poolmta_messages_accepted_total", pool=POOL, source_ip=ip) == stats[ip]["sent"]
        for outcome in ("delivered", "bounced", "deferred"):
            assert total(samples, "poolmta_deliveries_total", pool=POOL, source_ip=ip, outcome=outcome) == \
                stats[ip][outcome], (ip, outcome)
        assert stats[ip]["bounced"] == counts["peers"][ip]["rejected"]
    assert total(samples, "poolmta_messages_accepted_total") == MESSAGES
    assert total(samples, "poolmta_deliveries_total", outcome="delivered") == delivered
    assert total(samples, "poolmta_deliveries_total", outcome="deferred") == counts["deferred"]
    # One attempt per job: each sender's recipient attempt, and each DSN's.
    attempts = total(samples, "poolmta_deliveries_total") + total(samples, "poolmta_dsn_deliveries_total")
    assert total(samples, "poolmta_delivery_attempt_duration_seconds_count") == attempts
    assert total(samples, "poolmta_dsn_deliveries_total", outcome="delivered") == bounced  # one DSN per bounce
    assert total(samples, "poolmta_auth_failures_total") == 2  # smtplib tried PLAIN, then LOGIN
    assert total(samples, "poolmta_snapshot_version") == 1
    assert 0 <= total(samples, "poolmta_snapshot_age_seconds") < 600
    assert total(samples, "poolmta_stats_flush_lag_seconds") < 60

    # Reports to the inbound listener: a DSN about a delivered recipient, an ARF complaint.
    codec = codec_of(plane.data_dir)
    event = {n: events_of(redis_client, ids[n])[-1] for n in (2, 3)}
    verp = {n: return_path(codec, ids[n], event[n]["rcpt_index"]) for n in (2, 3)}
    code, text = send_report(plane.inbound_port, dsn(_rcpt(2), returned=returned_headers(plan[2][2])), [verp[2]])
    assert code == 250 and "1 bounce(s)" in text, text
    complaint = arf(rcpt=_rcpt(3), mail_from=verp[3], source_ip=event[3]["ip"], returned=plan[3][2].decode())
    code, text = send_report(plane.inbound_port, complaint, [f"fbl@{HOSTNAME}"])
    assert code == 250 and "1 complaint(s)" in text, text
    samples = scrape_metrics(endpoint)
    assert total(samples, "poolmta_inbound_reports_total", kind="dsn") == 1
    assert total(samples, "poolmta_inbound_reports_total", kind="arf") == 1
    assert total(samples, "poolmta_report_bounces_total", pool=POOL, source_ip=event[2]["ip"]) == 1
    stats = stats_of(redis_client, SERVER, 7, IPS)
    for ip in IPS:
        assert total(samples, "poolmta_complaints_total", pool=POOL, source_ip=ip) == stats[ip]["complaints"]
    assert total(samples, "poolmta_complaints_total") == 1

    # The sum is over both workers: each counted its own share into its own file.
    pids = plane.worker_pids()
    metrics_dir = plane.data_dir / "metrics" / f"server-{SERVER}"
    per_worker = {}
    for index, pid in pids.items():
        merged = MultiProcessCollector.merge([str(metrics_dir / f"counter_{pid}.db")], accumulate=False)
        per_worker[index] = sum(s.value for m in merged if m.name == "poolmta_messages_accepted"
                                for s in m.samples if s.name == "poolmta_messages_accepted_total")
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker
    assert sum(per_worker.values()) == MESSAGES

    # A worker killed: its counts stay in the sum, its live gauges go with it.
    killed = pids[0]
    os.kill(killed, signal.SIGKILL)
    assert wait_until(lambda: plane.worker_pids()[0] != killed, timeout=30)
    assert wait_until(lambda: not list(metrics_dir.glob(f"gauge_live*_{killed}.db")), timeout=10)
    assert total(scrape_metrics(endpoint), "poolmta_messages_accepted_total") == MESSAGES

    assert plane.stop() == 0
    lines = [line for line in plane.log().splitlines() if line and not line.startswith("dataplane ready")]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg", "role", "pid"} <= set(r) for r in records)
    outcomes = [r for r in records if "outcome" in r and "rcpt_domain" in r]
    assert Counter(r["outcome"] for r in outcomes if not r["reply"].startswith("451 4.4.0")) >= Counter(
        {"delivered": delivered, "bounced": bounced})
    for record in outcomes:
        assert {"message_id", "bridge_id", "pool", "source_ip", "reply"} <= set(record)
        assert record["rcpt_domain"] in ("example.net", "example.org", "example.com")
        assert "rcpt" not in record and f"domain={record['rcpt_domain']}" in record["msg"]  # never the address
    assert SECRET not in plane.log()
