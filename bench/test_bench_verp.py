"""Benchmark VERP return paths and DSN building: what the feedback loop adds per recipient.

Measured:

- `verp encode`: `VerpCodec.encode` of one recipient's bounce address, once per
  recipient of every outgoing message (each recipient gets its own envelope sender);
- `verp decode`: `VerpCodec.decode` of one, once per bounce the inbound listener takes;
- in both groups `hmac`: `hmac.digest` of the same MAC input, the cryptographic floor
  (what is left is base32, the checks and the string building);
- `dsn build`: `build_dsn` for one failed recipient of a 20 KB message, headers
  returned and whole message returned (RET=FULL). Off the hot path: a DSN is built
  once per bounced message that asks for one.

Fixed inputs: one keyring key, one message id, one domain, one 20 KB message.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dataplane.dsn import Action, DsnRecipient, build_dsn
from dataplane.dsn_request import MailDsnParams, Ret
from dataplane.verp import VerpCodec
from dataplane.verp_keyring import VerpKeyring

MESSAGE_ID = "019b7b4f5c00a1b2c3d4000001"
DOMAIN = "mta1.example.net"
ARRIVED = datetime(2026, 1, 1, 20, 45, 57, tzinfo=timezone.utc)
RECIPIENT = DsnRecipient("dana.reader@example.org", Action.FAILED, "5.1.1", remote_mta="mx1.example.org",
                         diagnostic="550 5.1.1 <dana.reader@example.org>: Recipient address rejected: User unknown",
                         last_attempt=ARRIVED)
MESSAGE = (
    b"From: Example News <news@news.example.com>\r\nTo: Dana Reader <dana.reader@example.org>\r\n"
    b"Subject: Summer offers\r\nDate: Thu, 01 Jan 2026 20:45:50 +0000\r\nMessage-ID: <bench@news.example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + b"account order shipping delivery invoice update welcome offer week new your\r\n" * 260
)


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> VerpCodec:
    keyring = VerpKeyring.load_or_create(Path(tmp_path_factory.mktemp("verp")) / "verp.keys")
    return VerpCodec(keyring, clock=lambda: int(MESSAGE_ID[:12], 16) / 1000.0)


def mac_floor(secret: bytes) -> bytes:
    return hmac.digest(secret, b"poolmta-verp-1\x00" + bytes(16) + b"\x00" + DOMAIN.encode(), "sha256")


@pytest.mark.parametrize("variant", ["verp", "hmac"])
@pytest.mark.parametrize("operation", ["encode", "decode"])
def test_verp(benchmark, measure, codec, operation, variant):
    benchmark.group = f"verp {operation}"
    benchmark.extra_info["variant"] = variant
    if variant == "hmac":
        assert len(measure(mac_floor, codec.keyring.current.secret)) == 32
    elif operation == "encode":
        address = measure(codec.encode, MESSAGE_ID, 7, DOMAIN)
        assert address.startswith("b-") and address.endswith("@" + DOMAIN) and len(address) == 42 + 1 + len(DOMAIN)
    else:
        token = measure(codec.decode, codec.encode(MESSAGE_ID, 7, DOMAIN))
        assert (token.message_id, token.rcpt_index) == (MESSAGE_ID, 7)


@pytest.mark.parametrize("ret", [Ret.HDRS, Ret.FULL])
def test_dsn_build(benchmark, measure, ret):
    benchmark.group = "dsn build 20 KB"
    benchmark.extra_info["variant"] = ret.value.lower()

    def build() -> bytes:
        return build_dsn(reporting_mta=DOMAIN, sender="news@news.example.com", recipients=[RECIPIENT],
                         original=MESSAGE, arrival_date=ARRIVED, mail_params=MailDsnParams(ret=ret), now=ARRIVED)

    dsn = measure(build)
    assert (MESSAGE in dsn) is (ret is Ret.FULL) and b"Final-Recipient: rfc822; dana.reader@example.org" in dsn
