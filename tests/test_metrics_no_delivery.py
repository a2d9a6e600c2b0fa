"""The spool gauges of a data plane that delivers nothing (`--no-delivery`): its
workers still say, on the scrape, how many messages wait in the spool and how old the
oldest is, as delivering workers do (`metrics.undelivered_share`); summed over the
two workers, exactly what was accepted."""

from __future__ import annotations

import time

from dataplane import metrics, spool
from tests.dataplane_support import (
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    send_all,
)
from tests.support import scrape_metrics, wait_until

SERVER = 1
SECRET = "no-delivery-s3cret"
MESSAGES = 12


def _gauge(samples: dict, name: str) -> float | None:
    series = samples.get(name, {})
    return sum(series.values()) if series else None


def test_a_worker_without_delivery_exports_the_spool_depth_and_oldest_age(
        redis_client, redis_url, start_dataplane):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [("127.0.0.2", 1)])],
                                        [make_bridge(1, 7, SECRET)]))
    plane = start_dataplane(redis_url, SERVER, workers=2)  # --no-delivery
    endpoint = f"127.0.0.1:{plane.metrics_port}"
    assert wait_until(lambda: _gauge(scrape_metrics(endpoint), "poolmta_spool_messages") == 0, timeout=10)

    accepted_before = time.time()
    ids = send_all(plane.port, "br-test1", SECRET, [(n, ["rcpt@example.net"], message(n)) for n in range(MESSAGES)],
                   sessions=4)
    assert len(ids) == MESSAGES
    assert len(spool.queued_ids(plane.spool_dir)) == MESSAGES  # nothing is delivered

    assert wait_until(lambda: _gauge(scrape_metrics(endpoint), "poolmta_spool_messages") == MESSAGES, timeout=10)
    samples = scrape_metrics(endpoint)
    oldest_age = _gauge(samples, "poolmta_spool_oldest_age_seconds")
    # At most the time since the first message was sent (the id keeps milliseconds, rounded down).
    assert oldest_age is not None and 0 <= oldest_age <= time.time() - accepted_before + 0.001


def test_undelivered_share_splits_the_spool_by_owner(tmp_path):
    queue = tmp_path / spool.QUEUE_DIR
    queue.mkdir()
    # Ids as the spool makes them: 12 hex digits of ms, 8 random, a 6-digit counter (owner = counter % owners).
    ids = [f"{1_700_000_000_000 + n:012x}abcdef01{n:06x}" for n in range(5)]
    for message_id in ids:
        (queue / f"{message_id}{spool.RECORD_SUFFIX}").write_bytes(b"")
    (queue / f"not-an-id{spool.RECORD_SUFFIX}").write_bytes(b"")
    assert metrics.undelivered_share(tmp_path, 0, 2) == (3, 1_700_000_000.000)
    assert metrics.undelivered_share(tmp_path, 1, 2) == (2, 1_700_000_000.001)
    assert metrics.undelivered_share(tmp_path / "none", 0, 1) == (0, None)
