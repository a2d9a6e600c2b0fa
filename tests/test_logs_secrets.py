"""A Bridge's secret never reaches the data plane's log, even at debug level, in text or
JSON: sent with AUTH PLAIN and AUTH LOGIN (base64 on the wire), right and wrong, and
every line of the JSON log is one object."""

from __future__ import annotations

import base64
import json
import smtplib

import pytest

from tests.dataplane_support import make_bridge, make_pool, make_snapshot, message, publish

pytestmark = pytest.mark.slow

SECRET = "br1dge-s3cret-that-must-never-be-logged"


def _forms(secret: str, username: str) -> list[str]:
    """The secret as it can appear: itself, and base64 of what AUTH PLAIN and LOGIN send."""
    return [secret, base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"\0{username}\0{secret}".encode()).decode()]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_form_of_the_secret_is_logged_at_debug(redis_client, redis_url, start_dataplane, log_format):
    bridge = make_bridge(1, 7, SECRET)
    publish(redis_client, make_snapshot(1, 1, [make_pool(7, [("127.0.0.2", 1)])], [bridge]))
    plane = start_dataplane(redis_url, 1, args=["--log-level", "debug", "--log-format", log_format])
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP(plane.host, plane.port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.user, smtp.password = bridge.username, SECRET
            smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"), initial_response_ok=True)
            smtp.sendmail("sender@example.com", ["rcpt@example.net"], message(1))
        with smtplib.SMTP(plane.host, plane.port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.user, smtp.password = bridge.username, SECRET + "x"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"), initial_response_ok=True)
    assert plane.stop() == 0
    log = plane.log()
    assert "AUTH" in log  # debug lines of the sessions are there
    for form in _forms(SECRET, bridge.username) + _forms(SECRET + "x", bridge.username):
        assert form not in log, form
    if log_format == "json":
        for line in log.splitlines():
            if line and not line.startswith("dataplane ready"):
                assert {"ts", "level", "logger", "msg"} <= set(json.loads(line))
