"""The feedback loop end to end, with real parts: the control plane (in process),
a data plane delivering to a sink, and its inbound listener taking reports for the
mail the sink really received. An RFC 3464 DSN, an RFC 5965 ARF report and a
nonstandard (qmail) bounce each move the right pool and IP counters, once; a
4.x.x DSN moves nothing; StatsService and GetMessageStatus show it all at once."""

from __future__ import annotations

import asyncio
from collections import Counter

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.contract import rediskeys
from tests.dataplane_support import events_of, send_all, sink_outcomes
from tests.inbound_support import arf, codec_of, dsn, qmail_bounce, return_path, returned_headers, send_report
from tests.support import eventually

IPS = ("127.0.0.2", "127.0.0.3")
RCPTS = ("ann@example.net", "bob@example.net", "cid@example.net", "dan@example.net")


def _message(n: int, rcpt: str) -> bytes:
    return (f"From: Sender <sender@acme.example>\r\nTo: <{rcpt}>\r\nSubject: feedback {n}\r\n"
            f"Message-ID: <feedback-{n}@acme.example>\r\n\r\nHello {n}.\r\n").encode()


async def _setup(acme, server, redis_url, start_dataplane, start_sink):
    pool = await acme.pools.CreatePool(pb.CreatePoolRequest(label="promo", server_id=server.server_id))
    for address in IPS:
        await acme.ips.ProvisionIp(pb.ProvisionIpRequest(address=address, smtp_id=pool.smtp_id))
    bridge = await acme.bridges.CreateBridge(pb.CreateBridgeRequest(name="app", smtp_id=pool.smtp_id))
    sink = await asyncio.to_thread(start_sink)
    plane = await asyncio.to_thread(start_dataplane, redis_url, server.server_id, delivery=True,
                                    args=("--route", f"*={sink.address}"))
    return pool, bridge, sink, plane


async def _ip_stats(acme) -> dict[str, tuple[int, int, int, int]]:
    found = {}
    for address in IPS:
        s = await acme.stats.GetIpStats(pb.GetIpStatsRequest(address=address))
        found[address] = (s.sent, s.delivered, s.bounced, s.complaints)
    return found


