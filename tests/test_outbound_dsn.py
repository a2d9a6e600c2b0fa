"""DSNs to senders, in real processes: a recipient the sink bounces makes its
sender get an RFC 3464 DSN at the sink, from <> and the message's own source IP,
one per message however many of its recipients bounced; it parses with the
project's report parser and with the stdlib. NOTIFY=NEVER, NOTIFY=SUCCESS alone,
the null sender and a Bridge with DSNs switched off get none; RET=HDRS returns
the headers, RET=FULL the whole message. DSNs are counted apart (dsn_*)."""

from __future__ import annotations

import email
import email.policy
import smtplib
from dataclasses import replace

from control.contract import rediskeys
from dataplane.reports import parse_report
from tests.dataplane_support import (
    events_of,
    is_notice,
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
IPS = ["127.0.0.2", "127.0.0.3"]

# sender, recipients with their RCPT parameters, MAIL parameters, bridge; whether a DSN is due
PLAN = [
    ("plain@senders.example", [("bounce-a@example.net", [])], [], 1, True),
    ("full@senders.example", [("bounce-b1@example.net", ["ORCPT=rfc822;List+2Bb1@example.net"]),
                              ("fine-b@example.net", []), ("bounce-b2@example.net", ["NOTIFY=FAILURE"])],
     ["RET=FULL", "ENVID=spring-42"], 1, True),
    ("hdrs@senders.example", [("bounce-c@example.net", ["NOTIFY=DELAY,FAILURE"])], ["RET=HDRS"], 1, True),
    ("never@senders.example", [("bounce-d@example.net", ["NOTIFY=NEVER"])], [], 1, False),
    ("success@senders.example", [("bounce-e@example.net", ["NOTIFY=SUCCESS"])], [], 1, False),
    ("", [("bounce-f@example.net", [])], [], 1, False),
    ("switched-off@senders.example", [("bounce-g@example.net", [])], [], 2, False),
]


def _dsn_counts(client) -> tuple[int, int]:
    """The pool's (dsn_sent, dsn_delivered)."""
    stats = client.hgetall(rediskeys.pool_stats_key(SERVER, 7))
    return int(stats.get(b"dsn_sent", 0)), int(stats.get(b"dsn_delivered", 0))


def _send(port: int, username: str, n: int, sender: str, rcpts, mail_params) -> str:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        client.ehlo("client.example")
        client.login(username, SECRET)
        assert client.mail(sender, mail_params)[0] == 250
        for rcpt, params in rcpts:
            assert client.rcpt(rcpt, params)[0] == 250
        code, reply = client.data(message(n))
        assert code == 250, reply
        return queued_id(reply)
    finally:
        client.quit()


def test_senders_get_one_dsn_per_message_for_its_bounced_recipients(redis_client, redis_url, start_dataplane,
                                                                     start_sink):
    pool = make_pool(7, [(ip, 1) for ip in IPS])
    bridges = [make_bridge(1, 7, SECRET), replace(make_bridge(2, 7, SECRET), send_dsns=False)]
    publish(redis_client, make_snapshot(SERVER, 1, [pool], bridges))
    sink = start_sink()
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=["--route", f"*={sink.address}"])

    ids = {sender: _send(plane.port, bridges[bridge - 1].username, n, sender, rcpts, params)
           for n, (sender, rcpts, params, bridge, _) in enumerate(PLAN)}
    due = [sender for sender, *_, dsn in PLAN if dsn]
    bounced = sum(1 for _, rcpts, *_ in PLAN for rcpt, _ in rcpts if rcpt.startswith("bounce"))

    def settled() -> bool:
        return (queue_empty(plane) and stats_of(redis_client, SERVER, 7, [])["pool"]["bounced"] == bounced
                and sum(1 for entry in sink.log() if is_notice(entry)) == len(due))

    assert wait_until(settled, timeout=60, interval=0.2), (sink.counts(), plane.log())
    notices = {entry["rcpts"][0]: entry for entry in sink.log() if is_notice(entry)}
    assert sorted(notices) == sorted(due)  # one each, to the envelope sender, none to the others

    for sender in due:
        entry = notices[sender]
        assert entry["mail_from"] == "<>" and entry["x-virtual-mta"] == pool.internal_name
        events = events_of(redis_client, ids[sender])
        assert entry["peer"] == events[-1]["ip"]  # from the message's own source IP
    counts = sink.wait_counts(lambda c: c.get("notices") == len(due), f"{len(due)} notices")
    assert sum(counts["peers"][ip]["notices"] for ip in IPS) == len(due)
    assert wait_until(lambda: _dsn_counts(redis_client) == (len(due), len(due)), timeout=10), _dsn_counts(redis_client)


