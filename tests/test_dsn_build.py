"""RFC 3464 DSNs (`dataplane.dsn.build_dsn`): the bytes parse with the stdlib `email`
package into the RFC 6522 structure, every field is as given, and no recipient,
status or diagnostic (non-ASCII, CR/LF, RFC 2047 look-alikes) can add a field or
break the structure."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import datetime, timedelta, timezone
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dataplane.dsn import MAX_DIAGNOSTIC, Action, DsnError, DsnRecipient, build_dsn
from dataplane.dsn_request import MailDsnParams, OriginalRecipient, Ret

DATA = Path(__file__).parent / "data" / "dsn"
STAMPED = (DATA / "stamped-8bit.eml").read_bytes()
PLAIN_LF = (DATA / "plain-lf.eml").read_bytes()
HOST = "mta1.example.net"
SENDER = "news@acme.example"
ARRIVED = datetime(2026, 1, 1, 20, 45, 57, tzinfo=timezone.utc)
NOW = datetime(2026, 1, 2, 9, 0, 0, tzinfo=timezone.utc)
FAILED = DsnRecipient(
    address="r@example.net", action=Action.FAILED, status="5.1.1",
    original=OriginalRecipient("rfc822", "R@Example.NET"), remote_mta="mx1.example.net",
    diagnostic="550 5.1.1 <r@example.net>: Recipient address rejected: User unknown",
    last_attempt=ARRIVED + timedelta(seconds=3),
)
DELAYED = DsnRecipient(
    address="later@example.org", action=Action.DELAYED, status="4.4.1", remote_mta="mx.example.org",
    diagnostic="421 4.4.1 Connection timed out", last_attempt=NOW, will_retry_until=ARRIVED + timedelta(days=3),
)


def build(recipients=(FAILED,), original: bytes = STAMPED, **kwargs) -> bytes:
    kwargs.setdefault("reporting_mta", HOST)
    kwargs.setdefault("sender", SENDER)
    kwargs.setdefault("arrival_date", ARRIVED)
    kwargs.setdefault("now", NOW)
    return build_dsn(recipients=list(recipients), original=original, **kwargs)


def parse(dsn: bytes) -> Message:
    """The DSN as the stdlib reads it, after checking what holds for every DSN."""
    assert b"\n" not in dsn.replace(b"\r\n", b""), "CRLF line endings only"
    assert all(len(line) <= 998 for line in dsn.split(b"\r\n")), "RFC 5322 2.1.1 line limit"
    message = email.message_from_bytes(dsn, policy=email.policy.compat32)
    assert not message.defects
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in message.get_payload()][:2] == ["text/plain", "message/delivery-status"]
    return message


def unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def unescape(value: str) -> str:
    """RFC 6533 3 embedded characters back to themselves."""
    return re.sub(r"\\x\{([0-9A-F]{2,6})\}", lambda m: chr(int(m.group(1), 16)), value)


def fields(block: Message) -> dict[str, str]:
    names = [name for name, _ in block.items()]
    assert len(names) == len(set(names)), f"a field appears twice: {names}"
    return {name: unfold(value) for name, value in block.items()}


def status_blocks(message: Message) -> list[dict[str, str]]:
    blocks = message.get_payload(1).get_payload()
    for block in blocks:
        assert all(name.isascii() and value.isascii() for name, value in block.items())
    return [fields(b) for b in blocks]


# --- structure and fields ----------------------------------------------------------------


def test_a_failure_dsn_with_everything_given():
    dsn = build([FAILED, DELAYED], mail_params=MailDsnParams(ret=Ret.FULL, envid="QQ314159"))
    message = parse(dsn)
    top = {name: value for name, value in message.items()}
    assert top["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert top["To"] == f"<{SENDER}>"
    assert top["Subject"] == "Undelivered Mail Returned to Sender"
    assert top["Date"] == "Fri, 02 Jan 2026 09:00:00 +0000"
    assert re.fullmatch(rf"<[^<>@\s]+@{HOST}>", top["Message-ID"])
    assert top["Auto-Submitted"] == "auto-replied" and top["MIME-Version"] == "1.0"

    per_message, failed, delayed = status_blocks(message)
    assert per_message == {"Reporting-MTA": f"dns; {HOST}", "Original-Envelope-Id": "QQ314159",
                           "Arrival-Date": "Thu, 01 Jan 2026 20:45:57 +0000"}
    assert failed == {
        "Original-Recipient": "rfc822; R@Example.NET", "Final-Recipient": "rfc822; r@example.net",
        "Action": "failed", "Status": "5.1.1", "Remote-MTA": "dns; mx1.example.net",
        "Diagnostic-Code": "smtp; 550 5.1.1 <r@example.net>: Recipient address rejected: User unknown",
        "Last-Attempt-Date": "Thu, 01 Jan 2026 20:46:00 +0000",
    }
    assert delayed == {
        "Final-Recipient": "rfc822; later@example.org", "Action": "delayed", "Status": "4.4.1",
        "Remote-MTA": "dns; mx.example.org", "Diagnostic-Code": "smtp; 421 4.4.1 Connection timed out",
        "Last-Attempt-Date": "Fri, 02 Jan 2026 09:00:00 +0000", "Will-Retry-Until": "Sun, 04 Jan 2026 20:45:57 +0000",
    }

    text = message.get_payload(0)
    assert text.get_content_charset() == "utf-8" and text["Content-Transfer-Encoding"] == "quoted-printable"
    body = text.get_payload(decode=True).decode("utf-8")
    assert f"This is the mail system at host {HOST}." in body
    assert "<r@example.net>: 5.1.1, host mx1.example.net said: 550 5.1.1" in body
    assert "<later@example.org>: 4.4.1" in body and "retrying until Sun, 04 Jan 2026" in body


def test_ret_full_returns_the_whole_message_as_it_was_received():
    dsn = build(mail_params=MailDsnParams(ret=Ret.FULL))
    returned = parse(dsn).get_payload(2)
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"  # the body has 8-bit octets
    assert STAMPED in dsn  # byte for byte: headers, 8-bit body, boundaries
    inner = returned.get_payload(0)
    assert inner["Message-ID"] == "<jan-offers-1@acme.example>" and inner["x-virtual-mta"] == "promo-3-1-pool-7"
    assert "caf\u00e9" in inner.get_payload(0).get_payload(decode=True).decode("utf-8")


@pytest.mark.parametrize("ret", [None, Ret.HDRS])
def test_without_ret_full_only_the_headers_come_back(ret):
    dsn = build(mail_params=MailDsnParams(ret=ret))
    returned = parse(dsn).get_payload(2)
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Transfer-Encoding"] == "7bit"
    header_section = STAMPED[:STAMPED.index(b"\r\n\r\n") + 2]
    assert header_section in dsn and b"Bonjour" not in dsn
    assert "Your message's headers follow this report." in parse(dsn).get_payload(0).get_payload(decode=True).decode()


def test_a_delay_report_returns_headers_even_with_ret_full():
    message = parse(build([DELAYED], mail_params=MailDsnParams(ret=Ret.FULL)))
    assert message["Subject"] == "Delayed Mail (still being retried)"
    assert message.get_payload(2).get_content_type() == "text/rfc822-headers"


def test_a_success_report():
    delivered = DsnRecipient("ok@example.net", Action.DELIVERED, "2.0.0", remote_mta="mx.example.net",
                             diagnostic="250 2.0.0 Ok: queued as 4Xyz")
    message = parse(build([delivered]))
    assert message["Subject"] == "Successful Mail Delivery Report"
    assert status_blocks(message)[1]["Action"] == "delivered"


def test_a_message_too_large_to_return_comes_back_as_headers(tmp_path):
    message = parse(build(mail_params=MailDsnParams(ret=Ret.FULL), max_returned=len(STAMPED) - 1))
    assert message.get_payload(2).get_content_type() == "text/rfc822-headers"
    assert "too large to return" in message.get_payload(0).get_payload(decode=True).decode()
    assert parse(build(mail_params=MailDsnParams(ret=Ret.FULL), max_returned=len(STAMPED))).get_payload(
        2).get_content_type() == "message/rfc822"


def test_headers_past_the_cap_are_cut_at_a_field_boundary():
    header_section = PLAIN_LF.replace(b"\n", b"\r\n").split(b"\r\n\r\n")[0] + b"\r\n"
    long_field = header_section.index(b"X-Long-Header")
    for cap in (long_field, long_field + 10, len(header_section) - 1):
        returned = parse(build(original=PLAIN_LF, max_returned=cap)).get_payload(2).get_payload()
        assert returned.encode() == header_section[:long_field]  # never half of a folded field
    assert parse(build(original=PLAIN_LF, max_returned=0)).get_payload(2).get_payload() == ""


def test_bare_lf_and_bare_cr_become_crlf():
    dsn = build(original=PLAIN_LF, mail_params=MailDsnParams(ret=Ret.FULL))
    assert PLAIN_LF.replace(b"\n", b"\r\n") in dsn
    mixed = b"Subject: x\r\n\r\na\rb\nc\r\n"
    assert b"a\r\nb\r\nc\r\n" in build(original=mixed, mail_params=MailDsnParams(ret=Ret.FULL))


def test_non_ascii_addresses_use_the_utf8_address_type():
    recipient = DsnRecipient("j\u00f6rg@b\u00fccher.example", Action.FAILED, "5.1.1",
                             original=OriginalRecipient("utf-8", "J\u00f6rg+x=y@b\u00fccher.example"))
    dsn = build([recipient], sender="s\u00e9@acme.example")
    message = email.message_from_bytes(dsn, policy=email.policy.default)
    assert message["To"] == "s\u00e9@acme.example"  # RFC 6532: written as UTF-8
    block = status_blocks(parse(dsn))[1]
    assert block["Final-Recipient"] == "utf-8; j\\x{F6}rg@b\\x{FC}cher.example"
    assert block["Original-Recipient"] == "utf-8; J\\x{F6}rg\\x{2B}x\\x{3D}y@b\\x{FC}cher.example"
    assert unescape(block["Original-Recipient"][7:]) == recipient.original.address


def test_many_recipients_are_all_reported_and_a_hundred_listed():
    recipients = [DsnRecipient(f"user{i}@example.net", Action.FAILED, "5.1.1") for i in range(150)]
    message = parse(build(recipients))
    assert [b["Final-Recipient"] for b in status_blocks(message)[1:]] == [f"rfc822; user{i}@example.net"
                                                                         for i in range(150)]
    body = message.get_payload(0).get_payload(decode=True).decode()
    assert "<user99@example.net>" in body and "<user100@example.net>" not in body and "and 50 more" in body


def test_an_action_may_be_given_as_its_rfc_3464_word():
    message = parse(build([DsnRecipient("r@example.net", "failed", "5.1.1"),
                           DsnRecipient("d@example.net", "delayed", "4.4.1")]))
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    body = message.get_payload(0).get_payload(decode=True).decode()
    assert body.index("this is final") < body.index("<r@example.net>") < body.index("keeps trying")


# --- hostile input ------------------------------------------------------------------------

INJECTIONS = [
    "550 no\r\nX-Injected: 1", "550 no\r\n\r\nFinal-Recipient: rfc822; evil@x", "550 no\n--===============1==--",
    "550 =?utf-8?q?hidden?= text", "550 \u00e9\u00e8\u2028\u0085 \U0001F600 \\x{E9}", "\r\n", "550 " + "x" * 5000,
    "550 " + "\u00e9" * 2000, " \t 550   spaced \t out ",
]


def one_line(text: str, limit: int) -> str:
    """What a field keeps of `text` before escaping: controls as spaces, runs collapsed."""
    return " ".join("".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text[:limit]).split())


def assert_text_field(value: str, given: str, limit: int) -> None:
    """`value` is `given` on one line, escaped, and cut (at `limit` escaped characters) only if it had to be."""
    got, whole = unescape(value), one_line(given, limit)
    assert got and whole.startswith(got)
    if len(value) < limit - 10:  # room for one more escape: nothing was cut
        assert got == whole


def address_of(field: str) -> str:
    addr_type, address = field.split("; ", 1)
    return unescape(address) if addr_type == "utf-8" else address


address_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)


@st.composite
def recipients(draw) -> DsnRecipient:
    action = draw(st.sampled_from(list(Action)))
    klass = {Action.FAILED: 5, Action.DELAYED: 4}.get(action, 2)
    return DsnRecipient(
        address=draw(st.one_of(st.just("r@example.net"), address_text)),
        action=action,
        status=f"{klass}.{draw(st.integers(0, 999))}.{draw(st.integers(0, 999))}",
        original=draw(st.one_of(st.none(), st.builds(OriginalRecipient, st.sampled_from(["rfc822", "utf-8"]),
                                                     address_text))),
        remote_mta=draw(st.one_of(st.none(), st.text(max_size=80))),
        diagnostic=draw(st.one_of(st.none(), st.sampled_from(INJECTIONS), st.text(max_size=1200))),
        last_attempt=draw(st.one_of(st.none(), st.just(NOW))),
        will_retry_until=NOW if action is Action.DELAYED and draw(st.booleans()) else None,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reports=st.lists(recipients(), min_size=1, max_size=4),
    ret=st.sampled_from([None, Ret.FULL, Ret.HDRS]),
    # A field value cannot start or end with white space a parser keeps (RFC 5322 2.2).
    envid=st.one_of(st.none(), st.from_regex(r"[!-~]([ -~]{0,98}[!-~])?", fullmatch=True)),
)
@example(reports=[DsnRecipient("r@x", Action.FAILED, "5.0.0", diagnostic=d) for d in INJECTIONS], ret=Ret.FULL,
         envid="=?utf-8?q?x?=")
def test_no_input_breaks_the_structure(reports: list[DsnRecipient], ret, envid):
    dsn = build(reports, mail_params=MailDsnParams(ret=ret, envid=envid))
    message = parse(dsn)
    assert len(message.get_payload()) == 3
    per_message, *blocks = status_blocks(message)
    assert per_message.get("Original-Envelope-Id") == envid
    assert len(blocks) == len(reports)
    for report, block in zip(reports, blocks, strict=True):
        expected = ["Final-Recipient", "Action", "Status"]
        if report.original is not None:
            expected.insert(0, "Original-Recipient")
            assert address_of(block["Original-Recipient"]) == report.original.address
        if one_line(report.remote_mta or "", 512):
            expected.append("Remote-MTA")
            assert_text_field(block["Remote-MTA"].removeprefix("dns; "), report.remote_mta, 512)
        if one_line(report.diagnostic or "", MAX_DIAGNOSTIC):
            expected.append("Diagnostic-Code")
            assert_text_field(block["Diagnostic-Code"].removeprefix("smtp; "), report.diagnostic, MAX_DIAGNOSTIC)
        expected += ["Last-Attempt-Date"] if report.last_attempt else []
        expected += ["Will-Retry-Until"] if report.will_retry_until else []
        assert list(block) == expected  # nothing injected, nothing lost
        assert address_of(block["Final-Recipient"]) == report.address
        assert (block["Action"], block["Status"]) == (report.action.value, report.status)
    # The stdlib's own reading agrees on the structure.
    modern = email.message_from_bytes(dsn, policy=email.policy.default)
    assert [p.get_content_type() for p in modern.iter_parts()] == [
        p.get_content_type() for p in message.get_payload()]


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"sender": ""}, "null sender"), ({"sender": "<>"}, "null sender"), ({"sender": "a@b@c"}, "not a mailbox"),
    ({"sender": "a b@x"}, "not a mailbox"), ({"sender": "x@y\r\nBcc: z@w"}, "not a mailbox"),
    ({"reporting_mta": "bad host"}, "not a hostname"), ({"reporting_mta": "-x.example"}, "not a hostname"),
    ({"recipients": []}, "at least one"), ({"arrival_date": datetime(2026, 1, 1)}, "timezone-aware"),
    ({"now": datetime(2026, 1, 1)}, "timezone-aware"), ({"max_returned": -1}, "non-negative"),
    ({"max_returned": 1.5}, "non-negative"), ({"original": "Subject: x"}, "must be bytes"),
    ({"recipients": ["r@x"]}, "DsnRecipient"),
    ({"mail_params": MailDsnParams(envid="a\r\nb")}, "ENVID"), ({"mail_params": MailDsnParams(envid="")}, "ENVID"),
    ({"mail_params": MailDsnParams(envid=7)}, "ENVID"), ({"mail_params": {"ret": "FULL"}}, "MailDsnParams"),
])
def test_refused_input(kwargs, why):
    with pytest.raises(DsnError, match=why):
        build(**kwargs)


@pytest.mark.parametrize(("recipient", "why"), [
    (DsnRecipient("r@x", Action.FAILED, "4.1.1"), "needs class 5"),
    (DsnRecipient("r@x", Action.DELAYED, "5.1.1"), "needs class 4"),
    (DsnRecipient("r@x", Action.DELIVERED, "5.1.1"), "needs class 2"),
    (DsnRecipient("r@x", Action.FAILED, "5.1"), "RFC 3463"),
    (DsnRecipient("r@x", Action.FAILED, "5.1.1000"), "RFC 3463"),
    (DsnRecipient("r@x", Action.FAILED, "3.1.1"), "RFC 3463"), (DsnRecipient("r@x", Action.FAILED, None), "RFC 3463"),
    (DsnRecipient("r@x", "bounced", "5.1.1"), "RFC 3464"),
    (DsnRecipient("r@x", Action.FAILED, "5.1.1", will_retry_until=NOW), "delayed recipients only"),
    (DsnRecipient("r@x", Action.FAILED, "5.1.1", last_attempt=datetime(2026, 1, 1)), "timezone-aware"),
    (DsnRecipient("", Action.FAILED, "5.1.1"), "empty"), (DsnRecipient("r\r\n@x", Action.FAILED, "5.1.1"), "control"),
    (DsnRecipient("r@x" + "\u00e9" * 100, Action.FAILED, "5.1.1"), "limit is 512"),
    (DsnRecipient(b"r@x", Action.FAILED, "5.1.1"), "text"),
    (DsnRecipient("r@x", Action.FAILED, "5.1.1", diagnostic=550), "text"),
    (DsnRecipient("r@x", Action.FAILED, "5.1.1", original=OriginalRecipient("rfc 822", "r@x")), "atom"),
    (DsnRecipient("r@x", Action.FAILED, "5.1.1", original=("rfc822", "r@x")), "OriginalRecipient"),
])
def test_refused_recipients(recipient, why):
    with pytest.raises(DsnError, match=why):
        build([recipient])
