"""The outbound feedback loop piece by piece, in-process: VERP return paths per
recipient, the RFC 3461 parameters kept in the spool record and relayed, which
bounces owe the sender a DSN, and the DSN `Notices` spools (parsed back with the
project's report parser and with the stdlib)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest

from control.contract.snapshot import PoolRoute
from dataplane import spool
from dataplane.config import DeliveryConfig
from dataplane.delivery.notices import Notices
from dataplane.delivery.outcomes import Outcomes, RecipientOutcome
from dataplane.delivery.queue import DeliveryJob, DeliveryQueue, QueuedMessage, Recipient
from dataplane.dsn_relay import (
    mail_fields,
    mail_params,
    next_hop_mail_params,
    next_hop_rcpt_params,
    rcpt_options,
    rcpt_params,
)
from dataplane.dsn_request import MailDsnParams, Ret, parse_mail_params, parse_rcpt_params
from dataplane.reports import parse_report
from dataplane.routing import Routing
from dataplane.return_path import ReturnPaths, bounce_domain_of, bounce_domains, open_codec, uses_verp
from dataplane.smtp_reply import DEFERRED, DELIVERED, Reply
from dataplane.smtp_wire import take_params
from dataplane.stats_batcher import StatsBatcher
from dataplane.verp import VerpCodec
from dataplane.verp_keyring import VerpKeyring
from tests.dataplane_support import HOSTNAME, make_pool, make_snapshot

SENDER = "sender@example.com"


def _record(message_id: str = "", **changes) -> spool.SpoolRecord:
    message_id = message_id or f"{int(time.time() * 1000):012x}aabbccdd000001"  # VERP refuses old ones
    record = spool.SpoolRecord(
        id=message_id, received_ms=int(message_id[:12], 16), server_id=1, snapshot_version=3, worker="h:1:0",
        client_address="127.0.0.1", client_helo="client.example", tls=False, auth="auth", bridge_id=1,
        bridge_username="br-x", user_id=3, smtp_id=7, pool="promo-3-1-pool-7", ip="192.0.2.1",
        ip_hostname="out.example", feed_type="newsletter", zone="US-1", mail_from=SENDER,
        rcpt_tos=("a@example.net", "b@example.net", "c@example.net"), mail_options=(), smtputf8=False,
        message=b"From: Sender <sender@example.com>\r\nSubject: spring sale\r\nMessage-ID: <m1@example.com>\r\n"
                b"\r\nHello.\r\n",
    )
    return replace(record, **changes)


# --- the spool record ---------------------------------------------------------------


def test_a_record_written_before_the_feedback_loop_reads_with_the_defaults():
    record = _record()
    head, packed, *rest = spool.encode_record(record)
    meta = msgpack.unpackb(packed, raw=False)
    for name in ("dsn_ret", "dsn_envid", "rcpt_options", "send_dsns", "bounce_domain", "dsn_of"):
        del meta[name]
    old = msgpack.packb(meta, use_bin_type=True)
    body_len, message, _ = rest
    data = spool.MAGIC + len(old).to_bytes(4, "big") + old + body_len + message
    data += zlib.crc32(data).to_bytes(4, "big")
    decoded = spool.decode_record(data)
    assert decoded == record
    assert (decoded.dsn_ret, decoded.rcpt_options, decoded.send_dsns, decoded.bounce_domain, decoded.dsn_of) == (
        "", (), True, "", "")


def test_the_dsn_parameters_survive_the_record_round_trip():
    params = [parse_rcpt_params(["NOTIFY=failure,delay", "ORCPT=rfc822;Ann+2BList@Example.NET"]),
              parse_rcpt_params([]), parse_rcpt_params(["NOTIFY=NEVER"])]
    record = _record(rcpt_options=rcpt_options(params), send_dsns=False, bounce_domain="bounces.acme.example",
                     **mail_fields(parse_mail_params(["RET=hdrs", "ENVID=QQ+2B314159"])))
    decoded = spool.decode_record(b"".join(spool.encode_record(record)))
    assert decoded == record
    assert [rcpt_params(decoded, i) for i in range(3)] == params
    assert mail_params(decoded) == MailDsnParams(ret=Ret.HDRS, envid="QQ+314159")
    assert rcpt_params(decoded, 7) == rcpt_params(_record(), 0) == parse_rcpt_params([])
    # Nobody gave any: nothing is stored per recipient.
    assert rcpt_options([parse_rcpt_params([])] * 3) == ()
    # A damaged entry reads as none (the defaults apply), never a crash.
    assert rcpt_params(replace(record, rcpt_options=({"notify": "SOMETIMES", "orcpt": 5},)), 0) == parse_rcpt_params([])


def test_the_parameters_are_relayed_as_the_sender_gave_them():
    record = _record(rcpt_options=rcpt_options([
        parse_rcpt_params(["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;first+2Blast+3Dx@example.net"]),
        parse_rcpt_params(["ORCPT=utf-8;j\u00f6rg@example.net"]),
        parse_rcpt_params([])]), **mail_fields(parse_mail_params(["RET=FULL", "ENVID=a+2Bb+3Dc+20d"])))
    assert next_hop_mail_params(record) == ["RET=FULL", "ENVID=a+2Bb+3Dc+20d"]
    assert next_hop_rcpt_params(record, 0, utf8=False) == ["NOTIFY=SUCCESS,FAILURE",
                                                           "ORCPT=rfc822;first+2Blast+3Dx@example.net"]
    assert next_hop_rcpt_params(record, 1, utf8=False) == ["ORCPT=utf-8;j\\x{F6}rg@example.net"]
    assert next_hop_rcpt_params(record, 1, utf8=True) == ["ORCPT=utf-8;j\u00f6rg@example.net"]
    assert next_hop_rcpt_params(record, 2, utf8=False) == [] and next_hop_mail_params(_record()) == []


def test_extension_parameters_are_taken_out_as_written():
    assert take_params("SIZE=10 ret=Hdrs BODY=8BITMIME EnvId=Q+2Bx", frozenset({"RET", "ENVID"})) == (
        "SIZE=10 BODY=8BITMIME", ["ret=Hdrs", "EnvId=Q+2Bx"])
    assert take_params("SIZE=10", frozenset({"RET"})) == ("SIZE=10", [])


# --- VERP return paths ----------------------------------------------------------------


@pytest.fixture
def codec(tmp_path: Path) -> VerpCodec:
    return open_codec(tmp_path)


def test_each_recipient_gets_a_return_path_naming_it(codec, tmp_path):
    record = _record(bounce_domain="bounces.acme.example")
    paths = ReturnPaths(codec)
    addresses = [paths.sender(record, index, None) for index in range(3)]
    assert len(set(addresses)) == 3 and all(a.endswith("@bounces.acme.example") for a in addresses)
    # Another process (the inbound listener) decodes them with the same key file.
    reader = VerpCodec(VerpKeyring.load_or_create(tmp_path / "verp.keys"))
    for index, address in enumerate(addresses):
        token = reader.decode(address, {"bounces.acme.example"})
        assert (token.message_id, token.rcpt_index) == (record.id, index)
    assert (tmp_path / "verp.keys").stat().st_mode & 0o777 == 0o600


def test_the_null_sender_stays_null_and_a_record_without_a_domain_takes_the_snapshots(codec):
    paths = ReturnPaths(codec)
    for null in ("", "<>", " <> "):
        assert paths.sender(_record(mail_from=null), 0, None) == "" and not uses_verp(_record(mail_from=null))
    snapshot = make_snapshot(1, 1, [make_pool(7, [("192.0.2.1", 1)]),
                                    replace(make_pool(8, [("192.0.2.8", 1)]), bounce_domain="b.acme.example")], [])
    routing = Routing(snapshot)
    assert paths.sender(_record(), 0, routing).endswith("@" + HOSTNAME)
    assert paths.sender(_record(smtp_id=8), 0, routing).endswith("@b.acme.example")
    assert paths.sender(_record(smtp_id=99), 0, routing).endswith("@" + HOSTNAME)  # the pool is gone
    # No bounce domain known at all: the sender's own return path.
    assert paths.sender(_record(), 0, None) == SENDER
    # A recipient index VERP cannot carry: the sender's own too, never a crash.
    assert paths.sender(_record(bounce_domain="b.example"), 70000, None) == SENDER


def test_a_pools_bounce_domain_is_its_own_else_the_server_hostname():
    snapshot = make_snapshot(1, 1, [make_pool(7, []), replace(make_pool(8, []), bounce_domain="B.Acme.Example")], [])
    assert bounce_domain_of(snapshot, snapshot.pool(7)) == HOSTNAME
    assert bounce_domain_of(snapshot, snapshot.pool(8)) == "b.acme.example"
    assert bounce_domains(snapshot) == {HOSTNAME, "b.acme.example"}
    unusable = replace(snapshot, hostname="not a hostname")
    assert bounce_domain_of(unusable, unusable.pool(7)) == ""
    assert bounce_domains(unusable) == {"b.acme.example"}


def test_a_pools_bounce_domain_is_its_own_else_the_servers_else_the_hostname():
    snapshot = make_snapshot(1, 1, [make_pool(7, []), replace(make_pool(8, []), bounce_domain="B.Acme.Example")], [])
    named = replace(snapshot, bounce_domain="Bounces.MTA1.Example.")
    assert bounce_domain_of(named, named.pool(7)) == "bounces.mta1.example"
    assert bounce_domain_of(named, named.pool(8)) == "b.acme.example"
    # The hostname stays accepted: mail sent before the server named a domain bounces there.
    assert bounce_domains(named) == {HOSTNAME, "bounces.mta1.example", "b.acme.example"}
    only_own = replace(named, pools=(named.pool(8),))
    assert bounce_domains(only_own) == {HOSTNAME, "bounces.mta1.example", "b.acme.example"}
    unusable = replace(named, bounce_domain="not a domain")
    assert bounce_domain_of(unusable, unusable.pool(7)) == ""
    assert bounce_domains(unusable) == {HOSTNAME, "b.acme.example"}


def test_a_record_of_a_gone_pool_takes_the_servers_bounce_domain(codec):
    snapshot = replace(make_snapshot(1, 1, [make_pool(7, [("192.0.2.1", 1)])], []), bounce_domain="bounces.mta1.example")
    paths = ReturnPaths(codec)
    assert paths.sender(_record(), 0, Routing(snapshot)).endswith("@bounces.mta1.example")
    assert paths.sender(_record(smtp_id=99), 0, Routing(snapshot)).endswith("@bounces.mta1.example")


# --- which bounces owe a DSN, and the DSN ------------------------------------------------


@pytest.mark.parametrize("notify, mail_from, send_dsns, dsn_of, due", [
    ([], SENDER, True, "", True),  # RFC 3461 4.1: FAILURE by default
    (["NOTIFY=FAILURE"], SENDER, True, "", True),
    (["NOTIFY=DELAY,FAILURE"], SENDER, True, "", True),
    (["NOTIFY=NEVER"], SENDER, True, "", False),
    (["NOTIFY=SUCCESS"], SENDER, True, "", False),
    ([], "<>", True, "", False),  # never to the null sender (RFC 5321 4.5.5)
    ([], SENDER, False, "", False),  # the Bridge's switch
    ([], SENDER, True, "0198a5b2c3d4aabbccdd000009", False),  # a DSN's own bounce
])
def test_a_bounce_owes_a_dsn_only_when_rfc_3461_and_the_bridge_say_so(notify, mail_from, send_dsns, dsn_of, due):
    record = _record(mail_from=mail_from, send_dsns=send_dsns, dsn_of=dsn_of,
                     rcpt_options=rcpt_options([parse_rcpt_params(notify)]))
    assert Notices.due(record, Recipient("a@example.net", "example.net", 0)) is due


class _Queue:
    def __init__(self) -> None:
        self.submitted: list[spool.SpoolRecord] = []

    def submit(self, record: spool.SpoolRecord, now: float) -> None:
        self.submitted.append(record)


class _Stats:
    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def count(self, field: str, smtp_id: int, address: str, n: int = 1) -> None:
        self.counts[(field, smtp_id, address)] += n

    def event(self, message_id: str, event_json: str) -> None:
        pass

    @staticmethod
    def count_record(field: str, smtp_id: int, address: str, n: int = 1) -> list:
        return ["c", field, 0, smtp_id, address, n]

    event_record = staticmethod(StatsBatcher.event_record)
    suppression_record = staticmethod(StatsBatcher.suppression_record)

    def begin(self, check: list, records: list[list]) -> list[list]:
        return records

    def end(self, group: list[list], committed: bool = True) -> None:
        for record in group if committed else ():
            if record[0] == "c":
                self.count(*record[1:2], *record[3:])


def _bounce(rcpt: str, text: str = "5.1.1 no such user (sink rule bounce*)") -> dict:
    return {"at_ms": 1_760_000_000_000, "rcpt": rcpt, "outcome": "bounced", "code": 550, "text": text,
            "ip": "192.0.2.1", "mx": "mx.example.net[192.0.2.99]:25", "attempt": 1, "dsn": spool.DSN_OWED}


async def _send(tmp_path: Path, record: spool.SpoolRecord, entries: list[dict]):
    store = spool.Spool(tmp_path / "spool")
    store.open()
    try:
        await store.store(record)
        queue, stats = _Queue(), _Stats()
        config = SimpleNamespace(hostname="mta1.example.net")
        notices = Notices(config, loader=SimpleNamespace(current=None), spool=store, queue=queue, stats=stats,
                          metrics=Counter())
        message = QueuedMessage(record=replace(record, message=b""), pending={}, deadline=0.0, ip="192.0.2.1",
                                helo="out.example", attempts=list(entries))
        assert await notices.send(message) is True
        return queue.submitted, stats.counts, message
    finally:
        store.close()


async def test_one_dsn_covers_the_recipients_that_bounced_together(tmp_path):
    record = _record(rcpt_options=rcpt_options([parse_rcpt_params(["ORCPT=rfc822;Alias+2Ba@example.net"]),
                                                parse_rcpt_params([]), parse_rcpt_params([])]),
                     **mail_fields(parse_mail_params(["ENVID=spring-42"])))
    delivered = {**_bounce("b@example.net"), "outcome": "delivered", "code": 250, "text": "ok"}
    del delivered["dsn"]
    entries = [_bounce("a@example.net"), delivered,
               _bounce("c@example.net", "5.4.7 delivery time expired after 3d (9 attempt(s))")]
    submitted, counts, message = await _send(tmp_path, record, entries)
    assert len(submitted) == 1
    dsn = submitted[0]
    assert (dsn.mail_from, dsn.rcpt_tos, dsn.dsn_of, dsn.smtp_id, dsn.pool, dsn.ip, dsn.send_dsns) == (
        "", (SENDER,), record.id, 7, record.pool, "192.0.2.1", False)
    assert [e.get("dsn") for e in message.attempts] == [dsn.id, None, dsn.id]
    assert counts == {("dsn_sent", 7, "192.0.2.1"): 1}

    report = parse_report(dsn.message)
    assert report.kind == "dsn"
    # The parser names a recipient by its Original-Recipient (the ORCPT) when it has one.
    assert [(r.address, r.status, r.permanent) for r in report.recipients] == [
        ("Alias+a@example.net", "5.1.1", True), ("c@example.net", "5.4.7", True)]
    parsed = email.message_from_bytes(dsn.message, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status" and parsed["To"].addresses[0].addr_spec == SENDER
    assert parsed["x-virtual-mta"] == record.pool and parsed["x-zone"] == "US-1"
    text, status, returned = parsed.get_payload()
    assert returned.get_content_type() == "text/rfc822-headers"  # no RET: the headers only
    blocks = status.get_payload()
    assert blocks[0]["Original-Envelope-Id"] == "spring-42" and blocks[0]["Reporting-MTA"] == "dns; mta1.example.net"
    assert blocks[1]["Original-Recipient"] == "rfc822; Alias+a@example.net"
    assert blocks[1]["Remote-MTA"] == "dns; mx.example.net"


async def test_ret_full_returns_the_whole_message(tmp_path):
    record = _record(**mail_fields(parse_mail_params(["RET=FULL"])))
    submitted, _, _ = await _send(tmp_path, record, [_bounce("a@example.net")])
    returned = email.message_from_bytes(submitted[0].message, policy=email.policy.default).get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0]["Subject"] == "spring sale"


async def test_a_sender_no_dsn_can_reach_is_logged_and_never_retried(tmp_path):
    record = _record(mail_from="not an address")
    submitted, counts, message = await _send(tmp_path, record, [_bounce("a@example.net")])
    assert submitted == [] and not counts and message.attempts[0]["dsn"] == "none"
    assert not spool.owes_dsn(message.attempts)


def test_a_pool_route_without_a_bounce_domain_means_the_server_hostname():
    assert PoolRoute(smtp_id=1, user_id=1, internal_name="p", feed_type="", headers=(), ips=()).bounce_domain == ""


class _CountingSpool(spool.Spool):
    """The real spool, counting its record rewrites."""

    rewrites = 0

    async def rewrite_attempts(self, message_id: str, attempts: tuple[dict, ...]) -> None:
        self.rewrites += 1
        await super().rewrite_attempts(message_id, attempts)


async def test_jobs_finishing_during_a_rewrite_share_the_next_one(tmp_path):
    store = _CountingSpool(tmp_path / "spool")
    store.open()
    try:
        record = _record(rcpt_tos=tuple(f"r{i}@example.net" for i in range(4)))
        await store.store(record)
        delivery = DeliveryConfig()
        queue = DeliveryQueue(delivery, store, owners=1, index=0, start_job=lambda job: None,
                              settle=lambda message: None)
        notices = Notices(SimpleNamespace(hostname="mta1.example.net"), loader=SimpleNamespace(current=None),
                          spool=store, queue=queue, stats=_Stats(), metrics=Counter())
        outcomes = Outcomes(delivery, queue=queue, spool=store, stats=_Stats(), notices=notices, metrics=Counter())
        queue.submit(record, now=time.time())
        message = queue._messages[record.id]
        jobs = [DeliveryJob(message, "example.net", [rcpt]) for rcpt in message.pending.values()]
        message.jobs = len(jobs)
        for job in jobs:
            job.rcpts[0].busy = True

        def result(job, i):
            outcome = DEFERRED if i == 3 else DELIVERED
            return [RecipientOutcome(job.rcpts[0], Reply(451 if i == 3 else 250, "x"), outcome)]

        await asyncio.gather(*(outcomes.finish_job(job, result(job, i), "mx") for i, job in enumerate(jobs)))
        # The first job's rewrite carried its own entry; the other three share the second.
        assert store.rewrites == 2
        assert len((await store.read(record.id)).attempts) == 4
    finally:
        store.close()
