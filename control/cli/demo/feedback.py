"""The feedback loop, shown with mail the demo really sent: one asynchronous bounce
(an RFC 3464 DSN) and one complaint (an RFC 5965 ARF report) go to the data plane's
inbound listener, the way a receiving MTA and a mailbox provider's feedback loop
would send them, and StatsService counts both.

Both reports are about messages the sink accepted (so StatsService counted them
delivered). The DSN goes to the message's VERP return path, exactly as the sink
saw it in MAIL FROM: the bounce moves that recipient from delivered to bounced, in
its Pool and on the IP it left from. The ARF report goes to the bounce domain's
feedback address and names the other message's return path in Original-Mail-From:
one complaint on that IP and Pool. The reports are built here with the stdlib
`email` package (the control plane does not import the data plane's parser); the
listener parses and attributes them like any others.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid

import aiosmtplib

from ..._pb.poolmta.v1 import poolmta_pb2 as pb
from . import DemoError
from .provision import Api, ProvisionedPool
from .stack import Stack

# How long StatsService may take to show a report the listener answered 250 for.
COUNTED_TIMEOUT = 10.0
# The VERP return paths poolmta writes start with this (see dataplane/verp.py).
VERP_PREFIX = "b-"


@dataclass(frozen=True)
class FedReport:
    """One report fed to the listener: what it says and what StatsService shows after."""

    kind: str  # "DSN (asynchronous bounce)" | "ARF (complaint)"
    rcpt: str  # the recipient it is about
    return_path: str  # the VERP return path that attributes it
    address: str  # the source IP the message left from
    pool: str  # the Pool's label
    reply: str  # the listener's reply
    counted: str  # what StatsService shows now


def delivered_records(stack: Stack, pool: ProvisionedPool, count: int) -> list[dict]:
    """The sink's log records of the first `count` messages of `pool` it accepted with a
    VERP return path and one ordinary recipient (not one the sink bounces or defers)."""
    found = []
    for line in stack.sink_log_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        rcpts = record.get("rcpts") or []
        if (record.get("x-virtual-mta") == pool.pool.internal_name and len(rcpts) == 1
                and str(record.get("mail_from", "")).startswith(VERP_PREFIX)
                and not rcpts[0].startswith(("bounce", "defer"))):
            found.append(record)
            if len(found) == count:
                return found
    raise DemoError(f"the sink has no {count} message(s) of {pool.pool.label} with a VERP return path to report on")


def returned_headers(stack: Stack, record: dict) -> str:
    """The header section of the message as the sink stored it (what a report returns)."""
    raw = (stack.sink_store_dir / f"{record['n']}.eml").read_bytes().decode("utf-8", "replace")
    return raw.replace("\r\n", "\n").split("\n\n", 1)[0] + "\n"


def _report(kind: str, human: str, machine: Message, headers: str, *, sender: str, to: str, subject: str) -> bytes:
    """A multipart/report (RFC 6522) of `kind`: the human-readable part, the
    machine-readable one, and the returned header section."""
    report = MIMEMultipart("report", report_type=kind)
    report.attach(MIMEText(human))
    report.attach(machine)
    returned = MIMEBase("text", "rfc822-headers")
    returned.set_payload(headers)
    report.attach(returned)
    report["From"], report["To"], report["Subject"] = sender, to, subject
    report["Date"] = format_datetime(_now())
    report["Message-ID"] = make_msgid(domain="receiver.example")
    return report.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _fields(subtype: str, *blocks: list[tuple[str, str]]) -> Message:
    """A message/`subtype` part holding field blocks (RFC 3464 §2.1, RFC 5965 §3.1).

    The stdlib writes message/delivery-status from a list of header blocks, and any
    other message/* subtype from its text."""
    part = MIMEBase("message", subtype)
    if subtype == "delivery-status":
        payload = []
        for block in blocks:
            fields = Message()
            for name, value in block:
                fields[name] = value
            payload.append(fields)
        part.set_payload(payload)
    else:
        part.set_payload("\n".join("".join(f"{name}: {value}\n" for name, value in block) for block in blocks))
    return part


def dsn_for(record: dict, headers: str) -> bytes:
    """An RFC 3464 DSN saying the recipient of `record` failed after all: 5.1.1."""
    rcpt = record["rcpts"][0]
    status = _fields("delivery-status",
                     [("Reporting-MTA", "dns; mx.receiver.example"),
                      ("Arrival-Date", format_datetime(_now()))],
                     [("Final-Recipient", f"rfc822; {rcpt}"), ("Action", "failed"), ("Status", "5.1.1"),
                      ("Remote-MTA", "dns; mx.receiver.example"),
                      ("Diagnostic-Code", "smtp; 550 5.1.1 mailbox no longer exists (demo)")])
    return _report("delivery-status", f"Your message to <{rcpt}> could not be delivered after all.\n", status,
                   headers, sender="MAILER-DAEMON@mx.receiver.example", to=record["mail_from"],
                   subject="Undelivered Mail Returned to Sender")


def arf_for(record: dict, headers: str, feedback_address: str) -> bytes:
    """An RFC 5965 abuse report: the recipient of `record` marked it as spam."""
    feedback = _fields("feedback-report",
                       [("Feedback-Type", "abuse"), ("User-Agent", "poolmta-demo-fbl/1.0"), ("Version", "1"),
                        ("Original-Mail-From", f"<{record['mail_from']}>"),
                        ("Original-Rcpt-To", f"<{record['rcpts'][0]}>"),
                        ("Source-IP", record["peer"]), ("Arrival-Date", format_datetime(_now()))])
    return _report("feedback-report", "This is an email abuse report (demo).\n", feedback, headers,
                   sender="fbl@provider.example", to=feedback_address, subject="Abuse report")


async def _send(stack: Stack, mail_from: str, rcpt: str, raw: bytes) -> str:
    host, port = stack.inbound_address
    if not port:
        raise DemoError("the data plane did not say where its inbound listener is")
    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=30) as smtp:
        errors, reply = await smtp.sendmail(mail_from, [rcpt], raw)
    if errors:
        raise DemoError(f"the inbound listener refused {rcpt}: {errors}")
    return reply


async def feed_reports(stack: Stack, api: Api, pool: ProvisionedPool) -> list[FedReport]:
    """Send one DSN and one ARF report about two delivered messages of `pool` and wait
    until StatsService counts them: the bounced recipient moved from delivered to
    bounced, the complaint on its IP. DemoError when it does not within a few seconds."""
    bounced, complained = delivered_records(stack, pool, 2)
    before = await _pool_stats(api, pool)
    complaints_before = {ip.address: ip.complaints for ip in before.ips}
    domain = complained["mail_from"].rpartition("@")[2]

    dsn_reply = await _send(stack, "", bounced["mail_from"], dsn_for(bounced, returned_headers(stack, bounced)))
    arf_reply = await _send(stack, "fbl@provider.example", f"fbl@{domain}",
                            arf_for(complained, returned_headers(stack, complained), f"fbl@{domain}"))

    def counted(s: pb.PoolStats) -> bool:
        complaints = {ip.address: ip.complaints for ip in s.ips}
        return (s.delivered == before.delivered - 1 and s.bounced == before.bounced + 1
                and complaints.get(complained["peer"], 0) == complaints_before.get(complained["peer"], 0) + 1)

    deadline = time.monotonic() + COUNTED_TIMEOUT
    while not counted(after := await _pool_stats(api, pool)):
        if time.monotonic() > deadline:
            raise DemoError(f"StatsService did not count the fed reports within {COUNTED_TIMEOUT:g}s: "
                            f"{pool.pool.label} delivered {before.delivered} -> {after.delivered}, "
                            f"bounced {before.bounced} -> {after.bounced}")
        await asyncio.sleep(0.1)
    ips = {ip.address: ip for ip in after.ips}
    bounced_ip, complained_ip = ips[bounced["peer"]], ips[complained["peer"]]
    return [
        FedReport("DSN (asynchronous bounce)", bounced["rcpts"][0], bounced["mail_from"], bounced["peer"],
                  pool.pool.label, dsn_reply,
                  f"{pool.pool.label}: delivered {before.delivered:,} -> {after.delivered:,}, bounced "
                  f"{before.bounced:,} -> {after.bounced:,}; {bounced_ip.address} bounced {bounced_ip.bounced:,}"),
        FedReport("ARF (complaint)", complained["rcpts"][0], complained["mail_from"], complained["peer"],
                  pool.pool.label, arf_reply,
                  f"{complained_ip.address} complaints {complaints_before.get(complained['peer'], 0)} -> "
                  f"{complained_ip.complaints}"),
    ]


async def _pool_stats(api: Api, pool: ProvisionedPool) -> pb.PoolStats:
    return await api("stats", "GetPoolStats", pb.GetPoolStatsRequest(smtp_id=pool.pool.smtp_id, window=pb.LIFETIME))


def _now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)
