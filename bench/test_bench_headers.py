"""Benchmark `inject`: compiled vs pure twin vs the stdlib approach vs the copy floor.

Measured: stamping the four attribution headers plus two custom ones on a
realistic outgoing message of 2 KB, 20 KB and 200 KB (multipart/alternative,
the two larger with attachments; 20, 30 and 40 header fields with folded
Received, DKIM-Signature and ARC lines, and a client-supplied X-Virtual-MTA that
must go). The messages are generated with a fixed seed, so every run sees the
same bytes. Variants in each group:

- `c`, `py`: `_fastpath._headers_c.inject` and its pure-Python twin;
- `stdlib`: the naive way - `email` parse, delete and set the fields, serialize;
- `copy`: the copy floor, `b"".join(parts)` of the new header lines and the raw
  message (the list is prebuilt, so the floor is the copy and nothing else).

Goals (issue 3): `c / copy` <= 1.5x at 20 KB and 200 KB; `stdlib / c` >= 100x at 20 KB.
"""

from __future__ import annotations

import base64
import email.policy
import random
from email.generator import BytesGenerator
from email.parser import BytesParser
from io import BytesIO

import pytest

from _fastpath import RESERVED_HEADERS, _headers_c, _headers_py

STAMP = [
    (b"X-Virtual-MTA", b"news-1042-3-pool-7781"),
    (b"X-FeedType", b"marketing"),
    (b"X-Zone", b"EU-1"),
    (b"X-ServerId", b"3"),
    (b"List-Unsubscribe-Post", b"List-Unsubscribe=One-Click"),
    (b"X-Abuse-Report", b"abuse@mta.example.net"),
]
LF, CRLF = "\n", "\r\n"
# size label -> (target bytes, header fields)
MESSAGES = {"2 KB": (2_000, 20), "20 KB": (20_000, 30), "200 KB": (200_000, 40)}

WORDS = (
    "account order shipping delivery invoice update welcome offer week new your the "
    "and with for from details summer sale newsletter event today free members only "
    "thank you reply team support price plan renewal confirm"
).split()


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def token(rng: random.Random, length: int) -> str:
    return base64.b64encode(rng.randbytes(length)).decode()[:length]


def header_fields(rng: random.Random, count: int, boundary: str) -> list[str]:
    """`count` header fields as a sender's MTA hands them over (CRLF, folded)."""
    fields = [
        "Return-Path: <bounce-7781-42@news.example.com>",
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=news.example.com;\r\n"
        f" s=s2024; t=1717171717; bh={token(rng, 44)};\r\n"
        f" h=From:To:Subject:Date:Message-ID:MIME-Version:Content-Type:List-Unsubscribe;\r\n"
        f" b={token(rng, 76)}\r\n\t{token(rng, 76)}\r\n\t{token(rng, 90)}",
        "From: Example News <news@news.example.com>",
        "To: Dana Reader <dana.reader@example.org>",
        f"Subject: {words(rng, 7).capitalize()}",
        "Date: Fri, 31 May 2024 10:15:02 +0000",
        f"Message-ID: <{token(rng, 24)}@news.example.com>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"',
        "List-Unsubscribe: <https://news.example.com/u/7781/42>,\r\n"
        " <mailto:unsub-7781-42@news.example.com>",
        "X-Virtual-MTA: client-picked-vmta",  # spoofed by the client: removed
        "X-Mailer: ExampleMailer 5.2",
        f"X-Campaign-Id: {rng.randrange(10**8)}",
        "Feedback-ID: 7781:42:newsletter:example",
        "Precedence: bulk",
    ]
    while len(fields) < count:
        kind = len(fields) % 4
        if kind == 0:
            fields.insert(
                1,
                f"Received: from app{rng.randrange(99)}.internal.example.com "
                f"(10.1.{rng.randrange(256)}.{rng.randrange(256)})\r\n"
                f"\tby relay{rng.randrange(9)}.example.com with ESMTPS id {token(rng, 16)}\r\n"
                f"\tfor <dana.reader@example.org>; "
                f"Fri, 31 May 2024 10:15:0{rng.randrange(10)} +0000",
            )
        elif kind == 1:
            fields.append(
                f"ARC-Seal: i=1; a=rsa-sha256; t=1717171717; cv=none; d=example.com; s=arc;\r\n"
                f"\tb={token(rng, 70)}\r\n\t{token(rng, 70)}"
            )
        elif kind == 2:
            fields.append(
                "Authentication-Results: relay.example.com;\r\n"
                "\tdkim=pass header.d=news.example.com; spf=pass smtp.mailfrom=news.example.com"
            )
        else:
            fields.append(f"X-Tracking-{len(fields)}: {token(rng, 20)}")
    return fields[:count]


