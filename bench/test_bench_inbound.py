"""Benchmark what the inbound side of the feedback loop costs.

Measured:

- `message index 5 KB`: what the Bridge adds per accepted message to fill the
  message index, `header_fields` + `indexed_message_id` on a 5 KB message
  (`index`), against finding the end of its header block alone (`floor`) and the
  stdlib's header parser (`stdlib`), which the hot path must not use;
- `report parse`: `parse_report` of one report as the inbound listener gets it,
  an RFC 3464 DSN (`dsn`), an RFC 5965 ARF report (`arf`) and a qmail bounce
  found by flufl.bounce (`nonstandard`), each returning a 5 KB message's headers.
  Off the hot path (one per report received), but it bounds how many reports a
  worker takes per second.

Fixed inputs: the messages below.
"""

from __future__ import annotations

import email.parser
import email.policy

import pytest

from dataplane.message_headers import header_fields, indexed_message_id
from dataplane.reports import parse_report

HEAD = (
    b"Received: from app1.acme.example (unknown [10.0.0.9])\r\n\tby mta1.example.net (poolmta) with ESMTPA id "
    b"019b7b4f5c00a1b2c3d4000001; Thu, 01 Jan 2026 20:45:50 +0000\r\n"
    b"x-virtual-mta: promo-3-1-pool-7\r\nx-feedtype: newsletter\r\nx-zone: US-1\r\nx-serverid: 1\r\n"
    b"From: Example News <news@news.example.com>\r\nTo: Dana Reader <dana.reader@example.org>\r\n"
    b"Subject: Summer offers\r\nDate: Thu, 01 Jan 2026 20:45:50 +0000\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nMessage-ID: <20260101204550.1234@news.example.com>\r\n\r\n"
)
MESSAGE = HEAD + b"account order shipping delivery invoice update welcome offer week new your\r\n" * 64
RETURNED = HEAD.replace(b"\r\n", b"\n").decode()
BOUNDARY = "b1"
DSN = f"""From: MAILER-DAEMON@mx.example.org
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{BOUNDARY}"

--{BOUNDARY}
Content-Type: text/plain

Your message could not be delivered.

--{BOUNDARY}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; dana.reader@example.org
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--{BOUNDARY}
Content-Type: text/rfc822-headers

{RETURNED}
--{BOUNDARY}--
""".encode()
ARF = f"""From: fbl@fbl.example.org
Subject: abuse report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"

--{BOUNDARY}
Content-Type: text/plain

An abuse report.

--{BOUNDARY}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Source-IP: 192.0.2.7

--{BOUNDARY}
Content-Type: message/rfc822

{RETURNED}
body
--{BOUNDARY}--
""".encode()
QMAIL = f"""From: MAILER-DAEMON@mx.example.org
Subject: failure notice

Hi. This is the qmail-send program at mx.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<dana.reader@example.org>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Return-Path: <news@news.example.com>
{RETURNED}
""".encode()
_NAMES = ("message-id",)
_PARSER = email.parser.BytesParser(policy=email.policy.compat32)


def index_entry(raw: bytes) -> str | None:
    return indexed_message_id(header_fields(raw, _NAMES)["message-id"])


def header_end(raw: bytes) -> int:
    return raw.find(b"\r\n\r\n")


def stdlib_message_id(raw: bytes) -> str | None:
    return indexed_message_id(_PARSER.parsebytes(raw, headersonly=True)["message-id"])


@pytest.mark.parametrize("variant", ["index", "floor", "stdlib"])
def test_message_index(benchmark, measure, variant):
    benchmark.group = "message index 5 KB"
    benchmark.extra_info["variant"] = variant
    if variant == "floor":
        assert measure(header_end, MESSAGE) == len(HEAD) - 4
    else:
        function = index_entry if variant == "index" else stdlib_message_id
        assert measure(function, MESSAGE) == "20260101204550.1234@news.example.com"


@pytest.mark.parametrize(("variant", "raw"), [("dsn", DSN), ("arf", ARF), ("nonstandard", QMAIL)],
                         ids=["dsn", "arf", "nonstandard"])
def test_report_parse(benchmark, measure, variant, raw):
    benchmark.group = "report parse"
    benchmark.extra_info["variant"] = variant
    report = measure(parse_report, raw)
    assert report.kind == variant and report.returned_header("x-virtual-mta") == "promo-3-1-pool-7"
