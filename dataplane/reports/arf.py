"""RFC 5965 feedback reports (ARF, complaints): the message/feedback-report part
read into a `Feedback`."""

from __future__ import annotations

from .limits import MAX_RECIPIENTS
from .mime import field, field_blocks, fields
from .results import Feedback
from .status import normalise_address, strip_type

# RFC 5965 section 3: the body type of the machine-readable part.
FEEDBACK_REPORT_TYPE = "message/feedback-report"

# Incidents (RFC 5965 3.2) above this are taken as this: a count, not a buffer size.
_MAX_INCIDENTS = 1_000_000


def _incidents(value: str) -> int:
    digits = value.strip()
    if not digits.isascii() or not digits.isdigit():
        return 1
    return max(1, min(int(digits[:8]), _MAX_INCIDENTS))


def read_feedback(text: str) -> tuple[Feedback, list[str]]:
    """The fields of a feedback-report body and notes on what it lacks; never raises.

    RFC 5965 section 3.1 requires Feedback-Type, User-Agent and Version; a report
    without them is still read (the part's type says it is a complaint), with a
    note. The fields form one block, but fields from every block are taken
    because some generators put blank lines between them.
    """
    blocks = field_blocks(text, max_blocks=8)
    block = [pair for b in blocks for pair in b]
    notes = [
        f"feedback report without {name}"
        for name in ("Feedback-Type", "User-Agent", "Version")
        if not field(block, name)
    ]
    rcpt_to = [normalise_address(v) for v in fields(block, "original-rcpt-to")[:MAX_RECIPIENTS]]
    domains = [v.strip().lower().rstrip(".") for v in fields(block, "reported-domain")[:MAX_RECIPIENTS]]
    feedback = Feedback(
        feedback_type=field(block, "feedback-type").split(" ", 1)[0].lower(),
        user_agent=field(block, "user-agent"),
        version=field(block, "version"),
        source_ip=field(block, "source-ip"),
        original_mail_from=normalise_address(field(block, "original-mail-from")),
        original_rcpt_to=tuple(a for a in rcpt_to if a),
        # Received-Date is the name draft ARF (before RFC 5965) used for Arrival-Date.
        arrival_date=field(block, "arrival-date") or field(block, "received-date"),
        reported_domain=tuple(d for d in domains if d),
        reporting_mta=strip_type(field(block, "reporting-mta")),
        incidents=_incidents(field(block, "incidents")),
    )
    return feedback, notes
