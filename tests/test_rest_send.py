"""End to end through the REST Bridge: JSON, raw and batch sends over real HTTP
(aiohttp's client) to a real data plane that delivers to a real `poolmta sink`.

What arrives carries the Bridge's stamped headers and the attachments byte for
byte, Bcc recipients get the message without a Bcc header, the spool record is
the one the SMTP Bridge writes (Received `with HTTP`, the pool's source IP),
`sent` is counted, the status lookup follows each recipient to `delivered`, and a
Bridge of another account gets 404 for it. Every request and response conforms to
the served OpenAPI description.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import os

import aiohttp

from tests.dataplane_support import make_bridge, make_pool, make_snapshot, publish, stats_of
from tests.rest_support import RestClient, assert_problem, basic, bearer
from tests.support import wait_until

SERVER = 1
SECRET = "s3cret-rest"
OTHER_SECRET = "s3cret-other"
PDF = os.urandom(3000)  # binary content: base64 must bring it back byte for byte


def _stored(store) -> dict[str, email.message.EmailMessage]:
    """The sink's stored messages by Subject."""
    found = {}
    for path in store.glob("*.eml"):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found[str(parsed["Subject"])] = parsed
    return found


async def test_json_raw_and_batch_sends_arrive_stamped_and_their_status_is_per_recipient(
        redis_client, redis_url, start_dataplane, start_sink, tmp_path):
    pool = make_pool(7, [("127.0.0.2", 1)], headers=(("X-Campaign-Pool", "spring"),))
    bridge = make_bridge(1, 7, SECRET)
    other_pool = make_pool(8, [("127.0.0.3", 1)], user_id=4, tag="other")
    other = make_bridge(2, 8, OTHER_SECRET, user_id=4)
    publish(redis_client, make_snapshot(SERVER, 1, [pool, other_pool], [bridge, other]))
    store = tmp_path / "store"
    sink = start_sink("--store", str(store))
    plane = start_dataplane(redis_url, SERVER, delivery=True,
                            args=["--route", f"*={sink.address}", "--retry-schedule", "0.2s"])

    async with aiohttp.ClientSession() as session:
        rest = RestClient(session, plane.http_port, basic(bridge.username, SECRET))
        sent = await rest.send_json({
            "from": "Shop <shop@example.com>", "to": ["ann@example.net"], "cc": "bob@example.net",
            "bcc": ["hidden@example.org"], "reply_to": "help@example.com", "subject": "json send",
            "text": "Hello Ann", "html": "<p>Hello <b>Ann</b></p>", "headers": {"X-Order": "1234"},
            "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf",
                             "content": base64.b64encode(PDF).decode()}],
        })
        assert sent.status == 202, sent.body
        accepted = sent.json
        assert accepted["recipients"] == ["ann@example.net", "bob@example.net", "hidden@example.org"]
        assert accepted["rejected"] == []

        raw = (b"From: shop@example.com\r\nTo: carl@example.net\r\nSubject: raw send\r\n"
               b"Message-ID: <raw-1@example.com>\r\n\r\nRaw body.\r\n")
        raw_sent = await RestClient(session, plane.http_port, bearer(bridge.username, SECRET)).send_raw(
            raw, "bounces@example.com", ["carl@example.net"])
        assert raw_sent.status == 202, raw_sent.body

        batch = await rest.call("POST", "/v1/messages/batch", body=json.dumps({"messages": [
            {"from": "shop@example.com", "to": "dan@example.net", "subject": "batch 1", "text": "one"},
            {"from": "shop@example.com", "to": "not an address", "subject": "batch 2", "text": "two"},
            {"from": "shop@example.com", "to": "eve@example.net", "subject": "batch 3", "text": "three"},
        ]}).encode())
        assert batch.status == 207, batch.body
        results = batch.json["results"]
        assert [r["status"] for r in results] == [202, 422, 202]
        assert "not an email address" in results[1]["problem"]["detail"]

        subjects = {"json send", "raw send", "batch 1", "batch 3"}
        assert wait_until(lambda: subjects <= set(_stored(store)), 30), sink.counts()
        stored = _stored(store)
        message = stored["json send"]
        assert message["Bcc"] is None and message["To"] == "ann@example.net" and message["X-Order"] == "1234"
        assert message["x-virtual-mta"] == pool.internal_name and message["X-Campaign-Pool"] == "spring"
        assert "with HTTP id " + accepted["id"] in " ".join(str(v) for v in message.get_all("Received"))
        attachment = next(message.iter_attachments())
        assert attachment.get_filename() == "invoice.pdf" and attachment.get_content() == PDF
        assert message.get_body(("html",)).get_content().strip() == "<p>Hello <b>Ann</b></p>"
        assert stored["raw send"]["Message-ID"] == "<raw-1@example.com>"

        for _ in range(300):
            status = await rest.status(accepted["id"])
            if status.status == 200 and all(r["status"] == "delivered" for r in status.json["recipients"]):
                break
            await asyncio.sleep(0.1)
        assert status.status == 200, status.body
        assert [r["address"] for r in status.json["recipients"]] == accepted["recipients"]
        assert all(r["status"] == "delivered" and r["final"] and r["reply"].startswith("250")
                   for r in status.json["recipients"]), status.json

        stranger = RestClient(session, plane.http_port, basic(other.username, OTHER_SECRET))
        assert_problem(await stranger.status(accepted["id"]), 404)
        assert_problem(await rest.status("0" * 26), 404)

    # sent counts recipients, as for SMTP: 3 (json) + 1 (raw) + 2 (the batch's accepted two)
    assert wait_until(lambda: stats_of(redis_client, SERVER, 7, [])["pool"]["sent"] == 6, 10)

