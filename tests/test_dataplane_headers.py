"""Stamped headers: x-virtual-mta, x-feedtype, x-zone, x-serverid and the pool's
custom headers are present once each with the right values, even when the client
sent forged (and folded, and oddly cased) copies; the client's other bytes are
kept unchanged below them; a Received trace header comes first."""

from __future__ import annotations

import smtplib

from tests.dataplane_support import (
    ZONE,
    headers_of,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queued_id,
    stamped_prefix_and_original,
)

SERVER = 4

FORGED = (
    b"X-Virtual-MTA: evil-pool\r\n"
    b"x-feedtype: forged\r\n"
    b"X-ZONE : EU-9\r\n"
    b"x-serverid: 99\r\n"
    b"\tfolded continuation of the forged x-serverid\r\n"
    b"X-Campaign: client-set\r\n"
)


def _send(port: int, username: str, raw: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.login(username, "s3cret")
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        code, reply = client.data(raw)
        assert code == 250, reply
        return queued_id(reply)


def test_stamped_headers_replace_forged_ones(redis_client, redis_url, start_dataplane):
    pool = make_pool(21, [("192.0.2.21", 1)], server_id=SERVER, feed_type="newsletter",
                     headers=[("X-Campaign", "spring-sale"), ("X-Tenant", "acme")])
    plain = make_bridge(1, 21, "s3cret")
    transactional = make_bridge(2, 21, "s3cret", feed_type="transactional")
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [plain, transactional]))
    plane = start_dataplane(redis_url, SERVER)

    original = message(1, extra_headers=FORGED)
    record = plane.record(_send(plane.port, plain.username, original))
    parsed = headers_of(record.message)
    expected = {
        "x-virtual-mta": pool.internal_name,
        "x-feedtype": "newsletter",
        "x-zone": ZONE,
        "x-serverid": str(SERVER),
        "x-campaign": "spring-sale",
        "x-tenant": "acme",
    }
    for name, value in expected.items():
        assert parsed.get_all(name) == [value], name
    assert b"evil-pool" not in record.message and b"folded continuation" not in record.message
    assert b"client-set" not in record.message
    assert record.message.startswith(b"Received: from ")
    assert (record.pool, record.feed_type, record.zone) == (pool.internal_name, "newsletter", ZONE)

    # Without forged headers the client's message follows the stamped block byte for byte.
    original = message(2)
    record = plane.record(_send(plane.port, transactional.username, original))
    prefix = stamped_prefix_and_original(record, original)
    lines = prefix.split(b"\r\n")
    assert lines[0].startswith(b"Received: from ")
    assert lines[3:] == [
        f"x-virtual-mta: {pool.internal_name}".encode(),
        b"x-feedtype: transactional",  # the Bridge's feed type wins over the pool's
        f"x-zone: {ZONE}".encode(),
        f"x-serverid: {SERVER}".encode(),
        b"X-Campaign: spring-sale",
        b"X-Tenant: acme",
        b"",
    ]
    assert record.feed_type == "transactional"


def test_bare_lf_message_is_stamped_with_its_own_line_ending(redis_client, redis_url, start_dataplane):
    pool = make_pool(21, [("192.0.2.21", 1)], server_id=SERVER)
    bridge = make_bridge(1, 21, "s3cret")
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    plane = start_dataplane(redis_url, SERVER)

    # Lines end in bare LF; the last one in CRLF, since only CRLF "." CRLF ends DATA.
    original = b"From: a@example.com\nx-zone: forged\nSubject: bare LF\n\nbody line\r\n"
    with smtplib.SMTP("127.0.0.1", plane.port, timeout=10) as client:
        client.login(bridge.username, "s3cret")
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        # smtplib would rewrite bare LFs to CRLF: send DATA by hand.
        code, _ = client.docmd("DATA")
        assert code == 354
        client.send(original + b".\r\n")
        code, reply = client.getreply()
        assert code == 250, reply
    record = plane.record(queued_id(reply))
    header_block = record.message.split(b"\n\n", 1)[0]
    assert b"\r" not in header_block, "stamped lines use the message's own (bare LF) line ending"
    assert headers_of(record.message).get_all("x-zone") == [ZONE]
    assert record.message.endswith(b"From: a@example.com\nSubject: bare LF\n\nbody line\r\n")
