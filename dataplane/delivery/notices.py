"""Notices: the DSNs (RFC 3464) a sender gets for its bounced recipients.

When a recipient bounces (a 5yz during delivery, or the end of the queue
lifetime) and a DSN is due (`dsn_request.dsn_due`: never to the null sender;
the recipient's NOTIFY honoured, FAILURE by default; the Bridge's DSN switch
as it was at acceptance, kept in the record), outcomes writes the bounce into
the spool record with `"dsn": "owed"`: the bounce and the DSN owed for it
become durable together. When no job of the message is running any more (the
end of a delivery round), `send` builds one DSN covering every owed recipient
(`dataplane.dsn.build_dsn`, the sender's RET honoured, ORCPT and ENVID
reported), spools it, and only then marks the entries with the DSN's id (or
removes the record). A crash in between repeats at most the DSN, never loses
it: a record read back with owed entries sends them first.

The DSN is a message of its own from the null sender (`mail_from` ""), to the
original envelope sender, through the same pool and source IP (its
attribution; the four attribution headers stamped), marked with `dsn_of` (the
id it reports on) and counted apart: `dsn_sent` when spooled, then
`dsn_delivered` / `dsn_bounced` / `dsn_deferred` (outcomes), never the Pool's
sent / delivered / bounced, which count the senders' own mail. A DSN that
bounces produces no DSN: its sender is null.

Only failures are reported: success and delay notices are not generated (a
next hop that speaks DSN gets NOTIFY and honours it itself, `dataplane.dsn_relay`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from datetime import UTC, datetime

from _fastpath import inject
from control.contract.headers import STAMPED_HEADERS

from ..config import DataplaneConfig
from ..dsn import DsnRecipient, build_dsn
from ..dsn_relay import mail_params, rcpt_params
from ..dsn_request import Action, dsn_due
from ..smtp_reply import Reply
from ..spool import DSN_OWED, Spool, SpoolCorrupt, SpoolError, SpoolRecord
from .queue import DeliveryQueue, QueuedMessage, Recipient

log = logging.getLogger("poolmta.dataplane.delivery")

# The entry's "dsn" when no DSN can be made for it (e.g. a sender no DSN can be addressed to).
DSN_NONE = "none"


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _remote_host(mx: str) -> str | None:
    """The host of an attempt's `mx` ("mx.example[192.0.2.9]:25", "192.0.2.9:25") for
    Remote-MTA; None when no remote host answered."""
    if not mx:
        return None
    host = mx.partition("[")[0]
    if host == mx:  # no name: "address:port"
        host = mx.rpartition(":")[0] or mx
    return host or None


def _status(entry: dict) -> str:
    """The RFC 3463 code of a bounce: the reply's enhanced code when it has one of class 5."""
    enhanced = Reply(int(entry.get("code", 550)), str(entry.get("text", ""))).enhanced
    return enhanced if enhanced is not None and enhanced.startswith("5.") else "5.0.0"