async def test_reports_for_mail_really_sent_move_the_pool_and_ip_counters_once(
        acme, server, redis_url, redis_client, start_dataplane, start_sink):
    pool, bridge, sink, plane = await _setup(acme, server, redis_url, start_dataplane, start_sink)
    originals = {n: _message(n, rcpt) for n, rcpt in enumerate(RCPTS)}
    ids = await asyncio.to_thread(send_all, plane.port, bridge.bridge.username, bridge.secret,
                                  [(n, [RCPTS[n]], raw) for n, raw in originals.items()], sessions=2)

    async def delivered() -> bool:
        stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
        return stats.delivered == len(RCPTS)

    await eventually(delivered, timeout=30)
    # Where each recipient was delivered from: its event, and what the sink saw arrive.
    event = {n: events_of(redis_client, ids[n])[-1] for n in ids}
    per_peer, _ = sink_outcomes(sink.log())
    assert per_peer == Counter(e["ip"] for e in event.values())
    assert await _ip_stats(acme) == {ip: (per_peer[ip], per_peer[ip], 0, 0) for ip in IPS}

    codec = codec_of(plane.data_dir)
    domain = server.hostname

    def verp(n: int) -> str:
        return return_path(codec, ids[n], event[n]["rcpt_index"], domain)

    # 1. An RFC 3464 DSN to the VERP return path, twice: counted once.
    report = dsn(RCPTS[0], returned=returned_headers(originals[0]))
    first = await asyncio.to_thread(send_report, plane.inbound_port, report, [verp(0)])
    again = await asyncio.to_thread(send_report, plane.inbound_port, report, [verp(0)])
    assert first[0] == 250 and "counted (1 bounce(s))" in first[1], first
    assert again[0] == 250 and "counted already" in again[1], again
    # 2. A 4.x.x DSN moves nothing.
    delayed = dsn(RCPTS[3], status="4.2.2", action="delayed", diagnostic="smtp; 452 4.2.2 mailbox full")
    code, text = await asyncio.to_thread(send_report, plane.inbound_port, delayed, [verp(3)])
    assert code == 250 and "nothing to count" in text, text
    # 3. An ARF complaint to the FBL address, its Original-Mail-From the VERP return path.
    complaint = arf(rcpt=RCPTS[1], mail_from=verp(1), source_ip=event[1]["ip"], returned=originals[1].decode())
    code, text = await asyncio.to_thread(send_report, plane.inbound_port, complaint, [f"fbl@{domain}"])
    assert code == 250 and "1 complaint(s)" in text, text
    # 4. A qmail bounce to postmaster: only the returned headers (Message-ID, in the
    #    message index the Bridge filled, and x-virtual-mta) say which message it was.
    returned = ("Return-Path: <sender@acme.example>\n"
                f"Received: from out.example ([{event[2]['ip']}]) by mx.example.net; Mon, 30 Nov 2026 08:00:00 +0000\n"
                + returned_headers(originals[2]) + f"x-virtual-mta: {pool.internal_name}\n")
    code, text = await asyncio.to_thread(send_report, plane.inbound_port, qmail_bounce(RCPTS[2], returned=returned),
                                         [f"postmaster@{domain}"])
    assert code == 250 and "1 bounce(s)" in text, text

    # Visible in StatsService at once (the 250 came after Redis had it).
    stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
    assert (stats.sent, stats.delivered, stats.bounced, stats.complaints) == (4, 2, 2, 1)
    expected = {ip: [per_peer[ip], per_peer[ip], 0, 0] for ip in IPS}
    for n, field in ((0, 2), (2, 2), (1, 3)):
        expected[event[n]["ip"]][field] += 1
        if field == 2:
            expected[event[n]["ip"]][1] -= 1
    assert await _ip_stats(acme) == {ip: tuple(v) for ip, v in expected.items()}
    assert {row.address: (row.delivered, row.bounced, row.complaints) for row in stats.ips} == {
        ip: tuple(v[1:]) for ip, v in expected.items()}
    assert stats.sent == stats.delivered + stats.bounced  # nothing in flight

    # GetMessageStatus shows the asynchronous events after the delivery.
    status = await acme.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id=ids[0]))
    assert [(e.outcome, e.source, e.final) for e in status.events] == [(pb.DELIVERED, "", True),
                                                                         (pb.BOUNCED, "dsn", True)]
    assert "asynchronous DSN from mx.example.net" in status.events[1].reply
    assert status.events[1].ip == event[0]["ip"] and status.events[1].recipient == RCPTS[0]
    status = await acme.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id=ids[1]))
    assert [(e.outcome, e.source) for e in status.events] == [(pb.DELIVERED, ""), (pb.COMPLAINED, "arf")]
    status = await acme.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id=ids[2]))
    assert [(e.outcome, e.source) for e in status.events] == [(pb.DELIVERED, ""), (pb.BOUNCED, "nonstandard")]
    status = await acme.stats.GetMessageStatus(pb.GetMessageStatusRequest(message_id=ids[3]))
    assert [e.outcome for e in status.events] == [pb.DELIVERED]

    # The account's suppression list has the bounced and the complaining recipients.
    suppressed = redis_client.hgetall(rediskeys.suppression_key(event[0]["user_id"]))
    assert sorted(k.decode() for k in suppressed) == sorted([RCPTS[0], RCPTS[1], RCPTS[2]])


async def test_a_complaint_without_a_message_counts_for_the_pool_and_ip_its_headers_name(
        acme, server, redis_url, start_dataplane, start_sink):
    pool, _, _, plane = await _setup(acme, server, redis_url, start_dataplane, start_sink)
    # A feedback loop that returns only a redacted copy: no VERP, no Message-ID of ours.
    returned = ("Received: from out-127-0-0-3.example (out-127-0-0-3.example [127.0.0.3])\n"
                "\tby mx.example.org with ESMTPS; Mon, 30 Nov 2026 08:00:00 +0000\n"
                f"x-virtual-mta: {pool.internal_name}\nSubject: [redacted]\n\n[redacted]\n")
    report = arf(returned=returned)
    for _ in range(2):  # the same report twice counts once
        code, text = await asyncio.to_thread(send_report, plane.inbound_port, report, [f"abuse@{server.hostname}"])
        assert code == 250, text
    stats = await acme.stats.GetPoolStats(pb.GetPoolStatsRequest(smtp_id=pool.smtp_id))
    assert stats.complaints == 1 and {r.address: r.complaints for r in stats.ips} == {"127.0.0.2": 0, "127.0.0.3": 1}
    ip = await acme.stats.GetIpStats(pb.GetIpStatsRequest(address="127.0.0.3"))
    assert (ip.sent, ip.complaints) == (0, 1)
