"""What the report parser returns: frozen, typed records, and their JSON form.

A `Report` is the whole answer for one message received by the inbound listener;
`RecipientStatus` is one recipient's outcome inside a bounce; `Feedback` is the
machine-readable part of a complaint. Every string in them is clean text: no lone
surrogates (bytes that were not UTF-8 are replaced), no NULs, at most the length
limit of its field (see `limits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

ReportKind = Literal["dsn", "arf", "nonstandard", "unknown"]
"""`dsn`: an RFC 3464 (or RFC 6533) delivery status notification. `arf`: an RFC 5965
feedback report (a complaint). `nonstandard`: a bounce in some MTA's own format, its
failed recipients found by flufl.bounce. `unknown`: none of these (see `problem`)."""

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
"""RFC 3464 section 2.3.3 action values, lower-cased. `failed` and `delayed` are
failures; the other three say the message went on and are not."""

FAILURE_ACTIONS: frozenset[str] = frozenset({"failed", "delayed"})


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One recipient's outcome as a report states it.

    `address` is the address the message was sent to as best the report tells:
    Original-Recipient when the DSN carries it (that is the RCPT TO the sender
    used, RFC 3464 section 2.3.1), else Final-Recipient. Addresses are normalised:
    no address type (`rfc822;`), no angle brackets or whitespace, domain lower-cased
    (the local part is case-sensitive, RFC 5321 section 2.4).

    `status` is the RFC 3463 code `class.subject.detail` ("5.1.1"), or "" when the
    report carries none. `permanent` is True only for a failure the report says
    will not succeed on retry: action `failed` with a 5.x.x status (or, with no
    status code at all, a `failed` action alone). `delayed`, or any 4.x.x status,
    is temporary; `delivered`, `relayed` and `expanded` are not failures at all
    (`failed` is False) and are kept so a caller sees the whole report.
    """

    address: str
    status: str
    action: Action
    permanent: bool
    diagnostic: str = ""
    final_recipient: str = ""
    original_recipient: str = ""
    remote_mta: str = ""

    @property
    def failed(self) -> bool:
        """True when the message did not reach this recipient (yet): action failed or delayed."""
        return self.action in FAILURE_ACTIONS


@dataclass(frozen=True, slots=True)
class Feedback:
    """The machine-readable part of an RFC 5965 feedback report (section 3.1 and 3.2).

    `feedback_type` is lower-cased (`abuse`, `fraud`, `virus`, `other`, `not-spam`,
    `auth-failure`, ...). `original_rcpt_to` and `reported_domain` may repeat in a
    report, so they are tuples (normalised like recipient addresses). Fields the
    report does not carry are "" (or empty tuples). `arrival_date` also takes the
    pre-RFC `Received-Date` field that early ARF generators wrote.
    """

    feedback_type: str
    user_agent: str = ""
    version: str = ""
    source_ip: str = ""
    original_mail_from: str = ""
    original_rcpt_to: tuple[str, ...] = ()
    arrival_date: str = ""
    reported_domain: tuple[str, ...] = ()
    reporting_mta: str = ""
    incidents: int = 1


@dataclass(frozen=True, slots=True)
class Report:
    """The parser's answer for one received message; never raised, always returned.

    `recipients` holds every per-recipient outcome found (at most
    `limits.MAX_RECIPIENTS`); `failures()` filters the failed and delayed ones.
    `returned_headers` are the header fields of the returned original message
    (message/rfc822 or text/rfc822-headers part, or a copy inlined in a nonstandard
    bounce's text), in order, names as written, values unfolded, at most
    `limits.MAX_RETURNED_HEADERS`. `problem` says why the kind is `unknown`
    (None otherwise); `notes` say what was cut or tolerated on the way (a limit
    reached, a report-type that disagrees with the parts), without making the
    result unusable.
    """

    kind: ReportKind
    recipients: tuple[RecipientStatus, ...] = ()
    feedback: Feedback | None = None
    returned_headers: tuple[tuple[str, str], ...] = ()
    reporting_mta: str = ""
    envelope_id: str = ""
    arrival_date: str = ""
    problem: str | None = None
    notes: tuple[str, ...] = field(default=())

    def failures(self) -> tuple[RecipientStatus, ...]:
        """The recipients whose action is failed or delayed, in report order."""
        return tuple(r for r in self.recipients if r.failed)

    def returned_header(self, name: str) -> str | None:
        """The first returned header field called `name` (case-insensitive), or None."""
        wanted = name.lower()
        for field_name, value in self.returned_headers:
            if field_name.lower() == wanted:
                return value
        return None


def _fields_to_json(record: RecipientStatus | Feedback) -> dict[str, Any]:
    # Every field by its own name, so the JSON form follows the dataclass.
    values = ((f.name, getattr(record, f.name)) for f in fields(record))
    return {name: list(value) if isinstance(value, tuple) else value for name, value in values}


def recipient_to_json(recipient: RecipientStatus) -> dict[str, Any]:
    """One recipient as a JSON-ready dict (every field, plus `failed`)."""
    return {**_fields_to_json(recipient), "failed": recipient.failed}


def feedback_to_json(feedback: Feedback) -> dict[str, Any]:
    """A feedback report's fields as a JSON-ready dict (tuples become lists)."""
    return _fields_to_json(feedback)


def to_json(report: Report) -> dict[str, Any]:
    """A JSON-ready dict of `report`: `kind`, `recipients` (each with `address`,
    `status`, `permanent`, `diagnostic`, `action`, ...), `feedback` (or null),
    `returned_headers` as [name, value] pairs, the per-message fields, `problem`
    and `notes`. json.dumps accepts it as it is."""
    return {
        "kind": report.kind,
        "recipients": [recipient_to_json(r) for r in report.recipients],
        "feedback": None if report.feedback is None else feedback_to_json(report.feedback),
        "returned_headers": [[name, value] for name, value in report.returned_headers],
        "reporting_mta": report.reporting_mta,
        "envelope_id": report.envelope_id,
        "arrival_date": report.arrival_date,
        "problem": report.problem,
        "notes": list(report.notes),
    }
