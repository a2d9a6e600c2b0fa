"""The inbound listener as a remote MTA meets it (a real data plane, real sockets):
it is never a relay, refuses forged return paths at RCPT, keeps malformed and
unattributable reports for the operator (listed through the control plane and
`poolmta report unattributed`), refuses what is over its size cap, stays up
through all of it, and holds to its connection limit."""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from tests.inbound_support import BOUNDARY, arf, codec_of, dsn, send_report

CORPUS = Path(__file__).parent / "data" / "reports"
MB = 1024 * 1024


async def _plane(server, start_dataplane, redis_url, *args: str):
    return await asyncio.to_thread(start_dataplane, redis_url, server.server_id, args=args)


def _truncated_dsn() -> bytes:
    whole = dsn("a@example.net")
    return whole[: whole.index(b"Action:")]  # cut in the middle of the delivery-status part


def _wrong_report_type() -> bytes:
    # A read receipt (RFC 8098) says "disposition-notification": no bounce, no complaint.
    return (f'Content-Type: multipart/report; report-type=disposition-notification; boundary="{BOUNDARY}"\r\n'
            f"Subject: Read: hello\r\n\r\n--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nYour message was read."
            f"\r\n--{BOUNDARY}\r\nContent-Type: message/disposition-notification\r\n\r\n"
            f"Final-Recipient: rfc822; a@example.net\r\nDisposition: manual-action/MDN-sent-manually; displayed"
            f"\r\n\r\n--{BOUNDARY}--\r\n").encode()


async def test_malformed_and_unattributable_reports_are_kept_and_the_listener_stays_up(
        control_plane, admin, server, redis_url, start_dataplane):
    plane = await _plane(server, start_dataplane, redis_url)
    fbl = f"fbl@{server.hostname}"
    # Random bytes in CRLF lines (smtplib would make any other line break CRLF).
    noise = os.urandom(MB).translate(bytes.maketrans(b"\r\n", b"xy"))
    garbage = b"\r\n".join(noise[i:i + 98] for i in range(0, len(noise), 98)) + b"\r\n"
    sent = {
        "truncated MIME": _truncated_dsn(),
        "wrong report-type": _wrong_report_type(),
        "garbage": garbage,
        "nothing attributable": dsn("a@example.net", returned="Message-ID: <never-sent@example.com>\n"),
    }
    for name, raw in sent.items():
        code, text = await asyncio.to_thread(send_report, plane.inbound_port, raw, [fbl])
        assert (code, "kept for the operator" in text) == (250, True), (name, code, text)
    # The same garbage again is a retransmission: kept once.
    assert (await asyncio.to_thread(send_report, plane.inbound_port, garbage, [fbl]))[0] == 250
    # Over the size cap (10 MB by default): 552 after reading it through, nothing kept.
    huge = b"garbage " * (11 * MB // 8)
    code, text = await asyncio.to_thread(send_report, plane.inbound_port, huge, [fbl])
    assert code == 552 and "10485760 bytes" in text, text

    reply = await admin.servers.ListUnattributedReports(pb.ListUnattributedReportsRequest(server_id=server.server_id))
    assert (reply.unattributed_total, reply.too_big_total) == (4, 1)
    reasons = [r.reason for r in reversed(reply.reports)]  # oldest first, as sent
    assert reasons[0].startswith("not a bounce or complaint") and reasons[1].startswith("not a bounce or complaint")
    assert reasons[3] == "Message-ID <never-sent@example.com> is not in the message index"
    garbage_entry = reply.reports[1]
    assert (garbage_entry.size, garbage_entry.truncated, garbage_entry.rcpt_to, garbage_entry.kind) == (
        len(garbage), True, [fbl], "unknown")
    assert garbage_entry.raw == garbage[:len(garbage_entry.raw)] and garbage_entry.peer == "127.0.0.1"

    # The listener is still up: a real report after all that is answered.
    code, _ = await asyncio.to_thread(send_report, plane.inbound_port, dsn("a@example.net", status="4.0.0",
                                                                          action="delayed"), [fbl])
    assert code == 250

    # `poolmta report unattributed` lists the same, through the control plane.
    listed = json.loads(await asyncio.to_thread(_poolmta, control_plane, "report", "unattributed", "--json"))
    assert listed["unattributed_total"] == "4" and len(listed["reports"]) == 4
    table = await asyncio.to_thread(_poolmta, control_plane, "report", "unattributed", "--limit", "1")
    assert "4 report(s) accepted but not attributed" in table and "not in the message index" in table


def _poolmta(control_plane, *args: str) -> str:
    """Run the `poolmta` command line against the test's control plane with the admin token."""
    token = control_plane.admin_token_path.read_text().strip()
    done = subprocess.run([sys.executable, "-m", "control.cli", "--grpc", control_plane.grpc_address,
                           f"--token={token}", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_it_is_never_a_relay_and_refuses_forged_return_paths(server, redis_url, start_dataplane, tmp_path):
    plane = await _plane(server, start_dataplane, redis_url)
    codec = codec_of(plane.data_dir)
    good = codec.encode("0" * 26, 0, server.hostname)
    forged = good[:8] + ("a" if good[8] != "a" else "b") + good[9:]
    with smtplib.SMTP("127.0.0.1", plane.inbound_port, timeout=30) as client:
        code, features = client.ehlo("mx.example.net")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.mail("<>")[0] == 250
        for rcpt, why in (("victim@example.com", b"not a bounce or feedback address"),
                          (f"info@{server.hostname}", b"not a bounce or feedback address"),
                          (forged, b"MAC does not match")):
            code, text = client.rcpt(rcpt)
            assert (code, why in text) == (550, True), (rcpt, code, text)
        assert client.rcpt(f"postmaster@{server.hostname}")[0] == 250


async def test_connections_past_the_limit_get_421(server, redis_url, start_dataplane):
    plane = await _plane(server, start_dataplane, redis_url, "--inbound-max-connections", "1")
    with smtplib.SMTP("127.0.0.1", plane.inbound_port, timeout=30) as first:
        assert first.noop()[0] == 250
        with smtplib.SMTP(timeout=30) as second:
            code, text = second.connect("127.0.0.1", plane.inbound_port)
            assert code == 421 and b"Too many connections" in text
    with smtplib.SMTP("127.0.0.1", plane.inbound_port, timeout=30) as again:  # the slot is free again
        assert again.noop()[0] == 250


def test_poolmta_report_parse_prints_the_parsers_result(tmp_path):
    files = [str(CORPUS / "qmail_permanent.eml"), str(tmp_path / "arf.eml")]
    Path(files[1]).write_bytes(arf(rcpt="b@example.net", source_ip="192.0.2.7"))
    done = subprocess.run([sys.executable, "-m", "control.cli", "report", "parse", *files, "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    assert [p["kind"] for p in parsed] == ["nonstandard", "arf"]
    assert [(r["address"], r["permanent"]) for r in parsed[0]["recipients"]] == [("gone@example.net", True)]
    assert parsed[1]["feedback"]["source_ip"] == "192.0.2.7"
