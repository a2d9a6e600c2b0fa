"""Every refusal of the REST Bridge, over real HTTP to a real data plane: each is
`application/problem+json` with a title and detail, conforms to the served OpenAPI
description, and leaves nothing in the spool.

400 malformed, 401 (with WWW-Authenticate) for missing, unreadable or wrong
credentials, 413 for a body over the cap (refused from its Content-Length before
any of it is read, or from a chunked body as it arrives) and for a message built
over the size limit, 415, 422 (bad address, no recipient, NUL bytes, a line too
long, every recipient suppressed), 503 with Retry-After when the pool cannot send,
and 429 once a client has failed too often: counted with SMTP AUTH's, so the SMTP
Bridge then refuses that client too, and the REST Bridge refuses right credentials
the client has not proven before (`bridge_auth.ProvenCredentials`: those it proved
within the last seconds skip the throttle, `test_rest_proven_credentials`). Two
workers share the HTTP port.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import aiosmtplib

from control.contract import rediskeys
from control.contract.snapshot import IP_PAUSED
from control.contract.suppression import SuppressionEntry
from dataplane import spool
from tests.dataplane_support import make_bridge, make_pool, make_snapshot, publish
from tests.rest_support import RestClient, assert_problem, basic, bearer

SERVER = 1
SECRET = "s3cret-errors"
MAX_SIZE = 64 * 1024
LETTER = {"from": "shop@example.com", "to": "ann@example.net", "subject": "hi", "text": "hello"}


def _plain(username: str, secret: str) -> bytes:
    return base64.b64encode(f"\0{username}\0{secret}".encode())


async def _oversized_by_content_length(port: int, authorization: str) -> bytes:
    """The status line answering a request that announces a 1 GB body and sends none of it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {authorization}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n".encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    return status


