"""SMTP AUTH of Bridges against a real worker: PLAIN and LOGIN, bad, revoked and
rotated credentials, STARTTLS then AUTH, AUTH refused before STARTTLS for a
client outside the plaintext-AUTH networks, and failed-AUTH throttling."""

from __future__ import annotations

import base64
import dataclasses
import smtplib
import ssl

import aiosmtplib
import pytest

from tests.dataplane_support import (
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    queued_id,
)

SERVER = 1
SECRET = "correct-horse-battery-staple"


def _routes():
    pool = make_pool(7, [("192.0.2.1", 1)])
    bridge = make_bridge(1, 7, SECRET)
    return pool, bridge


def _plain(username: str, secret: str) -> str:
    return base64.b64encode(f"\0{username}\0{secret}".encode()).decode()


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _send(port: int, username: str, secret: str, n: int = 1, host: str = "127.0.0.1",
          source: str | None = None) -> str:
    source_address = (source, 0) if source else None
    with smtplib.SMTP(host, port, timeout=10, source_address=source_address) as client:
        client.login(username, secret)
        return _send_on(client, n)


def _send_on(client: smtplib.SMTP, n: int) -> str:
    client.mail("sender@example.com")
    client.rcpt("rcpt@example.net")
    code, reply = client.data(message(n))
    assert code == 250, reply
    return queued_id(reply)


def test_auth_plain_and_login_good_and_bad(redis_client, redis_url, start_dataplane):
    pool, bridge = _routes()
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    plane = start_dataplane(redis_url, SERVER)

    with smtplib.SMTP("127.0.0.1", plane.port, timeout=10) as client:
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        client.user, client.password = bridge.username, SECRET
        code, _ = client.auth("PLAIN", client.auth_plain)
        assert code == 235
        message_id = _send_on(client, 1)
    record = plane.record(message_id)
    assert (record.bridge_id, record.auth, record.bridge_username) == (1, "auth", bridge.username)

    with smtplib.SMTP("127.0.0.1", plane.port, timeout=10) as client:
        client.ehlo()
        client.user, client.password = bridge.username, SECRET
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        _send_on(client, 2)

    for username, secret in ((bridge.username, "wrong"), ("br-nobody", SECRET), (bridge.username, "")):
        with smtplib.SMTP("127.0.0.1", plane.port, timeout=10) as client:
            client.ehlo()
            code, reply = client.docmd("AUTH", "PLAIN " + _plain(username, secret))
            assert code == 535, reply
            code, reply = client.docmd("MAIL", "FROM:<sender@example.com>")
            assert code == 530, "MAIL after a failed AUTH must still need AUTH"


async def test_auth_with_aiosmtplib_and_starttls(redis_client, redis_url, start_dataplane):
    pool, bridge = _routes()
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    plane = start_dataplane(redis_url, SERVER)

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=plane.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.starttls(tls_context=_no_verify())
        await client.ehlo()
        assert "auth" in client.esmtp_extensions
        await client.login(bridge.username, SECRET)
        errors, reply = await client.sendmail("sender@example.com", ["rcpt@example.net"], message(1))
        assert not errors
        record = plane.record(queued_id(reply))
    finally:
        await client.quit()
    assert record.tls is True
    assert b"with ESMTPSA id " + record.id.encode() in record.message

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=plane.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
            await client.login(bridge.username, "not-the-secret")
        assert failed.value.code == 535
    finally:
        await client.quit()


def test_revoked_and_rotated_bridges_stop_authenticating(redis_client, redis_url, start_dataplane):
    pool, bridge = _routes()
    other = make_bridge(2, 7, "other-secret")
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge, other]))
    plane = start_dataplane(redis_url, SERVER)
    _send(plane.port, bridge.username, SECRET)

    # An open session authenticated before the rotation finishes its current message,
    # and may not start another.
    open_session = smtplib.SMTP("127.0.0.1", plane.port, timeout=10)
    open_session.login(bridge.username, SECRET)
    open_session.mail("sender@example.com")
    open_session.rcpt("rcpt@example.net")

    rotated = dataclasses.replace(bridge, secret_hash=make_bridge(1, 7, "new-secret").secret_hash)
    publish(redis_client, make_snapshot(SERVER, 2, [pool], [rotated, other]))
    plane.wait_version(redis_client, 2)

    code, reply = open_session.data(message(2))
    assert code == 250, reply
    code, reply = open_session.docmd("MAIL", "FROM:<sender@example.com>")
    assert code == 530 and b"revoked or rotated" in reply
    open_session.quit()

    with pytest.raises(smtplib.SMTPAuthenticationError):
        _send(plane.port, bridge.username, SECRET)
    _send(plane.port, bridge.username, "new-secret")

    publish(redis_client, make_snapshot(SERVER, 3, [pool], [other]))  # bridge 1 revoked
    plane.wait_version(redis_client, 3)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        _send(plane.port, bridge.username, "new-secret")
    _send(plane.port, other.username, "other-secret")


def test_auth_needs_starttls_outside_plaintext_networks(redis_client, redis_url, start_dataplane):
    """A listener on 127.0.0.9 whose plaintext-AUTH networks exclude the client stands
    for a non-loopback listener: AUTH is neither advertised nor accepted before STARTTLS."""
    pool, bridge = _routes()
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    plane = start_dataplane(redis_url, SERVER, listen="127.0.0.9:0",
                            args=["--insecure-auth-networks", "127.0.0.1/32"])

    with smtplib.SMTP("127.0.0.9", plane.port, timeout=10, source_address=("127.0.0.9", 0)) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        code, reply = client.docmd("AUTH", "PLAIN " + _plain(bridge.username, SECRET))
        assert code == 538, reply
        code, _ = client.docmd("MAIL", "FROM:<sender@example.com>")
        assert code == 530

        client.starttls(context=_no_verify())
        client.ehlo()
        assert client.has_extn("auth")
        client.login(bridge.username, SECRET)
        message_id = _send_on(client, 1)
    assert plane.record(message_id).tls is True

    # The same listener still lets a client from the configured network AUTH in plain text.
    message_id = _send(plane.port, bridge.username, SECRET, host="127.0.0.9", source="127.0.0.1")
    assert plane.record(message_id).client_address == "127.0.0.1"


def test_failed_auth_is_throttled_per_client_address(redis_client, redis_url, start_dataplane):
    pool, bridge = _routes()
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    plane = start_dataplane(redis_url, SERVER, args=["--auth-delay-after", "2", "--auth-block-after", "4"])
    bad = "PLAIN " + _plain(bridge.username, "wrong")

    client = smtplib.SMTP("127.0.0.1", plane.port, timeout=30, source_address=("127.0.0.3", 0))
    client.ehlo()
    for _ in range(3):  # the 2nd and 3rd are answered late
        code, _ = client.docmd("AUTH", bad)
        assert code == 535
    code, reply = client.docmd("AUTH", bad)
    assert code == 421 and b"Too many failed AUTH" in reply
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()

    # Good credentials from the blocked address are refused too (421 whatever the credentials).
    with smtplib.SMTP("127.0.0.1", plane.port, timeout=10, source_address=("127.0.0.3", 0)) as client:
        client.ehlo()
        code, _ = client.docmd("AUTH", "PLAIN " + _plain(bridge.username, SECRET))
        assert code == 421
    # Another address is not affected.
    with smtplib.SMTP("127.0.0.1", plane.port, timeout=10, source_address=("127.0.0.4", 0)) as client:
        client.login(bridge.username, SECRET)
        _send_on(client, 1)