class Notices:
    """Decides which bounces owe a DSN, and sends the DSNs (see the module docstring)."""

    def __init__(self, config: DataplaneConfig, *, loader, spool: Spool, queue: DeliveryQueue, stats,
                 metrics: Counter[str]) -> None:
        self.config = config
        self.loader = loader
        self.spool = spool
        self.queue = queue
        self.stats = stats
        self.metrics = metrics

    @staticmethod
    def due(record: SpoolRecord, rcpt: Recipient) -> bool:
        """Whether the bounce of `rcpt` calls for a DSN to the message's sender."""
        if not record.send_dsns or record.dsn_of:
            return False
        return dsn_due(record.mail_from, rcpt_params(record, rcpt.index).notify, Action.FAILED)

    @staticmethod
    def owed(message: QueuedMessage) -> list[dict]:
        """The message's attempt entries whose DSN is not in the spool yet."""
        return [entry for entry in message.attempts if entry.get("dsn") == DSN_OWED]

    def reporting_mta(self) -> str:
        """This MTA server's name in the DSNs (Reporting-MTA, From: MAILER-DAEMON@...)."""
        routing = self.loader.current
        snapshot_hostname = routing.snapshot.hostname if routing is not None else ""
        return self.config.hostname or snapshot_hostname or socket.gethostname()

    async def send(self, message: QueuedMessage) -> bool:
        """Spool one DSN for every owed entry of `message` and mark them; False when it
        could not be stored (the entries stay owed, to be sent again)."""
        owed = self.owed(message)
        if not owed:
            return True
        try:
            record = await self.spool.read(message.id)
        except (OSError, SpoolCorrupt) as exc:
            log.error("delivery: %s: cannot read the message to return it in a DSN (%s); %d DSN(s) owed stay "
                      "owed", message.id, exc, len(owed))
            return False
        try:
            dsn_record = self._record(record, message, self._build(record, owed))
        except ValueError as exc:  # DsnError, or a damaged entry: nothing to send, ever
            log.warning("delivery: %s: no DSN can be sent to <%s>: %s", message.id, record.mail_from, exc)
            for entry in owed:
                entry["dsn"] = DSN_NONE
            return True
        # Counted exactly when the DSN is in the queue, a crash in between included.
        group = self.stats.begin(["q", dsn_record.id],
                                 [self.stats.count_record("dsn_sent", dsn_record.smtp_id, dsn_record.ip)])
        try:
            await self.spool.store(dsn_record)
        except SpoolError as exc:
            self.stats.end(group, committed=False)
            log.error("delivery: %s: the DSN to <%s> could not be stored (%s); it stays owed",
                      message.id, record.mail_from, exc)
            return False
        self.stats.end(group)
        for entry in owed:
            entry["dsn"] = dsn_record.id
        self.metrics["dsn_sent"] += 1
        log.info("%s: DSN %s to <%s> for %d bounced recipient(s), pool=%s ip=%s", message.id, dsn_record.id,
                 record.mail_from, len(owed), dsn_record.pool, dsn_record.ip)
        self.queue.submit(dsn_record, now=time.time())
        return True

    def _build(self, record: SpoolRecord, owed: list[dict]) -> bytes:
        recipients = []
        for entry in owed:
            address = str(entry.get("rcpt", ""))
            index = record.rcpt_tos.index(address) if address in record.rcpt_tos else -1
            recipients.append(DsnRecipient(
                address=address, action=Action.FAILED, status=_status(entry),
                original=rcpt_params(record, index).orcpt, remote_mta=_remote_host(str(entry.get("mx", ""))),
                diagnostic=f"{entry.get('code', '')} {entry.get('text', '')}".strip(),
                last_attempt=_utc(int(entry.get("at_ms", record.received_ms))),
            ))
        return build_dsn(reporting_mta=self.reporting_mta(), sender=record.mail_from, recipients=recipients,
                         original=record.message, arrival_date=_utc(record.received_ms),
                         mail_params=mail_params(record))

    def _record(self, record: SpoolRecord, message: QueuedMessage, dsn: bytes) -> SpoolRecord:
        """The DSN as a message of its own: from <> to the sender, the same pool and IP."""
        sender = record.mail_from.strip()
        sender = sender[1:-1] if sender.startswith("<") and sender.endswith(">") else sender
        stamped = inject(dsn, [
            (STAMPED_HEADERS.virtual_mta, record.pool.encode("utf-8")),
            (STAMPED_HEADERS.feed_type, record.feed_type.encode("utf-8")),
            (STAMPED_HEADERS.zone, record.zone.encode("utf-8")),
            (STAMPED_HEADERS.server_id, str(record.server_id).encode("ascii")),
        ])
        return SpoolRecord(
            id=self.spool.new_id(), received_ms=int(time.time() * 1000), server_id=record.server_id,
            snapshot_version=record.snapshot_version, worker=record.worker, client_address="", client_helo="",
            tls=False, auth="", bridge_id=record.bridge_id, bridge_username=record.bridge_username,
            user_id=record.user_id, smtp_id=record.smtp_id, pool=record.pool, ip=message.ip,
            ip_hostname=message.helo, feed_type=record.feed_type, zone=record.zone, mail_from="",
            rcpt_tos=(sender,), mail_options=() if stamped.isascii() else ("BODY=8BITMIME",),
            smtputf8=not sender.isascii(), message=stamped, send_dsns=False, dsn_of=record.id,
        )
