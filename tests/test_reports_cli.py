"""`python -m dataplane.reports parse FILE... [--json]` run as a subprocess on
corpus files: the JSON document, the table, unknown reports (exit 0), unreadable
files (exit 2, named on stderr), and standard input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "reports"


def _run(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataplane.reports", "parse", *args], cwd=cwd,
        input=None if stdin is None else stdin.decode("utf-8"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_json_lists_each_file_with_kind_and_recipients():
    files = ["postfix_dsn_multi_recipient.eml", "yahoo_arf_complaint.eml", "qmail_permanent.eml",
             "out_of_office_autoreply.eml"]
    done = _run(*(str(CORPUS / name) for name in files), "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [Path(r["file"]).name for r in results] == files
    assert [r["kind"] for r in results] == ["dsn", "arf", "nonstandard", "unknown"]

    dsn = results[0]
    assert [(r["address"], r["status"], r["permanent"]) for r in dsn["recipients"]] == [
        ("ana@example.org", "5.1.1", True),
        ("Bruno.Silva@example.net", "5.7.1", True),
        ("chloe@example.com", "4.2.2", False),
    ]
    assert dsn["recipients"][2]["diagnostic"] == "452 4.2.2 Mailbox full"
    assert ["x-virtual-mta", "txn-42-1-pool-9"] in dsn["returned_headers"]
    assert dsn["reporting_mta"] == "relay.example.org"
    assert dsn["problem"] is None

    arf = results[1]
    assert arf["recipients"] == []
    assert arf["feedback"]["feedback_type"] == "abuse"
    assert arf["feedback"]["original_rcpt_to"] == ["complainer@yahoo.com"]
    assert arf["feedback"]["source_ip"] == "198.51.100.11"

    assert results[2]["recipients"][0]["address"] == "gone@example.net"
    assert results[3]["problem"]


def test_table_shows_one_row_per_recipient():
    # Short names, from the corpus directory: the table shortens a long file column.
    done = _run("sendmail_dsn.eml", "newsletter_not_a_report.eml", cwd=CORPUS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["file", "kind", "recipient", "status", "action", "permanent", "diagnostic"]
    rows = [line.split() for line in lines if "sendmail_dsn.eml" in line]
    assert [(row[2], row[3], row[4], row[5]) for row in rows] == [
        ("prof.lee@example.edu", "5.1.1", "failed", "yes"),
        ("old.student@example.edu", "5.2.2", "failed", "yes"),
    ]
    assert any("newsletter_not_a_report.eml" in line and "unknown" in line for line in lines)


def test_unreadable_file_exits_2_and_the_others_are_still_printed(tmp_path: Path):
    missing = tmp_path / "missing.eml"
    done = _run(str(missing), str(tmp_path), str(CORPUS / "rfc3464_delayed.eml"), "--json")
    assert done.returncode == 2
    assert f"cannot read {missing}" in done.stderr
    assert f"cannot read {tmp_path}" in done.stderr
    assert [r["kind"] for r in json.loads(done.stdout)] == ["dsn"]


def test_standard_input_is_read_for_a_dash():
    done = _run("-", "--json", stdin=(CORPUS / "rfc5965_simple.eml").read_bytes())
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert (result["file"], result["kind"]) == ("-", "arf")


def test_parse_needs_a_file():
    done = _run()
    assert done.returncode == 2
    assert "FILE" in done.stderr