def build_message(target: int, field_count: int, seed: int) -> bytes:
    """A multipart/alternative message of about `target` bytes, CRLF throughout."""
    rng = random.Random(seed)
    boundary = f"=_b{token(rng, 20)}"
    head = "\r\n".join(header_fields(rng, field_count, boundary)) + "\r\n\r\n"
    head_bytes = head.encode()
    remaining = max(target - len(head_bytes), 300)
    text_size = remaining // 3 if target < 10_000 else min(remaining // 4, 6_000)
    html_size = remaining // 2 if target < 10_000 else min(remaining // 4, 12_000)
    text = "\r\n".join(words(rng, 11) for _ in range(text_size // 70))
    html = "\r\n".join(f"<p>{words(rng, 10)}</p>" for _ in range(html_size // 70))
    parts = [
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 7bit\r\n\r\n{text}\r\n",
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 7bit\r\n\r\n<html><body>{html}</body></html>\r\n",
    ]
    body = "This is a multi-part message in MIME format.\r\n\r\n" + "".join(parts)
    attachment_size = target - len(head_bytes) - len(body) - len(boundary) - 200
    if attachment_size > 1_000:
        encoded = base64.encodebytes(rng.randbytes(attachment_size * 3 // 4)).decode()
        body += (
            f"--{boundary}\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n"
            f"Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{encoded.replace(LF, CRLF)}"
        )
    body += f"--{boundary}--\r\n"
    return head_bytes + body.encode()


_SMTP_COMPAT32 = email.policy.compat32.clone(linesep="\r\n")


def stdlib_inject(raw: bytes, stamp: list[tuple[bytes, bytes]]) -> bytes:
    """The naive approach: parse with `email`, replace the fields, serialize."""
    message = BytesParser(policy=email.policy.compat32).parsebytes(raw)
    for name in RESERVED_HEADERS:
        del message[name.decode()]
    for name, value in stamp:
        del message[name.decode()]
        message[name.decode()] = value.decode()
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_SMTP_COMPAT32).flatten(message)
    return out.getvalue()


def stamp_lines(stamp: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in stamp)


@pytest.fixture(scope="module", params=MESSAGES, ids=lambda label: label.replace(" ", ""))
def message(request):
    target, field_count = MESSAGES[request.param]
    raw = build_message(target, field_count, seed=5322 + target)
    return request.param, raw


def test_messages_are_realistic(message):
    label, raw = message
    target, field_count = MESSAGES[label]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert abs(len(raw) - target) / target < 0.15
    assert sum(not line.startswith((b" ", b"\t")) for line in head.split(b"\r\n")) == field_count
    parsed = BytesParser(policy=email.policy.compat32).parsebytes(raw)
    assert parsed.is_multipart() and not parsed.defects


@pytest.mark.parametrize("variant", ["c", "py", "stdlib", "copy"])
def test_inject(benchmark, measure, message, variant):
    label, raw = message
    benchmark.group = f"inject {label}"
    benchmark.extra_info["variant"] = variant
    benchmark.extra_info["bytes"] = len(raw)
    if variant == "copy":
        result = measure(b"".join, [stamp_lines(STAMP), raw])
        assert len(result) == len(stamp_lines(STAMP)) + len(raw)
        return
    function = {"c": _headers_c.inject, "py": _headers_py.inject, "stdlib": stdlib_inject}[variant]
    result = measure(function, raw, STAMP)
    assert b"client-picked-vmta" not in result
    if variant == "stdlib":
        assert b"X-Zone: EU-1\r\n" in result  # appended at the end of the header block
    else:
        assert result.startswith(stamp_lines(STAMP))
        assert result == _headers_py.inject(raw, STAMP)
        spoofed = b"X-Virtual-MTA: client-picked-vmta\r\n"
        assert len(result) == len(raw) + len(stamp_lines(STAMP)) - len(spoofed)
