"""Properties of the report parser (hypothesis, bounded examples, no deadlines):
no input raises or reaches the last line of defence, and a DSN built with the
stdlib email package from random recipients and status codes reads back as built.
"""

from __future__ import annotations

from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dataplane.reports import Report, parse_report, to_json
from dataplane.reports.parser import PARSER_ERROR
from dataplane.reports.status import normalise_address

PROPERTY = settings(max_examples=200, deadline=None)
ROUND_TRIP = settings(max_examples=100, deadline=None)


def _answered(data: bytes) -> Report:
    report = parse_report(data)
    assert not (report.problem or "").startswith(PARSER_ERROR), report.problem
    assert (report.problem is None) == (report.kind != "unknown")
    to_json(report)  # every result has a JSON form
    return report


@PROPERTY
@given(st.binary(max_size=4096))
@example(b"Content-Type: multipart/report; boundary=\x00\n\n--\x00\n")
@example(b"Content-Type: message/delivery-status\n\n\n\n")
@example(b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n====")
def test_arbitrary_bytes_are_always_answered(data: bytes):
    _answered(data)


_MIME_LINES = st.sampled_from(
    [
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=B",
        b"Content-Type: multipart/mixed; boundary=B",
        b"Content-Type: message/delivery-status",
        b"Content-Type: message/global-delivery-status",
        b"Content-Type: message/feedback-report",
        b"Content-Type: message/rfc822",
        b"Content-Type: text/rfc822-headers",
        b"Content-Type: text/plain; charset=x-unknown",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: quoted-printable",
        b"--B",
        b"--B--",
        b"",
        b"Final-Recipient: rfc822; a@example.org",
        b"Final-Recipient: utf-8; \xe5\xb1\xb1@\xe4\xbe\x8b.example",
        b"Original-Recipient: rfc822;",
        b"Action: failed",
        b"Action: delayed",
        b"Status: 5.1.1",
        b"Status: 4.",
        b"Diagnostic-Code: smtp; 550 5.1.1 no",
        b"Feedback-Type: abuse",
        b"X-Failed-Recipients: b@example.org",
        b"Hi. This is the qmail-send program at x.",
        b"<c@example.org>:",
        b"  folded \xff\xfe",
    ]
)


@PROPERTY
@given(st.lists(st.one_of(_MIME_LINES, st.binary(max_size=40)), max_size=60), st.sampled_from([b"\n", b"\r\n"]))
def test_shuffled_report_fragments_are_always_answered(lines: list[bytes], newline: bytes):
    _answered(newline.join(lines))


_LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-", min_size=1, max_size=20)
_DOMAIN = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12), min_size=2, max_size=4
).map(".".join)
_ADDRESS = st.tuples(_LOCAL, _DOMAIN).map(lambda t: f"{t[0]}@{t[1]}")
_STATUS = st.tuples(st.sampled_from("245"), st.integers(0, 999), st.integers(0, 999)).map(
    lambda t: f"{t[0]}.{t[1]}.{t[2]}"
)
_ACTION = st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded"])
_DIAGNOSTIC = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
_RECIPIENT = st.fixed_dictionaries(
    {
        "address": _ADDRESS,
        "original": st.booleans(),
        "action": _ACTION,
        "status": _STATUS,
        "diagnostic": _DIAGNOSTIC,
    }
)


def _build_dsn(recipients: list[dict], newline: str) -> bytes:
    """An RFC 3464 report as the stdlib email package writes one."""
    report = MIMEMultipart("report", report_type="delivery-status", policy=compat32)
    report["From"] = "MAILER-DAEMON@mx.example.org"
    report["Subject"] = "Delivery Status Notification"
    report.attach(MIMEText("Your message could not be delivered.\n"))
    per_message = Message()
    per_message["Reporting-MTA"] = "dns; mx.example.org"
    blocks = [per_message]
    for r in recipients:
        block = Message()
        if r["original"]:
            block["Original-Recipient"] = f"rfc822;{r['address']}"
        block["Final-Recipient"] = f"rfc822; {r['address']}"
        block["Action"] = r["action"]
        block["Status"] = r["status"]
        if r["diagnostic"].strip():
            block["Diagnostic-Code"] = f"smtp; {r['diagnostic']}"
        blocks.append(block)
    status = Message()
    status.set_type("message/delivery-status")
    status.set_payload(blocks)
    report.attach(status)
    returned = MIMEText("Hello.\n")
    returned["Message-ID"] = "<round-trip@acme.example>"
    returned["x-virtual-mta"] = "promo-42-1-pool-7"
    original = Message()
    original.set_type("message/rfc822")
    original.set_payload([returned])
    report.attach(original)
    return report.as_bytes().replace(b"\n", newline.encode())


@ROUND_TRIP
@given(st.lists(_RECIPIENT, min_size=1, max_size=12, unique_by=lambda r: r["address"].lower()),
       st.sampled_from(["\n", "\r\n"]))
def test_a_built_dsn_reads_back_as_built(recipients: list[dict], newline: str):
    report = _answered(_build_dsn(recipients, newline))
    assert report.kind == "dsn"
    assert report.reporting_mta == "mx.example.org"
    assert report.returned_header("x-virtual-mta") == "promo-42-1-pool-7"
    got = [(r.address, r.action, r.status, r.permanent, r.diagnostic) for r in report.recipients]
    want = [
        (
            normalise_address(r["address"]),
            r["action"],
            r["status"],
            # RFC 3463 3.1: only class 5 with action failed is permanent.
            r["action"] == "failed" and r["status"].startswith("5"),
            " ".join(r["diagnostic"].split()),
        )
        for r in recipients
    ]
    assert got == want
    assert [r.failed for r in report.recipients] == [r["action"] in ("failed", "delayed") for r in recipients]


@PROPERTY
@given(st.text(max_size=400))
@example("<<")
@example("x <a<b>")
@example("a@.")
@example(":0;0")  # found by hypothesis: kept as "0;0", which then read as type "0"
def test_normalising_an_address_twice_changes_nothing(value: str):
    once = normalise_address(value)
    assert normalise_address(once) == once
    assert "\x00" not in once and " " not in once


@PROPERTY
@given(_LOCAL, _DOMAIN, st.sampled_from(["rfc822;", "RFC822; ", "utf-8;", ""]), st.booleans())
def test_address_forms_normalise_to_one_address(local: str, domain: str, address_type: str, angle: bool):
    written = f"<{local}@{domain.upper()}>" if angle else f"{local}@{domain.upper()}"
    assert normalise_address(f"{address_type} {written} ") == f"{local}@{domain}"
