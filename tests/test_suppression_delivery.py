"""End to end through the Bridge and a real sink: a recipient the destination refuses
with 550 5.1.1 lands on its account's suppression list, and every Bridge of that
account refuses it at RCPT afterwards (counted `suppressed`), while another
account still sends to it. Deferrals, local errors, policy refusals and the
queue-lifetime bounce suppress nothing. With Redis down, RCPT gets 451."""

from __future__ import annotations

import smtplib

import redis

from control.contract import rediskeys
from control.contract.suppression import SuppressionEntry
from tests.dataplane_support import (
    events_of,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queue_empty,
    queued_id,
    stats_of,
)
from tests.support import wait_until

SERVER = 1
SECRET = "s3cret"
ACME, GLOBEX = 3, 4


def _session(plane, bridge_id: int) -> smtplib.SMTP:
    client = smtplib.SMTP(plane.host, plane.port, timeout=30)
    client.login(f"br-test{bridge_id}", SECRET)
    return client


def _send(plane, bridge_id: int, rcpts: list[str], n: int = 0, body: bytes | None = None) -> tuple[str, dict]:
    """Send through a Bridge: (message id, {recipient refused at RCPT: its reply})."""
    with _session(plane, bridge_id) as client:
        client.mail("sender@example.com")
        refused = {}
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                refused[rcpt] = (code, text.decode())
        code, reply = client.data(message(n, body=body))
        assert code == 250, reply
        return queued_id(reply), refused


def _entries(client: redis.Redis, user_id: int) -> dict[str, SuppressionEntry]:
    listed = client.hgetall(rediskeys.suppression_key(user_id))
    return {field.decode(): SuppressionEntry.decode(value) for field, value in listed.items()}


def test_a_550_bounce_suppresses_the_recipient_for_every_bridge_of_the_account(
        redis_client, redis_url, start_dataplane, start_sink):
    # acme's two pools, one Bridge each; globex's pool and Bridge.
    pools = [make_pool(7, [("127.0.0.2", 1)]), make_pool(8, [("127.0.0.3", 1)]),
             make_pool(9, [("127.0.0.4", 1)], user_id=GLOBEX)]
    bridges = [make_bridge(1, 7, SECRET), make_bridge(2, 8, SECRET), make_bridge(3, 9, SECRET, user_id=GLOBEX)]
    publish(redis_client, make_snapshot(SERVER, 1, pools, bridges))
    sink = start_sink()
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=["--route", f"*={sink.address}"])

    first, refused = _send(plane, 1, ["bounce-ann@example.net"])
    assert refused == {}
    assert wait_until(lambda: "bounce-ann@example.net" in _entries(redis_client, ACME), timeout=30), plane.log()
    entry = _entries(redis_client, ACME)["bounce-ann@example.net"]
    assert (entry.reason, entry.message_id, entry.source) == ("bounce", first, "delivery")
    assert entry.detail.startswith("550 5.1.1 ") and entry.at_ms > 0
    assert [e["outcome"] for e in events_of(redis_client, first)] == ["bounced"]

    # Another Bridge of the same account, another pool, another spelling: refused at RCPT.
    second, refused = _send(plane, 2, ["Bounce-Ann@EXAMPLE.net", "fine@example.net"], n=2)
    code, text = refused["Bounce-Ann@EXAMPLE.net"]
    assert code == 550 and text.startswith("5.7.1 <Bounce-Ann@EXAMPLE.net>: recipient is on this account's "
                                           f"suppression list (bounce since {entry.since};")

    # globex never bounced it: its Bridge accepts it, and the sink answers it again.
    rejected_before = sink.counts().get("rejected", 0)
    _, refused = _send(plane, 3, ["bounce-ann@example.net"], n=3)
    assert refused == {}
    sink.wait_counts(lambda c: c.get("rejected", 0) == rejected_before + 1, "globex's RCPT answered by the sink")

    def settled() -> bool:
        return queue_empty(plane) and stats_of(redis_client, SERVER, 8, [])["pool"]["delivered"] == 1

    assert wait_until(settled, timeout=30), stats_of(redis_client, SERVER, 8, ["127.0.0.3"])
    acme_pool = stats_of(redis_client, SERVER, 8, ["127.0.0.3"])
    assert [e["rcpt"] for e in events_of(redis_client, second)] == ["fine@example.net"]
    assert acme_pool["pool"]["suppressed"] == 1 and acme_pool["pool"]["sent"] == 1  # the refused one is not sent
    assert acme_pool["127.0.0.3"]["suppressed"] == 0  # counted for the pool alone: no IP was picked
    assert stats_of(redis_client, SERVER, 7, [])["pool"]["suppressed"] == 0
    assert sink.counts()["rcpt_attempts"]["bounce-ann@example.net"] == 2  # acme's first try, globex's
    assert "Traceback" not in plane.log()


