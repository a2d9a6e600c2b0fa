"""The report parser over the corpus in tests/data/reports/: RFC 3464, RFC 5965
and RFC 6533 examples, and messages in the formats of Postfix, Sendmail, Exim,
qmail, Exchange / Office 365, Gmail, Yahoo, OpenSMTPD, Domino, Microsoft's and
Yahoo's complaint loops, plus messages that are not reports at all.

`expectations.json` says, per file, the kind and the failed (or delayed)
recipients with their action, status and permanence. Each file is checked
exactly; a file the parser is known to miss carries `known_miss` (its reason)
and is a strict xfail, so a fix shows up. Recall and precision over every
failed recipient of the corpus are printed and held above a floor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataplane.reports import Report, parse_report
from dataplane.reports.parser import PARSER_ERROR

CORPUS = Path(__file__).parent / "data" / "reports"
EXPECTATIONS: dict[str, dict] = json.loads((CORPUS / "expectations.json").read_text(encoding="utf-8"))

# The floors the brief sets for the corpus as a whole.
MIN_RECALL = 0.95
MIN_PRECISION = 0.98


def _parse(name: str) -> Report:
    return parse_report((CORPUS / name).read_bytes())


def _failed(report: Report) -> list[dict]:
    return sorted(
        (
            {"address": r.address, "action": r.action, "status": r.status, "permanent": r.permanent}
            for r in report.failures()
        ),
        key=lambda r: r["address"],
    )


def _cases():
    for name, expected in EXPECTATIONS.items():
        marks = [pytest.mark.xfail(reason=expected["known_miss"], strict=True)] if "known_miss" in expected else []
        yield pytest.param(name, expected, id=name, marks=marks)


def test_every_corpus_file_has_an_expectation():
    files = {p.name for p in CORPUS.glob("*.eml")}
    assert files == set(EXPECTATIONS)


@pytest.mark.parametrize(("name", "expected"), list(_cases()))
def test_corpus_file_parses_exactly_as_expected(name: str, expected: dict):
    report = _parse(name)
    assert report.kind == expected["kind"]
    assert _failed(report) == sorted(expected["failed"], key=lambda r: r["address"])
    if "returned_message_id" in expected:
        assert report.returned_header("Message-ID") == expected["returned_message_id"]
    if "returned_x_virtual_mta" in expected:
        assert report.returned_header("x-virtual-mta") == expected["returned_x_virtual_mta"]
    if "feedback" in expected:
        assert report.feedback is not None
        got = report.feedback
        assert {
            "feedback_type": got.feedback_type,
            "original_rcpt_to": list(got.original_rcpt_to),
            "source_ip": got.source_ip,
        } == expected["feedback"]
    else:
        assert report.feedback is None
    assert (report.problem is None) == (report.kind != "unknown")


def test_recall_and_precision_of_failed_recipients_over_the_corpus(capsys: pytest.CaptureFixture[str]):
    expected_pairs: set[tuple[str, str, bool]] = set()
    found_pairs: set[tuple[str, str, bool]] = set()
    for name, expected in EXPECTATIONS.items():
        expected_pairs |= {(name, r["address"], r["permanent"]) for r in expected["failed"]}
        found_pairs |= {(name, r.address, r.permanent) for r in _parse(name).failures()}
    hits = expected_pairs & found_pairs
    recall = len(hits) / len(expected_pairs)
    precision = len(hits) / len(found_pairs)
    with capsys.disabled():
        print(
            f"\nreport corpus: {len(EXPECTATIONS)} files, {len(expected_pairs)} failed recipients expected, "
            f"{len(found_pairs)} found, {len(hits)} right (address and permanence): "
            f"recall {recall:.1%}, precision {precision:.1%}"
        )
    assert recall >= MIN_RECALL
    assert precision >= MIN_PRECISION


def test_no_corpus_file_reaches_the_parsers_last_line_of_defence():
    for name in EXPECTATIONS:
        assert not (_parse(name).problem or "").startswith(PARSER_ERROR), name


def test_dsn_per_message_and_per_recipient_fields():
    report = _parse("postfix_dsn_user_unknown.eml")
    assert report.reporting_mta == "mail.example.org"
    assert report.arrival_date == "Mon, 30 Nov 2026 08:12:43 +0000 (UTC)"
    (recipient,) = report.recipients
    assert recipient.final_recipient == recipient.original_recipient == "jane.doe@example.org"
    assert recipient.remote_mta == "mx.example.org"
    # A folded Diagnostic-Code reads as one line, its type ("smtp;") dropped.
    assert recipient.diagnostic == (
        "550 5.1.1 <jane.doe@example.org>: Recipient address rejected: User unknown in virtual mailbox table"
    )


def test_dsn_returned_headers_keep_the_stamped_attribution_headers_in_order():
    report = _parse("postfix_dsn_user_unknown.eml")
    names = [name for name, _ in report.returned_headers]
    assert names[:7] == ["Return-Path", "Received", "x-virtual-mta", "x-feedtype", "x-zone", "x-serverid", "From"]
    assert report.returned_header("X-ZONE") == "US-1"
    assert report.returned_header("x-serverid") == "1"
    assert report.returned_header("Received").startswith("from mta1.example.com (mta1.example.com [198.51.100.10]) by")
    assert report.returned_header("no-such-header") is None


def test_original_envelope_id_is_read():
    data = (CORPUS / "rfc3464_delayed.eml").read_bytes().replace(
        b"Reporting-MTA: dns; sun2", b"Original-Envelope-Id: QQ314159\nReporting-MTA: dns; sun2"
    )
    assert parse_report(data).envelope_id == "QQ314159"


def test_complaint_fields_of_the_rfc_5965_example():
    report = _parse("rfc5965_simple.eml")
    fb = report.feedback
    assert fb is not None
    assert (fb.feedback_type, fb.user_agent, fb.version) == ("abuse", "SomeGenerator/1.0", "1")
    assert fb.original_mail_from == "somespammer@example.net"
    assert fb.original_rcpt_to == ("user@example.com",)
    assert fb.arrival_date == "Thu, 8 Mar 2005 14:00:00 EDT"
    assert fb.reported_domain == ("example.net",)
    assert fb.reporting_mta == "mail.example.com"
    assert report.recipients == ()
    assert report.returned_header("Subject") == "Earn money"


def test_complaint_with_only_the_required_fields_and_returned_headers():
    report = _parse("rfc5965_minimal_headers_only.eml")
    assert report.kind == "arf"
    assert report.returned_header("Message-ID") == "8787KJKJ3K4J3K4J3K4J3.mail@example.net"
    assert report.notes == ()


def test_pre_rfc_arf_received_date_stands_for_arrival_date():
    fb = _parse("yahoo_arf_complaint.eml").feedback
    assert fb is not None and fb.arrival_date == "Mon, 30 Nov 2026 19:20:11 +0000"
    assert fb.version == "0.1"


def test_delivered_relayed_and_expanded_recipients_are_kept_but_are_not_failures():
    data = (CORPUS / "rfc3464_multi_recipient.eml").read_bytes().replace(
        b"Action: delayed", b"Action: relayed"
    )
    report = parse_report(data)
    relayed = [r for r in report.recipients if r.address == "johnh@hpnjld.njd.hp.com"]
    assert [(r.action, r.failed, r.permanent) for r in relayed] == [("relayed", False, False)]
    assert len(report.failures()) == 2
