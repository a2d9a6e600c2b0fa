"""Bounces in an MTA's own format (qmail, Exim, old Postfix, Exchange, Yahoo, ...):
flufl.bounce finds the failed recipients, the bounce's text says how each failed.

flufl.bounce's detectors (Mailman's) know the formats; this module does not add
recipient heuristics of its own. It only reads, for each address a detector
found, the status code the text gives next to it, so permanence follows the same
rule as a DSN (`status.decide`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses

from flufl.bounce import all_failures

from .limits import (
    MAX_DETECTOR_TEXT,
    MAX_DIAGNOSTIC,
    MAX_RECIPIENTS,
    MAX_RETURNED_HEADERS,
    MAX_SCANNED_TEXT,
)
from .mime import DECODE_ERRORS, RETURNED_TYPES, Walk, clean, content_type, field_blocks
from .mime import payload as part_payload
from .results import Action, RecipientStatus
from .status import decide, enhanced_code, normalise_address, reply_class

log = logging.getLogger(__name__)

# Lines read after the one naming an address: qmail, Exim and Postfix put the
# remote server's reply on the next one to three lines.
_CONTEXT_LINES = 3

# With no code anywhere near an address, these words in the text mean the cause
# was transient (an expired queue entry, a warning before retrying).
_TRANSIENT = re.compile(
    r"\b(delayed|will be retried|will retry|retry timeout exceeded|in the queue too long"
    r"|too long in the queue|temporar(?:y|ily)|try again later|deferred|not yet been delivered)\b",
    re.IGNORECASE,
)

# A copy of the original message inlined in a bounce's text starts with one of
# these (qmail's "--- Below this line is a copy of the message.", Exim's
# "------ This is a copy of the message, including all the headers. ------").
_INLINE_COPY = re.compile(r"^(return-path|received):", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Detected:
    """What flufl.bounce and the bounce's text say: recipients, and a note when the
    detectors failed on this message."""

    recipients: tuple[RecipientStatus, ...]
    note: str | None = None


def prune_for_detectors(msg: Message, walk: Walk) -> None:
    """Cut `msg` down, in place, to what the walk visited, minus returned messages.

    flufl.bounce's detectors walk every part and scan every line with dozens of
    patterns; only walked parts (MAX_PARTS, MAX_DEPTH) are left for them, and a
    returned message is emptied because its text is the sender's, where a
    detector's phrase could appear by chance; the text of the other parts is cut
    to MAX_DETECTOR_TEXT characters in all.
    """
    visited = {id(part) for part in walk.parts}
    budget = MAX_DETECTOR_TEXT
    for part in walk.parts:
        payload = part_payload(part)
        if content_type(part) in RETURNED_TYPES:
            part.set_payload([] if isinstance(payload, list) else "")
        elif isinstance(payload, list):
            part.set_payload([child for child in payload if id(child) in visited])
        elif isinstance(payload, str):
            part.set_payload(payload[:budget])
            budget = max(0, budget - len(payload))


# RFC 2606 section 2: ".invalid" names nothing, so no detector takes it for a
# provider's mailer-daemon.
_PLACEHOLDER_FROM = "unknown@unknown.invalid"


def _give_detectors_a_from(msg: Message) -> None:
    """Give `msg` a From address when it has none the stdlib can parse.

    flufl.bounce's Yale detector indexes getaddresses(...)[0], which since the
    stricter getaddresses of Python 3.11.x / 3.12 is an empty list for a missing
    or empty From; the IndexError then stops all_failures before the qmail,
    Postfix and text-pattern detectors run. A placeholder avoids that.
    """
    try:
        parsed = getaddresses([str(msg.get("from", ""))])
    except DECODE_ERRORS:
        parsed = []
    if not parsed:
        del msg["from"]
        msg["From"] = _PLACEHOLDER_FROM


@dataclass(frozen=True, slots=True)
class _Text:
    """A bounce's text as lines, with the lower-cased lines that name an address
    indexed once (a bounce can list hundreds of recipients)."""

    lines: list[str]
    addressed: list[tuple[int, str]]

    @classmethod
    def of(cls, text: str) -> _Text:
        lines = text.split("\n")
        return cls(lines, [(i, line.lower()) for i, line in enumerate(lines) if "@" in line])


def _address_window(address: str, text: _Text) -> str:
    """The first line naming `address` that, with the few after it, carries a
    status or reply code, joined with those; "" when none does."""
    # Whole addresses only: ann@example.org must not match joann@example.org.
    mention = re.compile(rf"(?<![\w.+=-]){re.escape(address.lower())}(?![\w-]|\.\w)")
    for index, lowered in text.addressed:
        if mention.search(lowered):
            window = " ".join(text.lines[index : index + 1 + _CONTEXT_LINES])
            if enhanced_code(window) or reply_class(window):
                return window
    return ""


def _first_coded_line(lines: list[str]) -> str:
    """The first line with an RFC 3463 code, else the first with a reply code, or ""."""
    for finder in (enhanced_code, reply_class):
        line = next((line for line in lines if finder(line)), "")
        if line:
            return line
    return ""


def _recipient(address: str, flagged_temporary: bool, text: str, lines: _Text) -> RecipientStatus:
    # No code beside the address: the text's first code speaks for the whole
    # bounce (Gmail- and Outlook-style texts put it under "The response was:").
    evidence = _address_window(address, lines) or _first_coded_line(lines.lines)
    action: Action = "delayed" if flagged_temporary else "failed"
    _, status, permanent = decide(action, "", evidence) or (action, "", False)
    if permanent and not (status or reply_class(evidence)) and _TRANSIENT.search(text):
        permanent = False
    return RecipientStatus(
        address=address,
        status=status,
        action=action,
        permanent=permanent,
        diagnostic=clean(evidence, MAX_DIAGNOSTIC),
        final_recipient=address,
    )


def detect(msg: Message, text: str) -> Detected:
    """The failed recipients flufl.bounce finds in `msg`, each judged from `text`
    (the bounce's human-readable text, at most MAX_SCANNED_TEXT characters).

    Addresses a detector reports as temporary are `delayed`; the others `failed`,
    permanent unless the text gives a 4.x.x code (or no code and words of a
    transient cause). Sorted by address; at most MAX_RECIPIENTS. Never raises:
    a detector that fails leaves a note and no recipients.
    """
    _give_detectors_a_from(msg)
    try:
        temporary, permanent = all_failures(msg)
    # flufl.bounce re-raises whatever one of its heuristic detectors raised on a
    # malformed message; that is a bounce we could not read, not a crash.
    except Exception as exc:
        log.debug("flufl.bounce failed on a report", exc_info=True)
        return Detected((), f"bounce detectors failed ({type(exc).__name__})")
    text = text[:MAX_SCANNED_TEXT]
    # Codes in an inlined copy of the original message are the sender's text.
    copy = _INLINE_COPY.search(text)
    text = text[: copy.start()] if copy else text
    lines = _Text.of(text)
    found: dict[str, bool] = {}
    for raw, is_temporary in [(a, False) for a in permanent] + [(a, True) for a in temporary]:
        address = normalise_address(raw.decode("ascii", "replace"))
        if address:
            # An address in both sets counts as temporary: the report holds out hope.
            found[address] = found.get(address, False) or is_temporary
    recipients = [_recipient(a, found[a], text, lines) for a in sorted(found)[:MAX_RECIPIENTS]]
    return Detected(tuple(recipients))


def inline_copy_headers(text: str) -> list[tuple[str, str]]:
    """Header fields of an original message copied into a bounce's text, or [].

    Starts at the first line that begins with Return-Path: or Received: (how a
    copied message begins) and reads that one block; fewer than two fields is not
    a copy.
    """
    start = _INLINE_COPY.search(text)
    if start is None:
        return []
    blocks = field_blocks(text[start.start() : start.start() + 64 * 1024], max_blocks=1)
    if not blocks or len(blocks[0]) < 2:
        return []
    return blocks[0][:MAX_RETURNED_HEADERS]
