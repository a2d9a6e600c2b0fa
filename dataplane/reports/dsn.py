"""RFC 3464 delivery status notifications (and their RFC 6533 UTF-8 form): the
message/delivery-status part read into per-message fields and recipients."""

from __future__ import annotations

from dataclasses import dataclass

from .limits import MAX_DIAGNOSTIC, MAX_FIELD_BLOCKS, MAX_RECIPIENTS
from .mime import clean, field, field_blocks
from .results import RecipientStatus
from .status import decide, normalise_action, normalise_address, strip_type

# RFC 3464 section 2.1 names the body type; RFC 6533 section 6.2 its UTF-8 twin.
DELIVERY_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """What one delivery-status body says.

    `dropped` counts per-recipient blocks that named no usable address or neither
    an action nor a status code; `capped` is True when more than MAX_RECIPIENTS
    recipients were present and the rest were not read.
    """

    reporting_mta: str
    envelope_id: str
    arrival_date: str
    recipients: tuple[RecipientStatus, ...]
    dropped: int
    capped: bool


def _is_recipient_block(block: list[tuple[str, str]]) -> bool:
    # RFC 3464 2.3: a per-recipient block is the one with Final-Recipient (required)
    # or Original-Recipient. Blocks are told apart by content rather than position
    # because some MTAs omit the blank line after the per-message block.
    return bool(field(block, "final-recipient") or field(block, "original-recipient"))


def _recipient(block: list[tuple[str, str]]) -> RecipientStatus | None:
    final = normalise_address(field(block, "final-recipient"))
    original = normalise_address(field(block, "original-recipient"))
    # X-Actual-Recipient is what some Microsoft and Sendmail versions write for it.
    actual = normalise_address(field(block, "x-actual-recipient"))
    address = original or final or actual
    if not address:
        return None
    diagnostic = strip_type(field(block, "diagnostic-code"))[:MAX_DIAGNOSTIC]
    decided = decide(normalise_action(field(block, "action")), field(block, "status"), diagnostic)
    if decided is None:
        return None
    action, status, permanent = decided
    return RecipientStatus(
        address=address,
        status=status,
        action=action,
        permanent=permanent,
        diagnostic=diagnostic,
        final_recipient=final,
        original_recipient=original,
        remote_mta=strip_type(field(block, "remote-mta")),
    )


def read_delivery_status(text: str) -> DeliveryStatus:
    """The per-message fields (RFC 3464 section 2.2) and recipients (section 2.3)
    of a delivery-status body, in order; never raises.

    Per-message fields are taken from the first block that has them; each block
    with a Final-Recipient or Original-Recipient is one recipient. At most
    MAX_RECIPIENTS recipients are read.
    """
    blocks = field_blocks(text, MAX_FIELD_BLOCKS)
    recipients: list[RecipientStatus] = []
    dropped = 0
    per_message: dict[str, str] = {}
    for block in blocks:
        for name in ("reporting-mta", "original-envelope-id", "arrival-date"):
            if name not in per_message and field(block, name):
                per_message[name] = field(block, name)
        if not _is_recipient_block(block):
            continue
        recipient = _recipient(block)
        if recipient is None:
            dropped += 1
        elif len(recipients) < MAX_RECIPIENTS:
            recipients.append(recipient)
    # MAX_FIELD_BLOCKS leaves room for one recipient block past the cap, so a
    # report with more recipients than are kept is seen to have them.
    capped = sum(1 for block in blocks if _is_recipient_block(block)) > MAX_RECIPIENTS
    return DeliveryStatus(
        reporting_mta=strip_type(per_message.get("reporting-mta", "")),
        envelope_id=clean(per_message.get("original-envelope-id", "")),
        arrival_date=clean(per_message.get("arrival-date", "")),
        recipients=tuple(recipients),
        dropped=dropped,
        capped=capped,
    )
