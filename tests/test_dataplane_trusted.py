"""Bridges trusted by client address: a client on a Bridge's trusted network may
send without AUTH and is bound to that Bridge; AUTH, when given, wins; any
other client still needs AUTH."""

from __future__ import annotations

import smtplib

from tests.dataplane_support import (
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queued_id,
)

SERVER = 6


def _send(port: int, source: str, login: tuple[str, str] | None = None) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        if login:
            client.login(*login)
        else:
            client.ehlo()
        code, reply = client.docmd("MAIL", "FROM:<sender@example.com>")
        if code != 250:
            return code, reply
        client.rcpt("rcpt@example.net")
        return client.data(message(1))


def test_trusted_network_binds_to_its_bridge(redis_client, redis_url, start_dataplane):
    promo = make_pool(61, [("192.0.2.61", 1)], server_id=SERVER, tag="promo")
    trans = make_pool(62, [("192.0.2.62", 1)], server_id=SERVER, tag="trans", feed_type="transactional")
    trusted = make_bridge(1, 61, "s1", trusted=["127.0.0.64/26", "10.9.0.0/16"])
    more_specific = make_bridge(2, 62, "s2", trusted=["127.0.0.77/32"])
    publish(redis_client, make_snapshot(SERVER, 1, [promo, trans], [trusted, more_specific]))
    plane = start_dataplane(redis_url, SERVER)

    code, reply = _send(plane.port, "127.0.0.70")
    assert code == 250, reply
    record = plane.record(queued_id(reply))
    assert (record.bridge_id, record.auth, record.pool) == (1, "trusted", promo.internal_name)
    assert b"with ESMTP id" in record.message  # no "A": not authenticated

    code, reply = _send(plane.port, "127.0.0.77")
    assert code == 250, reply
    assert plane.record(queued_id(reply)).bridge_id == 2

    # AUTH wins over the trusted network.
    code, reply = _send(plane.port, "127.0.0.70", login=(more_specific.username, "s2"))
    assert code == 250, reply
    record = plane.record(queued_id(reply))
    assert (record.bridge_id, record.auth, record.pool) == (2, "auth", trans.internal_name)

    # Not trusted: AUTH required.
    code, reply = _send(plane.port, "127.0.0.1")
    assert code == 530, reply
