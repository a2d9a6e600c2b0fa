"""The report parser on what a stranger can send: broken MIME, wrong report
types, garbage, huge and deeply nested messages. Every case returns a Report
(`unknown`, or the best reading there is) within the parser's bounds, and never
through its last line of defence. Nothing here is timed: each case only has to
finish."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from dataplane.reports import MAX_PARSED_BYTES, MAX_RECIPIENTS, Report, parse_report
from dataplane.reports.limits import MAX_ADDRESS, MAX_CONTAINERS, MAX_DIAGNOSTIC, MAX_HEADER_FIELDS, MAX_VALUE
from dataplane.reports.parser import PARSER_ERROR

CORPUS = Path(__file__).parent / "data" / "reports"


def _parsed(data: bytes) -> Report:
    report = parse_report(data)
    assert not (report.problem or "").startswith(PARSER_ERROR), report.problem
    return report


def _dsn(recipient_blocks: str, *, report_type: str = "delivery-status", part_type: str = "message/delivery-status",
         cte: str = "", body_override: str | None = None) -> bytes:
    status = body_override if body_override is not None else f"Reporting-MTA: dns; mx.example.org\n\n{recipient_blocks}"
    encoding = f"Content-Transfer-Encoding: {cte}\n" if cte else ""
    return (
        "From: MAILER-DAEMON@mx.example.org\n"
        f"Content-Type: multipart/report; report-type={report_type}; boundary=BB\n\n"
        "--BB\nContent-Type: text/plain\n\nDelivery failed.\n"
        f"--BB\nContent-Type: {part_type}\n{encoding}\n{status}\n"
        "--BB--\n"
    ).encode()


ONE_FAILED = "Final-Recipient: rfc822; kim@example.org\nAction: failed\nStatus: 5.1.1\n"


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n", b"   \n\n  ", b"\x00", b"\x00" * 1000],
    ids=["empty", "crlf", "blank", "nul", "nuls"],
)
def test_empty_or_blank_input_is_unknown(data: bytes):
    report = _parsed(data)
    assert report.kind == "unknown"
    assert report.problem


def test_nul_bytes_inside_a_dsn_do_not_stop_it_being_read():
    data = _dsn(ONE_FAILED.replace("Status: 5.1.1", "Status: 5.1.1\x00\x00") + "X-Junk: a\x00b\n")
    report = _parsed(data)
    assert report.kind == "dsn"
    assert [(r.address, r.status, r.permanent) for r in report.recipients] == [("kim@example.org", "5.1.1", True)]


def test_truncated_mime_in_the_middle_of_the_delivery_status_is_a_best_effort():
    whole = (CORPUS / "postfix_dsn_multi_recipient.eml").read_bytes()
    cut = whole[: whole.index(b"Final-Recipient: rfc822; chloe")]
    report = _parsed(cut)
    assert report.kind == "dsn"
    assert [r.address for r in report.recipients] == ["ana@example.org", "Bruno.Silva@example.net"]
    assert report.returned_headers == ()


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.9])
def test_every_truncation_of_corpus_messages_is_answered(fraction: float):
    for path in sorted(CORPUS.glob("*.eml")):
        whole = path.read_bytes()
        _parsed(whole[: int(len(whole) * fraction)])


def test_report_type_that_disagrees_with_the_part_is_read_by_the_part_and_noted():
    report = _parsed(_dsn(ONE_FAILED, report_type="feedback-report"))
    assert report.kind == "dsn"
    assert [r.address for r in report.recipients] == ["kim@example.org"]
    assert any("report-type 'feedback-report' disagrees" in note for note in report.notes)


def test_report_type_of_a_read_receipt_is_not_a_bounce():
    data = _dsn("", report_type="disposition-notification", part_type="message/disposition-notification",
                body_override="Reporting-UA: pc.example.org\nFinal-Recipient: rfc822;kim@example.org\n"
                              "Disposition: manual-action/MDN-sent-manually; displayed\n")
    report = _parsed(data)
    assert report.kind == "unknown"
    assert report.recipients == ()


def test_delivery_status_without_recipients_falls_back_to_the_detectors_and_says_so():
    report = _parsed(_dsn("", body_override="Reporting-MTA: dns; mx.example.org\n"))
    assert report.kind == "unknown"
    assert any("names no recipient" in note for note in report.notes)


def test_recipient_blocks_without_address_or_outcome_are_dropped_and_counted():
    blocks = (
        "Final-Recipient: rfc822;\nAction: failed\nStatus: 5.1.1\n\n"
        "Final-Recipient: rfc822; lee@example.org\nX-Note: no action, no status\n\n" + ONE_FAILED
    )
    report = _parsed(_dsn(blocks))
    assert [r.address for r in report.recipients] == ["kim@example.org"]
    assert any(note.startswith("2 recipient block(s)") for note in report.notes)


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        pytest.param(
            "Final-Recipient: rfc822; a@example.org\nStatus: 5.1.1\n\n"
            "Final-Recipient: rfc822; b@example.org\nStatus: 4.2.2\n",
            [("a@example.org", "failed", "5.1.1", True), ("b@example.org", "delayed", "4.2.2", False)],
            id="no-action-so-the-status-class-stands-for-it",
        ),
        pytest.param(
            "Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: five\n"
            "Diagnostic-Code: smtp; 452 4.2.2 over quota\n\n"
            "Final-Recipient: rfc822; b@example.org\nAction: failed\nDiagnostic-Code: smtp; 550 no such user\n",
            [("a@example.org", "failed", "4.2.2", False), ("b@example.org", "failed", "", True)],
            id="garbled-or-missing-status-so-the-diagnostic-code-speaks",
        ),
    ],
)
def test_incomplete_recipient_blocks_are_judged_from_what_they_carry(blocks: str, expected: list):
    report = _parsed(_dsn(blocks))
    assert [(r.address, r.action, r.status, r.permanent) for r in report.recipients] == expected


def test_no_blank_line_between_per_message_and_recipient_fields():
    body = "Reporting-MTA: dns; mx.example.org\n" + ONE_FAILED
    report = _parsed(_dsn("", body_override=body))
    assert report.reporting_mta == "mx.example.org"
    assert [r.address for r in report.recipients] == ["kim@example.org"]


def test_base64_and_quoted_printable_delivery_status_parts_are_decoded():
    import base64
    import quopri

    b64 = base64.encodebytes(f"Reporting-MTA: dns; mx.example.org\n\n{ONE_FAILED}".encode()).decode()
    assert [r.address for r in _parsed(_dsn("", cte="base64", body_override=b64)).recipients] == ["kim@example.org"]
    qp = quopri.encodestring(
        f"Reporting-MTA: dns; mx.example.org\n\n{ONE_FAILED}Diagnostic-Code: smtp; 550 {'x' * 90} =end\n".encode()
    ).decode()
    report = _parsed(_dsn("", cte="quoted-printable", body_override=qp))
    assert report.recipients[0].diagnostic == f"550 {'x' * 90} =end"


def test_bad_base64_is_not_an_error():
    report = _parsed(_dsn("", cte="base64", body_override="!!!! not base64 at all ====\n@@@"))
    assert report.kind == "unknown"


def test_unknown_charset_and_undecodable_bytes_in_a_nonstandard_bounce():
    data = (CORPUS / "qmail_permanent.eml").read_bytes().replace(
        b"Subject: failure notice", b"Subject: failure notice\nContent-Type: text/plain; charset=x-no-such-charset"
    ).replace(b"This is a permanent error", b"\xff\xfe\xc3 This is a permanent error")
    report = _parsed(data)
    assert report.kind == "nonstandard"
    assert [(r.address, r.permanent) for r in report.recipients] == [("gone@example.net", True)]


@pytest.mark.parametrize("container", [False, True], ids=["leaf", "in-multipart"])
def test_a_charset_with_a_nul_in_it_is_like_an_unknown_one(container: bool):
    # Found by test_random_bytes_spliced_into_corpus_messages: the stdlib decodes an
    # 8-bit leaf with its charset on get_payload(), and a NUL there is a ValueError.
    leaf = b'Content-Type: text/plain; charset="a\x00b"\r\n\r\nhello \xff\r\n'
    data = (b'Content-Type: multipart/report; report-type=delivery-status; boundary="x"\r\n\r\n--x\r\n'
            + leaf + b"--x--\r\n") if container else leaf
    assert _parsed(b"From: a@example.com\r\n" + data).kind == "unknown"


@pytest.mark.parametrize("from_line", [b"", b"From: \n", b"From: ,,,\n"], ids=["none", "empty", "no-address"])
def test_a_nonstandard_bounce_without_a_usable_from_is_still_detected(from_line: bytes):
    # flufl.bounce's Yale detector fails on such a message and would stop the
    # detectors after it (qmail among them) without the parser's placeholder.
    data = (CORPUS / "qmail_permanent.eml").read_bytes().replace(b"From: MAILER-DAEMON@mail.example.net\n", from_line)
    report = _parsed(data)
    assert [(r.address, r.permanent) for r in report.recipients] == [("gone@example.net", True)]
    assert report.notes == ()


def test_a_nonstandard_recipients_code_is_read_beside_that_address_not_a_longer_one():
    data = (
        b"From: MAILER-DAEMON@mail.example.net\nSubject: failure notice\n\n"
        b"Hi. This is the qmail-send program at mail.example.net.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n\n"
        b"<joann@example.org>:\nRemote host said: 452 4.2.2 mailbox full\n\n"
        b"<ann@example.org>:\nRemote host said: 550 5.1.1 no such user\n\n"
        b"--- Below this line is a copy of the message.\n"
    )
    report = _parsed(data)
    assert [(r.address, r.status, r.permanent) for r in report.recipients] == [
        ("ann@example.org", "5.1.1", True),
        ("joann@example.org", "4.2.2", False),
    ]


def test_undecodable_bytes_in_returned_headers_become_replacement_characters():
    data = (CORPUS / "postfix_dsn_user_unknown.eml").read_bytes().replace(
        b"Subject: Your November digest", b"Subject: caf\xe9 \xff digest"
    )
    report = _parsed(data)
    assert report.returned_header("Subject") == "caf\ufffd \ufffd digest"


def test_bad_header_lines_and_huge_field_values_are_bounded():
    blocks = (
        "Final-Recipient: rfc822; kim@example.org\nAction: failed\nStatus: 5.1.1\n"
        f"Diagnostic-Code: smtp; 550 {'y' * 50_000}\n"
        ": no name\nno colon at all\n\tstray continuation\n"
        f"Final-Recipient: rfc822; {'l' * 400}@example.org\n"
    )
    report = _parsed(_dsn(blocks))
    (recipient,) = report.recipients
    assert len(recipient.diagnostic) <= min(MAX_DIAGNOSTIC, MAX_VALUE)
    assert len(recipient.address) <= MAX_ADDRESS


def test_ten_megabytes_of_garbage_is_parsed_from_a_bounded_prefix():
    garbage = random.Random(20261130).randbytes(10 * 1024 * 1024)
    report = _parsed(garbage)
    assert report.kind == "unknown"
    assert f"parsed the first {MAX_PARSED_BYTES} bytes of {len(garbage)}" in report.notes


def test_ten_megabytes_of_garbage_lines_is_unknown():
    line = b"Lorem: ipsum <x@y> 550 5.1.1 dolor sit amet\n"
    report = _parsed(line * (10 * 1024 * 1024 // len(line)))
    assert report.kind == "unknown"


def test_a_dsn_followed_by_a_huge_returned_message_is_still_read():
    dsn = (CORPUS / "postfix_dsn_user_unknown.eml").read_bytes()
    last_boundary = dsn.rindex(b"--4F2A31C0A23")
    padding = (b"A" * 76 + b"\n") * (4 * 1024 * 1024 // 77)  # a 4 MiB returned body
    report = _parsed(dsn[:last_boundary] + padding + dsn[last_boundary:])
    assert report.kind == "dsn"
    assert [r.address for r in report.recipients] == ["jane.doe@example.org"]
    assert report.returned_header("x-virtual-mta") == "promo-42-1-pool-7"
    assert any(note.startswith("parsed the first") for note in report.notes)


@pytest.mark.parametrize("container", ["multipart/mixed; boundary=b{i}\n\n--b{i}", "message/rfc822\n"])
def test_deeply_nested_parts_are_unknown(container: str):
    data = "".join(f"Content-Type: {container.format(i=i)}\n" for i in range(5000))
    report = _parsed((data + "Content-Type: text/plain\n\nx\n").encode())
    assert report.kind == "unknown"
    assert report.problem == f"5000 multipart or message parts declared (at most {MAX_CONTAINERS} are read)"


def test_nesting_past_the_walk_limit_is_ignored_not_followed():
    depth = MAX_CONTAINERS - 1  # parsed, but deeper than the walk goes
    head = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n" for i in range(depth))
    tail = "".join(f"\n--b{i}--\n" for i in reversed(range(depth)))
    report = _parsed((head + "Content-Type: message/delivery-status\n\n" + ONE_FAILED + tail).encode())
    assert report.kind == "unknown"
    assert "ignored MIME parts nested too deeply" in report.notes


def test_huge_address_headers_are_cut_between_addresses():
    many = ", ".join(f"r{i}@example.org" for i in range(100_000))
    report = _parsed(f"From: {many}\nX-Failed-Recipients: {many}\n\nThis message was created automatically.\n".encode())
    assert report.kind == "nonstandard"
    addresses = [r.address for r in report.recipients]
    assert 0 < len(addresses) <= MAX_RECIPIENTS
    # Cut at a comma: every address kept is whole.
    assert set(addresses) <= {f"r{i}@example.org" for i in range(100_000)}
    assert any(note.startswith("cut header fields") for note in report.notes)


@pytest.mark.parametrize("fold", ["", "\n "])
def test_huge_content_type_parameter_lists_are_cut_before_parsing(fold: str):
    params = fold.join(f'p{i}="v;{i}";' for i in range(100_000))
    data = f"Content-Type: multipart/report; report-type=delivery-status; {params} boundary=B\n\n--B\n"
    report = _parsed((data + f"Content-Type: message/delivery-status\n\n{ONE_FAILED}--B--\n").encode())
    # The boundary was past the cut, so the body is not split into parts.
    assert report.kind == "unknown"


def test_many_header_fields_are_cut():
    data = b"X-Junk: 1\n" * 100_000 + b"From: MAILER-DAEMON@example.org\n\nhello\n"
    report = _parsed(data)
    assert report.kind == "unknown"
    assert any(note.startswith(f"cut header fields to {MAX_HEADER_FIELDS} per part") for note in report.notes)


def test_ten_thousand_parts_are_walked_only_up_to_the_limit():
    parts = "".join("--P\nContent-Type: text/plain\n\nnothing here\n" for _ in range(10_000))
    data = f"Content-Type: multipart/mixed; boundary=P\n\n{parts}--P--\n".encode()
    report = _parsed(data)
    assert report.kind == "unknown"
    assert any(note.startswith("walked the first") for note in report.notes)


def test_a_dsn_part_after_ten_thousand_parts_is_beyond_the_walk():
    parts = "".join("--P\nContent-Type: text/plain\n\nx\n" for _ in range(10_000))
    dsn_part = f"--P\nContent-Type: message/delivery-status\n\n{ONE_FAILED}--P--\n"
    data = f"Content-Type: multipart/report; boundary=P\n\n{parts}{dsn_part}"
    assert _parsed(data.encode()).recipients == ()


def _failed_blocks(count: int) -> str:
    block = "Final-Recipient: rfc822; r{i}@example.org\nAction: failed\nStatus: 5.1.1\n"
    return "\n".join(block.format(i=i) for i in range(count))


def test_recipients_are_capped_and_the_cap_is_noted():
    blocks = _failed_blocks(MAX_RECIPIENTS + 500)
    report = _parsed(_dsn(blocks))
    assert len(report.recipients) == MAX_RECIPIENTS
    assert report.recipients[-1].address == f"r{MAX_RECIPIENTS - 1}@example.org"
    assert f"kept the first {MAX_RECIPIENTS} recipients" in report.notes


def test_exactly_the_cap_is_not_noted():
    blocks = _failed_blocks(MAX_RECIPIENTS)
    report = _parsed(_dsn(blocks))
    assert len(report.recipients) == MAX_RECIPIENTS
    assert report.notes == ()


def test_random_bytes_spliced_into_corpus_messages():
    rng = random.Random(7)
    for path in sorted(CORPUS.glob("*.eml")):
        whole = bytearray(path.read_bytes())
        for _ in range(5):
            at = rng.randrange(len(whole))
            whole[at : at + 8] = os.urandom(8) if rng.random() < 0.5 else rng.randbytes(8)
            _parsed(bytes(whole))


def test_bytes_like_input_is_accepted_and_other_types_are_a_programming_error():
    data = (CORPUS / "sendmail_dsn.eml").read_bytes()
    assert parse_report(bytearray(data)) == parse_report(memoryview(data)) == parse_report(data)
    with pytest.raises(TypeError, match="bytes"):
        parse_report(data.decode())  # type: ignore[arg-type]
