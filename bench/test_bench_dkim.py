"""Benchmark DKIM signing (issue 13) against the acceptance work on the same message.

Measured, on the realistic outgoing messages of `test_bench_headers` at 5 KB and
50 KB (fixed seed; 24 and 30 header fields, a client's DKIM-Signature among them):

- `dkim sign <size>`: `dataplane.dkim_signer.sign` with an `ed25519` key and an
  `rsa-2048` key (canonicalisation on the compiled twins, hashing, the private-key
  operation, the folded field), against `accept`: what the acceptance fast path
  does to every message in CPU - stamping the attribution headers (`inject`) and
  encoding the spool record (`encode_record`). `accept` leaves out the SMTP session,
  the spool write and its fsync, which cost far more (bench/LOAD.md: 2.3-3.9 ms of
  CPU per accepted message with delivery off), so the ratio to it is the strictest
  reading of the goal. Goals: ed25519 / accept <= 0.10, rsa-2048 / accept <= 0.30.
- `relaxed_body <size>`: the body canonicalisation alone, compiled (`c`) and pure
  (`py`) twin.
"""

from __future__ import annotations

from functools import partial

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from test_bench_headers import STAMP, build_message

from _fastpath import _dkim_c, _dkim_py, _headers_c
from dataplane.dkim_signer import DkimKey, sign
from dataplane.spool.record import SpoolRecord, encode_record

# size label -> (target bytes, header fields); the seeds are test_bench_headers'.
MESSAGES = {"5 KB": (5_000, 24), "50 KB": (50_000, 30)}


@pytest.fixture(scope="module", params=MESSAGES, ids=lambda label: label.replace(" ", ""))
def message(request):
    target, field_count = MESSAGES[request.param]
    return request.param, build_message(target, field_count, seed=5322 + target)


@pytest.fixture(scope="module")
def keys() -> dict[str, DkimKey]:
    return {
        "ed25519": DkimKey.from_private_key("news.example.com", "ed1", ed25519.Ed25519PrivateKey.generate()),
        "rsa-2048": DkimKey.from_private_key(
            "news.example.com", "rsa1", rsa.generate_private_key(65537, 2048)
        ),
    }


def accept(raw: bytes) -> list[bytes]:
    """The acceptance fast path's CPU work on one message: stamp, then encode the record."""
    stamped = _headers_c.inject(raw, STAMP)
    record = SpoolRecord(
        id="0193a1b2c3d4e5f60718293a4b5c6d7e",
        received_ms=1_717_171_717_000,
        server_id=3,
        snapshot_version=42,
        worker="w1",
        client_address="203.0.113.7",
        client_helo="app1.example.com",
        tls=True,
        auth="auth",
        bridge_id=7,
        bridge_username="news",
        user_id=1042,
        smtp_id=7,
        pool="news-1042-3-pool-7781",
        ip="198.51.100.10",
        ip_hostname="mta10.example.net",
        feed_type="marketing",
        zone="EU-1",
        mail_from="bounce-7781-42@news.example.com",
        rcpt_tos=("dana.reader@example.org",),
        mail_options=("BODY=8BITMIME",),
        smtputf8=False,
        message=stamped,
    )
    return encode_record(record)


@pytest.mark.parametrize("variant", ["accept", "ed25519", "rsa-2048"])
def test_sign(benchmark, measure, message, keys, variant):
    label, raw = message
    benchmark.group = f"dkim sign {label}"
    benchmark.extra_info["variant"] = variant
    benchmark.extra_info["bytes"] = len(raw)
    if variant == "accept":
        parts = measure(accept, raw)
        assert parts[3].endswith(raw.split(b"\r\n\r\n", 1)[1])  # the stamped message is in the record
        return
    field = measure(partial(sign, timestamp=1_717_171_717), raw, keys[variant])
    assert field.startswith(b"DKIM-Signature: v=1; a=" + keys[variant].algorithm.encode())


@pytest.mark.parametrize("variant", ["c", "py"])
def test_relaxed_body(benchmark, measure, message, variant):
    label, raw = message
    body = raw.split(b"\r\n\r\n", 1)[1]
    benchmark.group = f"relaxed_body {label}"
    benchmark.extra_info["variant"] = variant
    benchmark.extra_info["bytes"] = len(body)
    function = {"c": _dkim_c.relaxed_body, "py": _dkim_py.relaxed_body}[variant]
    assert measure(function, body) == _dkim_py.relaxed_body(body)
