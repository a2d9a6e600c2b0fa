"""`GET /v1/messages/{id}`: where each recipient of a message stands, from its
delivery events in the server's event log (`control.contract.event_log`, what
`poolmta message status` reads through the control plane) and its spool record
while it is queued."""

from __future__ import annotations

import asyncio
from pathlib import Path

from control.contract import event_log
from control.contract.delivery_event import DeliveryEvent

from ..spool import SpoolError, find_record
from .problems import not_found

QUEUED = "queued"  # no attempt has decided anything yet
_MAX_ID = 64


def _record(spool_dir: Path, message_id: str):
    try:
        return find_record(spool_dir, message_id)
    except (OSError, SpoolError):
        return None  # delivered and removed, or never here


async def message_status(redis, spool_dir: Path, message_id: str, user_id: int, server_id: int) -> dict:
    """The message's status per recipient, for account `user_id`, from the spool and
    the event log of MTA server `server_id`; 404 (Problem) when neither knows it for
    that account."""
    if not message_id.isalnum() or not message_id.isascii() or len(message_id) > _MAX_ID:
        raise not_found("No such message: a message id is the one a 202 returned (letters and digits)")
    record = await asyncio.to_thread(_record, spool_dir, message_id)
    events = [e for e in await event_log.message_events(redis, (server_id,), message_id) if e.user_id == user_id]
    if (record is None or record.user_id != user_id) and not events:
        raise not_found(f"No message {message_id} for this account (unknown, or its events expired)")
    latest: dict[str, DeliveryEvent] = {}
    attempts: dict[str, int] = {}
    for event in events:
        latest[event.rcpt] = event
        attempts[event.rcpt] = max(attempts.get(event.rcpt, 0), event.attempt)
    mine = record is not None and record.user_id == user_id
    order = list(dict.fromkeys([*(record.rcpt_tos if mine else ()), *latest]))
    recipients = []
    for address in order:
        event = latest.get(address)
        recipients.append({
            "address": address,
            "status": event.outcome if event is not None else QUEUED,
            "final": event.final if event is not None else False,
            "attempts": attempts.get(address, 0),
            "reply": event.reply if event is not None else "",
            "updated_ms": event.ts_ms if event is not None else (record.received_ms if mine else 0),
        })
    return {"id": message_id, "queued": mine, "recipients": recipients}