async def test_every_refusal_is_a_problem_and_failures_count_with_smtp_auth(
        redis_client, redis_url, start_dataplane):
    pool = make_pool(7, [("127.0.0.2", 1)])
    bridge = make_bridge(1, 7, SECRET)
    paused = make_pool(9, [("127.0.0.4", 1, IP_PAUSED)], tag="paused")
    stuck = make_bridge(3, 9, SECRET)
    unproven = make_bridge(4, 7, SECRET)  # never used before the client is blocked
    publish(redis_client, make_snapshot(SERVER, 1, [pool, paused], [bridge, stuck, unproven]))
    entry = SuppressionEntry(reason="bounce", at_ms=int(time.time() * 1000))
    redis_client.hset(rediskeys.suppression_key(bridge.user_id), "gone@example.net", entry.encode())
    plane = start_dataplane(redis_url, SERVER, workers=2, args=[
        "--max-message-size", str(MAX_SIZE), "--auth-block-after", "3", "--auth-delay-after", "10",
        "--max-line-length", "200"])
    auth = basic(bridge.username, SECRET)

    async with aiohttp.ClientSession() as session:
        rest = RestClient(session, plane.http_port, auth)
        # 400: not JSON, not an object, a field of the wrong type
        assert_problem(await rest.call("POST", "/v1/messages", body=b"{not json", conform=False), 400)
        assert_problem(await rest.call("POST", "/v1/messages", body=b"[1, 2]", conform=False), 400)
        assert_problem(await rest.send_json({**LETTER, "text": 5}, conform=False), 400)
        assert_problem(await rest.send_json({**LETTER, "colour": "red"}, conform=False), 400)
        assert_problem(await rest.call("POST", "/v1/messages/batch", body=b'{"messages": []}', conform=False), 400)
        # 415
        assert_problem(await rest.call("POST", "/v1/messages", body=b"hello", content_type="text/plain",
                                       conform=False), 415)
        # 422: the request is read, the message cannot be sent as given
        bad_address = assert_problem(await rest.send_json({**LETTER, "to": "ann at example"}, conform=False), 422)
        assert "not an email address" in bad_address["detail"]
        assert_problem(await rest.send_json({"from": "shop@example.com", "subject": "x", "text": "y"}), 422)
        assert_problem(await rest.send_json({**LETTER, "headers": {"From": "x@example.com"}}), 422)
        assert_problem(await rest.send_json({**LETTER, "subject": "two\r\nBcc: x@example.com"}), 422)
        nul = assert_problem(await rest.send_raw(b"Subject: x\r\n\r\nbad \0 byte\r\n", "a@example.com",
                                                 ["b@example.net"]), 422)
        assert "NUL" in nul["detail"]
        long_line = b"Subject: x\r\n\r\n" + b"y" * 300 + b"\r\n"
        assert_problem(await rest.send_raw(long_line, "a@example.com", ["b@example.net"]), 422)
        assert_problem(await rest.send_raw(b"Subject: x\r\n\r\nbody\r\n", "a@example.com", []), 422)
        suppressed = assert_problem(await rest.send_json({**LETTER, "to": "gone@example.net"}), 422)
        assert "gone@example.net" in suppressed["detail"]
        partly = await rest.send_json({**LETTER, "to": ["gone@example.net", "ann@example.net"]})
        assert partly.status == 202 and partly.json["recipients"] == ["ann@example.net"]
        assert [r["address"] for r in partly.json["rejected"]] == ["gone@example.net"]
        too_many = {"messages": [LETTER] * 101}
        assert_problem(await rest.call("POST", "/v1/messages/batch", body=json.dumps(too_many).encode(),
                                       conform=False), 422)
        # 413: built over the size limit; announced over the cap; streamed over the cap
        assert_problem(await rest.send_json({**LETTER, "text": "z" * MAX_SIZE}), 413)
        assert (await _oversized_by_content_length(plane.http_port, auth)).startswith(b"HTTP/1.1 413")

        async def chunks():
            for _ in range(64):
                yield b" " * 8192

        async with session.post(rest.base + "/v1/messages", data=chunks(), headers={
                "Authorization": auth, "Content-Type": "application/json"}) as streamed:
            assert streamed.status == 413
            assert streamed.headers["Content-Type"].startswith("application/problem+json")
        # 503: the Bridge's pool has no active IP
        unavailable = await RestClient(session, plane.http_port, bearer(stuck.username, SECRET)).send_json(LETTER)
        assert_problem(unavailable, 503)
        assert int(unavailable.headers["Retry-After"]) > 0
        # 404 for what is not a route at all
        assert_problem(await rest.call("GET", "/v2/anything", conform=False), 404)
        # nothing of the above reached the spool but the one partly suppressed message
        assert len(spool.queued_ids(plane.spool_dir)) == 1

        # 401: missing, unreadable, wrong
        missing = await rest.call("POST", "/v1/messages", body=json.dumps(LETTER).encode(), authorization=None,
                                  conform=False)
        assert_problem(missing, 401)
        assert missing.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert_problem(await rest.send_json(LETTER, authorization="Digest abc", conform=False), 401)
        for _ in range(2):
            wrong = await rest.send_json(LETTER, authorization=basic(bridge.username, "wrong"))
            assert_problem(wrong, 401)
        # 429: the third failure blocks the client, right credentials (not proven before) or not ...
        assert_problem(await rest.send_json(LETTER, authorization=bearer(bridge.username, "wrong")), 429)
        blocked = await rest.send_json(LETTER, authorization=basic(unproven.username, SECRET))
        assert_problem(blocked, 429)
        assert int(blocked.headers["Retry-After"]) > 0
        # ... and the SMTP Bridge, sharing the count, refuses it as well
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=plane.port, start_tls=False)
        await smtp.connect()
        try:
            await smtp.ehlo()
            reply = await smtp.execute_command(b"AUTH", b"PLAIN", _plain(bridge.username, SECRET))
            assert reply.code == 421, reply
        finally:
            smtp.close()
