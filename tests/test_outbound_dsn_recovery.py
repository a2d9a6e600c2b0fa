"""A crash between a bounce and its DSN loses no DSN: the bounce is written to the
spool record owing the DSN, so a data plane that finds such a record (here put
in place as a crash would leave it) sends the DSN first, then finishes the
message: removes it when every recipient is final, delivers the rest otherwise."""

from __future__ import annotations

import time

from dataplane import spool
from tests.dataplane_support import (
    is_notice,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queue_empty,
)
from tests.support import wait_until

SERVER = 1
IP = "127.0.0.2"
SENDER = "owed@senders.example"


def _crashed_record(message_id: str, rcpts: tuple[str, ...], attempts: tuple[dict, ...]) -> spool.SpoolRecord:
    return spool.SpoolRecord(
        id=message_id, received_ms=int(time.time() * 1000), server_id=SERVER, snapshot_version=1, worker="h:1:0",
        client_address="127.0.0.1", client_helo="client.example", tls=False, auth="auth", bridge_id=1,
        bridge_username="br-test1", user_id=3, smtp_id=7, pool="promo-3-1-pool-7", ip=IP,
        ip_hostname="out-127-0-0-2.example", feed_type="newsletter", zone="US-1", mail_from=SENDER,
        rcpt_tos=rcpts, mail_options=(), smtputf8=False, message=message(1), attempts=attempts,
        bounce_domain="mta-test.example",
    )


def _bounce(rcpt: str) -> dict:
    return {"at_ms": int(time.time() * 1000), "rcpt": rcpt, "outcome": "bounced", "code": 550,
            "text": "5.1.1 no such user", "ip": IP, "mx": "127.0.0.1:2626", "attempt": 1, "dsn": spool.DSN_OWED}


def test_a_dsn_owed_at_a_crash_is_sent_after_the_restart(redis_client, redis_url, start_dataplane, start_sink,
                                                         tmp_path):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [(IP, 1)])], [make_bridge(1, 7, "s3cret")]))
    data_dir = tmp_path / "dp"
    root = data_dir / "spool" / f"server-{SERVER}"
    spool.prepare(root)
    writer = spool.Spool(root)
    finished = _crashed_record(writer.new_id(), ("gone@example.net",), (_bounce("gone@example.net"),))
    half = _crashed_record(writer.new_id(), ("gone2@example.net", "later@example.net"),
                           (_bounce("gone2@example.net"),))
    for record in (finished, half):
        spool.record_path(root, record.id).write_bytes(b"".join(spool.encode_record(record)))

    sink = start_sink()
    plane = start_dataplane(redis_url, SERVER, data_dir=data_dir, delivery=True, args=["--route", f"*={sink.address}"])
    assert wait_until(lambda: queue_empty(plane) and len(sink.log()) == 3, timeout=30), (sink.log(), plane.log())
    notices = [entry for entry in sink.log() if is_notice(entry)]
    assert sorted(n["rcpts"][0] for n in notices) == [SENDER, SENDER]  # one DSN per message, once
    others = [entry["rcpts"] for entry in sink.log() if not is_notice(entry)]
    assert others == [["later@example.net"]]  # the bounced recipients are not tried again
    assert "Traceback" not in plane.log()