def test_the_dsn_bytes_parse_with_the_project_parser_and_the_stdlib(redis_client, redis_url, start_dataplane,
                                                                    start_sink, tmp_path):
    pool = make_pool(7, [(IPS[0], 1)])
    bridge = make_bridge(1, 7, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    store = tmp_path / "received"
    sink = start_sink("--store", str(store))
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=["--route", f"*={sink.address}"])
    for n, (sender, rcpts, params, _, _) in enumerate(PLAN[:3]):
        _send(plane.port, bridge.username, n, sender, rcpts, params)

    assert wait_until(lambda: queue_empty(plane) and sink.counts().get("notices") == 3, timeout=60), sink.counts()
    dsns = {}
    for entry in sink.log():
        if is_notice(entry):
            dsns[entry["rcpts"][0]] = (store / f"{entry['n']}.eml").read_bytes()

    # The project's parser: a DSN, the bounced recipients, permanent, the sink's 550 kept.
    for sender, expected in [("plain@senders.example", ["bounce-a@example.net"]),
                             ("full@senders.example", ["List+b1@example.net", "bounce-b2@example.net"]),
                             ("hdrs@senders.example", ["bounce-c@example.net"])]:
        report = parse_report(dsns[sender])
        assert report.kind == "dsn", report.problem
        assert [r.address for r in report.recipients] == expected
        assert all(r.permanent and r.status == "5.1.1" and "550" in r.diagnostic for r in report.recipients)

    # The stdlib: multipart/report with a delivery-status part and the returned message.
    def parts(sender: str):
        parsed = email.message_from_bytes(dsns[sender], policy=email.policy.default)
        assert parsed.get_content_type() == "multipart/report" and parsed["Auto-Submitted"] == "auto-replied"
        assert parsed.get_param("report-type") == "delivery-status"
        assert parsed["To"].addresses[0].addr_spec == sender
        return parsed.get_payload()

    _, status, returned = parts("full@senders.example")
    per_message, *per_rcpt = status.get_payload()
    assert per_message["Original-Envelope-Id"] == "spring-42"
    assert [b["Final-Recipient"] for b in per_rcpt] == ["rfc822; bounce-b1@example.net", "rfc822; bounce-b2@example.net"]
    assert [b["Action"] for b in per_rcpt] == ["failed", "failed"]
    assert per_rcpt[0]["Original-Recipient"] == "rfc822; List+b1@example.net"
    assert returned.get_content_type() == "message/rfc822"  # RET=FULL
    assert b"Message number 1." in returned.get_payload()[0].as_bytes()
    for sender in ("hdrs@senders.example", "plain@senders.example"):  # RET=HDRS, and no RET: headers only
        _, _, returned = parts(sender)
        assert returned.get_content_type() == "text/rfc822-headers"
        assert "Message number" not in returned.get_content()

    # Counted apart: the Pool's bounced are the senders' recipients, the DSNs are dsn_*.
    assert wait_until(lambda: _dsn_counts(redis_client) == (3, 3), timeout=10), _dsn_counts(redis_client)
    pool_stats = stats_of(redis_client, SERVER, 7, [])["pool"]
    assert (pool_stats["sent"], pool_stats["delivered"], pool_stats["bounced"]) == (5, 1, 4)