def test_deferrals_local_errors_and_policy_refusals_suppress_nothing(
        redis_client, redis_url, start_dataplane, start_sink):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [("127.0.0.2", 1)])], [make_bridge(1, 7, SECRET)]))
    sink = start_sink("--rule", "policy*=550:5.7.1 client host blocked by policy",
                      "--rule", "never*=451:4.2.1 mailbox busy, come back later")
    small = start_sink("--max-message-size", "2000")
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=[
        "--route", f"*={sink.address}", "--route", f"big.example={small.address}",
        "--retry-schedule", "0.2s", "--queue-lifetime", "2s"])

    rcpts = ["defer-1@example.net", "policy-1@example.net", "never-1@example.net"]
    ids = [_send(plane, 1, [rcpt], n=n)[0] for n, rcpt in enumerate(rcpts)]
    ids.append(_send(plane, 1, ["large@big.example"], n=9, body=(b"x" * 78 + b"\r\n") * 100)[0])  # over SIZE

    def settled() -> bool:
        pool = stats_of(redis_client, SERVER, 7, [])["pool"]
        return queue_empty(plane) and pool["delivered"] == 1 and pool["bounced"] == 3

    assert wait_until(settled, timeout=60, interval=0.2), stats_of(redis_client, SERVER, 7, ["127.0.0.2"])
    finals = [[e["reply"] for e in events_of(redis_client, i) if e["final"]][0] for i in ids]
    assert finals[0].startswith("250 ")  # delivered after two 451s
    assert finals[1] == "550 5.7.1 client host blocked by policy"  # the destination's, but not the address
    assert finals[2].startswith("550 5.4.7 delivery time expired")  # made up here when the lifetime ended
    assert finals[3].startswith("552 5.3.4 message of")  # made up here: over the destination's SIZE
    assert redis_client.hlen(rediskeys.suppression_key(ACME)) == 0
    # ...so every one of them is still accepted at RCPT.
    _, refused = _send(plane, 1, [*rcpts, "large@big.example"], n=10)
    assert refused == {}
    assert stats_of(redis_client, SERVER, 7, [])["pool"]["suppressed"] == 0


def test_redis_down_at_rcpt_is_a_temporary_refusal(fresh_redis, start_dataplane):
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        publish(client, make_snapshot(SERVER, 1, [make_pool(7, [("127.0.0.2", 1)])], [make_bridge(1, 7, SECRET)]))
        client.hset(rediskeys.suppression_key(ACME), "gone@example.net", SuppressionEntry("manual", 1).encode())
        plane = start_dataplane(fresh_redis.url, SERVER)
        plane.wait_version(client, 1)
        with _session(plane, 1) as smtp:
            assert smtp.mail("sender@example.com")[0] == 250
            assert smtp.rcpt("gone@example.net")[0] == 550
            fresh_redis.kill()
            for rcpt in ("gone@example.net", "new@example.net"):
                code, text = smtp.rcpt(rcpt)
                assert (code, text.decode()) == (451, "4.3.0 The account's suppression list cannot be checked "
                                                      "right now; try again later")
            fresh_redis.start()
            assert wait_until(lambda: smtp.rcpt("new@example.net")[0] == 250, timeout=30)
            assert smtp.rcpt("gone@example.net")[0] == 550  # the list survived the restart (appendfsync always)
            smtp.rset()
        assert "Traceback" not in plane.log()
    finally:
        client.close()
