"""`parse_report`: the bytes of one received message in, a `Report` out.

Order of judgement: a machine-readable part says what the message is (RFC 3464
delivery-status, its RFC 6533 UTF-8 form, or an RFC 5965 feedback-report);
without one, or with a delivery-status that names no recipient, flufl.bounce's
detectors look for a nonstandard bounce; else the report is `unknown`.
"""

from __future__ import annotations

import logging
import re
from email.message import Message

from .arf import FEEDBACK_REPORT_TYPE, read_feedback
from .dsn import DELIVERY_STATUS_TYPES, read_delivery_status
from .limits import (
    MAX_HEADER_FIELDS,
    MAX_HEADER_VALUE,
    MAX_NOTES,
    MAX_PARSED_BYTES,
    MAX_RETURNED_HEADERS,
    MAX_SCANNED_TEXT,
)
from .mime import (
    DECODE_ERRORS,
    RETURNED_TYPES,
    MimeTooComplex,
    Walk,
    content_type,
    iter_leaf_text,
    parse_message,
    part_bytes,
    returned_headers,
    trim_headers,
    walk_parts,
)
from .nonstandard import detect, inline_copy_headers, prune_for_detectors
from .results import Report

log = logging.getLogger(__name__)

_MACHINE_TYPES = DELIVERY_STATUS_TYPES | {FEEDBACK_REPORT_TYPE}
# RFC 6522 section 3: report-type names the second part's subtype.
_REPORT_TYPE_OF = {
    "message/delivery-status": "delivery-status",
    "message/global-delivery-status": "global-delivery-status",
    FEEDBACK_REPORT_TYPE: "feedback-report",
}
_TEXT_TYPES = frozenset({"text/plain"})
_HTML_TYPES = frozenset({"text/html"})
_TAG = re.compile(r"<[^<>]{0,2000}>")

PARSER_ERROR = "parser error"
NOT_A_REPORT = "not a delivery status notification, feedback report or recognised bounce"


def _first(walk: Walk, types: frozenset[str], after: Message | None = None) -> Message | None:
    seen = after is None
    for part in walk.parts:
        if seen and content_type(part) in types:
            return part
        seen = seen or part is after
    return None


def _returned(walk: Walk, after: Message | None) -> tuple[tuple[str, str], ...]:
    # RFC 6522 section 3: the returned message follows the machine-readable part;
    # any returned part is taken when none follows it.
    part = _first(walk, RETURNED_TYPES, after) or _first(walk, RETURNED_TYPES)
    return tuple(returned_headers(part, MAX_RETURNED_HEADERS)) if part is not None else ()


def _human_text(walk: Walk) -> str:
    """The text a person would read: the text/plain parts, or failing those the
    text/html ones with the tags dropped (crudely: it is only searched)."""
    text = "\n".join(iter_leaf_text(walk, _TEXT_TYPES, MAX_SCANNED_TEXT))[:MAX_SCANNED_TEXT]
    if text.strip():
        return text
    html = "\n".join(iter_leaf_text(walk, _HTML_TYPES, MAX_SCANNED_TEXT))[:MAX_SCANNED_TEXT]
    return _TAG.sub(" ", html)


def _report_type_note(msg: Message, machine: Message) -> str | None:
    try:
        declared = str(msg.get_param("report-type", "") or "").strip().lower()
    except DECODE_ERRORS:
        declared = ""
    expected = _REPORT_TYPE_OF.get(content_type(machine), "")
    if content_type(msg) == "multipart/report" and declared and declared != expected:
        return f"report-type {declared[:40]!r} disagrees with its {content_type(machine)} part; the part was read"
    return None


def _parse(data: bytes) -> Report:
    if not data.strip():
        return Report(kind="unknown", problem="empty message")
    notes: list[str] = []
    if len(data) > MAX_PARSED_BYTES:
        notes.append(f"parsed the first {MAX_PARSED_BYTES} bytes of {len(data)}")
        data = data[:MAX_PARSED_BYTES]
    try:
        msg = parse_message(data)
    except MimeTooComplex as exc:
        return Report(kind="unknown", problem=str(exc), notes=tuple(notes))
    walk = walk_parts(msg)
    if walk.parts_cut:
        notes.append(f"walked the first {len(walk.parts)} MIME parts")
    if walk.depth_cut:
        notes.append("ignored MIME parts nested too deeply")
    if trim_headers(walk):
        notes.append(f"cut header fields to {MAX_HEADER_FIELDS} per part, {MAX_HEADER_VALUE} characters each")

    machine = _first(walk, _MACHINE_TYPES)
    if machine is not None:
        mismatch = _report_type_note(msg, machine)
        notes.extend([mismatch] if mismatch else [])
        body = part_bytes(machine).decode("utf-8", "replace")
        if content_type(machine) == FEEDBACK_REPORT_TYPE:
            feedback, missing = read_feedback(body)
            return Report(
                kind="arf",
                feedback=feedback,
                returned_headers=_returned(walk, machine),
                reporting_mta=feedback.reporting_mta,
                arrival_date=feedback.arrival_date,
                notes=tuple((notes + missing)[:MAX_NOTES]),
            )
        status = read_delivery_status(body)
        if status.dropped:
            notes.append(f"{status.dropped} recipient block(s) without a usable address, action or status")
        if status.capped:
            notes.append(f"kept the first {len(status.recipients)} recipients")
        if status.recipients:
            return Report(
                kind="dsn",
                recipients=status.recipients,
                returned_headers=_returned(walk, machine),
                reporting_mta=status.reporting_mta,
                envelope_id=status.envelope_id,
                arrival_date=status.arrival_date,
                notes=tuple(notes[:MAX_NOTES]),
            )
        notes.append("the delivery-status part names no recipient; tried the bounce detectors")

    text = _human_text(walk)
    returned = _returned(walk, None) or tuple(inline_copy_headers(text))
    prune_for_detectors(msg, walk)
    detected = detect(msg, text)
    notes.extend([detected.note] if detected.note else [])
    if detected.recipients:
        return Report(
            kind="nonstandard",
            recipients=detected.recipients,
            returned_headers=returned,
            notes=tuple(notes[:MAX_NOTES]),
        )
    return Report(kind="unknown", returned_headers=returned, problem=NOT_A_REPORT, notes=tuple(notes[:MAX_NOTES]))


def parse_report(data: bytes | bytearray | memoryview) -> Report:
    """Read one received message (a bounce, a complaint, or anything else) and say
    what it reports. Never raises for any content of `data`: what cannot be read
    is a Report of kind `unknown` with `problem` set. Only the first
    MAX_PARSED_BYTES are read; at most MAX_PARTS MIME parts and MAX_RECIPIENTS
    recipients. Raises TypeError only when `data` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"parse_report wants bytes, not {type(data).__name__}")
    try:
        return _parse(bytes(data))
    # The last line of defence for the inbound listener: the stdlib email package
    # and the detectors are large; an input that finds a bug in them (or here) is
    # still answered. The suite checks this branch is never taken on its inputs.
    except Exception as exc:
        log.warning("report parser failed; reporting unknown", exc_info=True)
        return Report(kind="unknown", problem=f"{PARSER_ERROR} ({type(exc).__name__})")

