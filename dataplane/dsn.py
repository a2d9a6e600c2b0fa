"""RFC 3464 delivery status notifications to senders: the bytes of a DSN.

When recipients of a message bounce (during delivery, or when the queue lifetime
ends) or are delayed, the message's envelope sender gets a DSN. `build_dsn` makes
its bytes; `dataplane.dsn_request.dsn_due` says whether one is due at all. The DSN
is sent with the null reverse-path, MAIL FROM:<> (RFC 5321 4.5.5, RFC 3461 6.2),
so nothing ever answers it.

Structure (RFC 6522 multipart/report; report-type=delivery-status):

    From: Mail Delivery System <MAILER-DAEMON@<reporting MTA>>
    To: <the original envelope sender>
    Subject, Date, Message-ID, MIME-Version
    Auto-Submitted: auto-replied                      (RFC 3834 5)
    1. text/plain; charset=utf-8, quoted-printable: what happened, for a person
    2. message/delivery-status (RFC 3464 2): per-message fields
           Reporting-MTA: dns; <host>, Original-Envelope-Id (with ENVID), Arrival-Date
       then per recipient: Original-Recipient (with ORCPT), Final-Recipient,
           Action, Status, Remote-MTA, Diagnostic-Code: smtp; <reply>,
           Last-Attempt-Date, Will-Retry-Until (delayed only)
    3. the returned message: message/rfc822 (all of it) when RET=FULL, a recipient
       failed, and it is at most `max_returned` octets; otherwise
       text/rfc822-headers (its header section, cut at a field boundary to
       `max_returned`). Without RET the headers are returned: RFC 3461 4.3 lets
       the MTA choose, the headers identify the message, and a sender of bulk mail
       does not want its content back per bounce. RET applies only to failures
       (RFC 3461 4.3), so a delay report returns headers.

Field values are US-ASCII, one logical line each (RFC 3464 2.1): CR, LF and other
controls in a diagnostic become spaces, non-ASCII characters, the backslash and
the "=" of "=?" become RFC 6533 3 escapes (\\x{E9}), so a reply text can neither
add a field, nor break the structure, nor pass for an RFC 2047 encoded word. A
non-ASCII address is written as address type "utf-8" in the same escaped form
(RFC 6533 3). Long values are folded at spaces.

Output: CRLF line endings. 7-bit, except that returned content with 8-bit octets
is passed through as it was received, declared "Content-Transfer-Encoding: 8bit";
such a DSN needs BODY=8BITMIME (RFC 6152) at the next hop.

Bounds: the returned content is at most `max_returned` octets (default 64 KiB,
like Postfix's 50 kB bounce_size_limit); a diagnostic is cut to 900 characters
after escaping, a Remote-MTA to 512; an address, ORCPT or ENVID longer than 512
characters as a field is refused; so every line stays under RFC 5322's 998
octets. At most 65,536 recipients (the VERP recipient index bound), of which the
text part lists 100.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import Message, MIMEPart
from email.utils import format_datetime, make_msgid

from dataplane.dsn_request import (
    Action,
    MailDsnParams,
    OriginalRecipient,
    Ret,
    is_null_sender,
)

__all__ = ["DEFAULT_MAX_RETURNED", "Action", "DsnError", "DsnRecipient", "build_dsn"]

DEFAULT_MAX_RETURNED = 64 * 1024
# Field values are cut (diagnostics) or refused (addresses, ENVID) past these, so with
# its name a field never reaches the 998-octet line limit of RFC 5322 2.1.1 unfolded.
MAX_DIAGNOSTIC = 900
MAX_FIELD = 512
MAX_RECIPIENTS = 65536
LISTED_RECIPIENTS = 100
FOLD_AT = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters

SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"
SUBJECT_DELIVERED = "Successful Mail Delivery Report"

# RFC 3463 2: class.subject.detail; class 2, 4 or 5, subject and detail 1-3 digits.
_STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")
# RFC 3463 3.1 classes: 2 success, 4 persistent transient failure, 5 permanent failure.
_STATUS_CLASS = {Action.FAILED: "5", Action.DELAYED: "4", Action.DELIVERED: "2",
                 Action.RELAYED: "2", Action.EXPANDED: "2"}
# RFC 1123 2.1 host names: LDH labels of 1-63 characters, 253 in all.
_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*")
# RFC 5321 4.1.2 Mailbox = Local-part "@" ( Domain / address-literal ), with the
# UTF-8 characters RFC 6531 3.3 adds to atext, qtext and domain labels.
_U = "\u0080-\ud7ff\ue000-\U0010ffff"  # not the surrogates: they have no UTF-8 form
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_U}-]+"
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9{_U}-]*[A-Za-z0-9{_U}])?"
_MAILBOX = re.compile(
    rf'(?:{_ATOM}(?:\.{_ATOM})*|"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*")'
    rf"@(?:{_LABEL}(?:\.{_LABEL})*|\[[\x21-\x5a\x5e-\x7e]+\])"
)
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_FIELD_END = re.compile(rb"\r\n(?![ \t])")  # a line break that does not continue a folded field
# RFC 6533 3 QCHAR: printable ASCII except SP, "\", "+" and "=".
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"\\", "+", "="}


class DsnError(ValueError):
    """Input from which no DSN can be built; the message says which and why."""


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient's report (RFC 3464 2.3).

    address: the recipient as given in RCPT TO (Final-Recipient).
    action: what happened; status: its RFC 3463 code, class matching the action
        ("5.1.1" for failed, "4.4.1" for delayed, "2.0.0" otherwise).
    original: the ORCPT the sender gave, if any (Original-Recipient).
    remote_mta: the host that answered, if any (Remote-MTA: dns; <host>).
    diagnostic: the SMTP reply, e.g. "550 5.1.1 No such user" (Diagnostic-Code: smtp; ...).
    last_attempt, will_retry_until: timezone-aware times; the latter for delayed only.
    """

    address: str
    action: Action
    status: str
    original: OriginalRecipient | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[DsnRecipient],
    original: bytes,
    arrival_date: datetime,
    mail_params: MailDsnParams = MailDsnParams(),
    now: datetime | None = None,
    max_returned: int = DEFAULT_MAX_RETURNED,
) -> bytes:
    """The bytes (CRLF line endings) of an RFC 3464 DSN to `sender` about `recipients`
    of the message `original` (as spooled), which arrived at `arrival_date`; see the
    module docstring for its structure. `reporting_mta` is this MTA server's hostname,
    `mail_params` the sender's RET and ENVID, `now` the Date (default: now, UTC);
    an action may be given as an Action or its RFC 3464 word.
    DsnError for input no DSN can be made from (null or malformed sender, no or too
    many recipients, a status whose class contradicts the action, naive datetimes,
    an unusable hostname)."""
    host = _hostname(reporting_mta)
    to = _sender(sender)
    if not recipients:
        raise DsnError("a DSN reports on at least one recipient")
    if len(recipients) > MAX_RECIPIENTS:
        raise DsnError(f"{len(recipients)} recipients; one DSN reports on at most {MAX_RECIPIENTS}")
    recipients = [_with_action(r) for r in recipients]
    if not isinstance(mail_params, MailDsnParams):
        raise DsnError(f"mail_params must be MailDsnParams, not {type(mail_params).__name__}")
    if not isinstance(original, bytes | bytearray | memoryview):
        raise DsnError(f"the original message must be bytes, not {type(original).__name__}")
    if type(max_returned) is not int or max_returned < 0:
        raise DsnError(f"max_returned must be a non-negative integer, got {str(max_returned)[:20]}")
    now = _aware("now", now) if now is not None else datetime.now(UTC)
    blocks = [_per_message(host, mail_params.envid, _aware("arrival_date", arrival_date))]
    blocks += [_per_recipient(r) for r in recipients]
    actions = {r.action for r in recipients}
    returned, full_refused = _returned(_crlf(original), mail_params.ret, Action.FAILED in actions, max_returned)

    # RFC 6532 3.2: a UTF-8 sender is written as UTF-8 (its DSN needs SMTPUTF8 anyway).
    policy = email.policy.SMTPUTF8 if not to.isascii() else email.policy.SMTP
    # Every header and field value here is written as built, never re-parsed by the
    # generator (the header registry would decode RFC 2047 look-alikes in them).
    policy = policy.clone(refold_source="none")
    dsn = Message(policy=email.policy.compat32)
    dsn["From"] = f"Mail Delivery System <MAILER-DAEMON@{host}>"
    dsn["To"] = f"<{to}>"
    dsn["Subject"] = (SUBJECT_FAILED if Action.FAILED in actions
                      else SUBJECT_DELAYED if Action.DELAYED in actions else SUBJECT_DELIVERED)
    dsn["Date"] = format_datetime(now)
    dsn["Message-ID"] = make_msgid(domain=host)
    dsn["Auto-Submitted"] = "auto-replied"  # RFC 3834 5: no autoresponder answers it
    dsn["MIME-Version"] = "1.0"
    dsn["Content-Type"] = "multipart/report; report-type=delivery-status"

    text = MIMEPart(policy=policy)
    text.set_content(_human_text(host, recipients, returned.get_content_type(), full_refused),
                     charset="utf-8", cte="quoted-printable")
    status = Message(policy=email.policy.compat32)
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)
    dsn.set_payload([text, status, returned])
    return dsn.as_bytes(policy=policy)


# --- the delivery-status fields ---------------------------------------------


def _field_text(text: str, limit: int) -> str:
    """One-line US-ASCII text of at most `limit` characters: controls become spaces (runs
    collapsed), non-ASCII, "\\" and the "=" of "=?" (which would start an RFC 2047
    encoded word to a parser that decodes them) become RFC 6533 3 escapes, \\x{E9};
    cut at a character boundary."""
    plain = " ".join("".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text[:limit]).split())
    out, size = [], 0
    for i, char in enumerate(plain):
        escape = ord(char) > 0x7E or char == "\\" or (char == "=" and plain[i + 1:i + 2] == "?")
        piece = f"\\x{{{ord(char):02X}}}" if escape else char
        size += len(piece)
        if size > limit:
            break
        out.append(piece)
    return "".join(out).rstrip()


def _typed_address(addr_type: str, address: str) -> str:
    """`addr_type; address` for a delivery-status field: an address with non-ASCII
    characters becomes type utf-8 in RFC 6533 3 utf-8-addr-xtext form."""
    if not isinstance(addr_type, str) or not isinstance(address, str):
        raise DsnError("an address and its type must be text")
    addr_type = addr_type.lower()
    if not _ADDR_TYPE.fullmatch(addr_type):
        raise DsnError(f"address type {addr_type[:32]!a} is not an atom like rfc822 (RFC 3461 4.2)")
    if not address or any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        raise DsnError(f"address {address[:64]!a} is empty or contains control characters")
    if addr_type == "utf-8" or not address.isascii() or "=?" in address:
        address = "".join(c if c in _QCHAR else f"\\x{{{ord(c):02X}}}" for c in address)
        addr_type = "utf-8"
    if len(address) > MAX_FIELD:
        raise DsnError(f"address is {len(address)} characters as a field; the limit is {MAX_FIELD}")
    return f"{addr_type}; {address}"


def _fold(name: str, value: str) -> str:
    """`value` folded at spaces (a line break before the space, RFC 5322 2.2.3) so lines
    stay within FOLD_AT where a word allows; unfolding gives `value` back."""
    lines, line = [], name + ": "
    start = len(line)
    for i, word in enumerate(value.split(" ")):
        piece = word if i == 0 else " " + word
        if i > 0 and len(line) + len(piece) > FOLD_AT:
            lines.append(line)
            line = piece
        else:
            line += piece
    lines.append(line)
    return "\n".join(lines)[start:]


def _set(block: Message, name: str, value: str) -> None:
    block[name] = _fold(name, value)


def _aware(name: str, when: datetime) -> datetime:
    if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise DsnError(f"{name} must be a timezone-aware datetime")
    return when


def _per_message(host: str, envid: str | None, arrival: datetime) -> Message:
    block = Message(policy=email.policy.compat32)
    _set(block, "Reporting-MTA", f"dns; {host}")  # RFC 3464 2.2.2
    if envid is not None:  # RFC 3464 2.2.1: the ENVID, xtext-decoded
        if not isinstance(envid, str) or not 0 < len(envid) <= MAX_FIELD or not all(" " <= c <= "~" for c in envid):
            raise DsnError(f"ENVID {str(envid)[:64]!a} is not printable US-ASCII of 1-{MAX_FIELD} characters")
        _set(block, "Original-Envelope-Id", envid)
    _set(block, "Arrival-Date", format_datetime(arrival))  # RFC 3464 2.2.5
    return block


def _with_action(r: DsnRecipient) -> DsnRecipient:
    """`r` with its action as an Action (a caller may pass the RFC 3464 word)."""
    if not isinstance(r, DsnRecipient):
        raise DsnError(f"a recipient report is a DsnRecipient, not {type(r).__name__}")
    try:
        return replace(r, action=Action(r.action))
    except ValueError:
        raise DsnError(f"action {str(r.action)[:20]!a} is not one of RFC 3464 2.3.3's") from None


def _per_recipient(r: DsnRecipient) -> Message:
    action = r.action
    match = _STATUS.fullmatch(r.status) if isinstance(r.status, str) else None
    if match is None:
        raise DsnError(f"status {str(r.status)[:20]!a} is not an RFC 3463 code like 5.1.1")
    if match.group(1) != _STATUS_CLASS[action]:
        raise DsnError(f"status {r.status} contradicts action {action}: it needs class {_STATUS_CLASS[action]}")
    for name in ("address", "remote_mta", "diagnostic"):
        value = getattr(r, name)
        if not isinstance(value, str) and not (value is None and name != "address"):
            raise DsnError(f"{name} must be text, not {type(value).__name__}")
    if r.original is not None and not isinstance(r.original, OriginalRecipient):
        raise DsnError(f"original must be an OriginalRecipient, not {type(r.original).__name__}")
    if r.will_retry_until is not None and action is not Action.DELAYED:
        raise DsnError("Will-Retry-Until is for delayed recipients only (RFC 3464 2.3.9)")
    block = Message(policy=email.policy.compat32)
    if r.original is not None:  # RFC 3464 2.3.1, from ORCPT
        _set(block, "Original-Recipient", _typed_address(r.original.addr_type, r.original.address))
    _set(block, "Final-Recipient", _typed_address("rfc822", r.address))  # RFC 3464 2.3.2
    _set(block, "Action", action.value)  # RFC 3464 2.3.3
    _set(block, "Status", r.status)  # RFC 3464 2.3.4
    remote_mta = _field_text(r.remote_mta or "", MAX_FIELD)
    if remote_mta:  # RFC 3464 2.3.5
        _set(block, "Remote-MTA", f"dns; {remote_mta}")
    diagnostic = _field_text(r.diagnostic or "", MAX_DIAGNOSTIC)
    if diagnostic:  # RFC 3464 2.3.6
        _set(block, "Diagnostic-Code", f"smtp; {diagnostic}")
    if r.last_attempt is not None:  # RFC 3464 2.3.7
        _set(block, "Last-Attempt-Date", format_datetime(_aware("last_attempt", r.last_attempt)))
    if r.will_retry_until is not None:  # RFC 3464 2.3.9
        _set(block, "Will-Retry-Until", format_datetime(_aware("will_retry_until", r.will_retry_until)))
    return block


# --- the other parts --------------------------------------------------------


def _hostname(name: str) -> str:
    host = name.removesuffix(".").lower() if isinstance(name, str) else ""
    if not _HOSTNAME.fullmatch(host):
        raise DsnError(f"reporting MTA {str(name)[:64]!a} is not a hostname")
    return host


def _sender(sender: str) -> str:
    if not isinstance(sender, str) or is_null_sender(sender):
        raise DsnError("no DSN is ever sent to the null sender (RFC 5321 4.5.5)")
    address = sender.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if len(address) > MAX_FIELD or not _MAILBOX.fullmatch(address):
        raise DsnError(f"sender {sender[:64]!a} is not a mailbox a DSN can be addressed to")
    return address


def _crlf(data: bytes) -> bytes:
    return _LINE_ENDINGS.sub(b"\r\n", bytes(data))


def _returned(message: bytes, ret: Ret | None, failed: bool, limit: int) -> tuple[Message, bool]:
    """The third part, and whether a full return was asked for but refused for size."""
    want_full = ret is Ret.FULL and failed
    part = Message(policy=email.policy.compat32)
    if want_full and len(message) <= limit:
        part["Content-Type"] = "message/rfc822"
        content = message
    else:
        part["Content-Type"] = "text/rfc822-headers"
        end = message.find(b"\r\n\r\n")
        content = message if end < 0 else message[:end + 2]
        if len(content) > limit:
            cuts = [m.end() for m in _FIELD_END.finditer(content) if m.end() <= limit]
            content = content[:cuts[-1]] if cuts else b""
    part["Content-Transfer-Encoding"] = "7bit" if content.isascii() else "8bit"
    if part.get_content_type() == "message/rfc822":
        # Parsed from bytes, 8-bit octets survive the generator (surrogateescape); the
        # only change is one space after each field name's colon.
        part.set_payload([email.message_from_bytes(content, policy=email.policy.compat32)])
    else:
        # A text payload with 8-bit octets is written back as it was read.
        part.set_payload(content.decode("ascii", "surrogateescape"))
    return part, want_full and len(message) > limit


def _human_text(host: str, recipients: Sequence[DsnRecipient], returned: str, full_refused: bool) -> str:
    failed = [r for r in recipients if r.action is Action.FAILED]
    delayed = [r for r in recipients if r.action is Action.DELAYED]
    other = [r for r in recipients if r.action not in (Action.FAILED, Action.DELAYED)]
    paragraphs = [f"This is the mail system at host {host}."]
    for group, intro in (
        (failed, "Your message could not be delivered to these recipients; this is final:"),
        (delayed, "Your message has not been delivered yet to these recipients; the mail system keeps trying:"),
        (other, "Your message was delivered (or handed on) to these recipients:"),
    ):
        if group:
            paragraphs.append(intro + "\n\n" + "\n".join(_human_line(r) for r in group[:LISTED_RECIPIENTS]))
            if len(group) > LISTED_RECIPIENTS:
                paragraphs.append(f"... and {len(group) - LISTED_RECIPIENTS} more (all are in the attached report).")
    what = "message" if returned == "message/rfc822" else "message's headers"
    note = f"Your {what} follow{'s' if what == 'message' else ''} this report."
    if full_refused:
        note += " The whole message was asked for (RET=FULL) but is too large to return."
    paragraphs.append(note)
    return "\n\n".join(paragraphs) + "\n"


def _human_line(r: DsnRecipient) -> str:
    # Human text may keep non-ASCII (the part is UTF-8); line structure is protected, and
    # a lone surrogate (no UTF-8 form) becomes U+FFFD.
    def one_line(text: str, limit: int) -> str:
        text = _SURROGATE.sub("\ufffd", text[:limit])
        return " ".join("".join(c if c.isprintable() else " " for c in text).split())

    line = f"<{one_line(r.address, MAX_FIELD)}>: {r.status}"
    remote_mta, diagnostic = one_line(r.remote_mta or "", MAX_FIELD), one_line(r.diagnostic or "", MAX_DIAGNOSTIC)
    if remote_mta:
        line += f", host {remote_mta} said"
    if diagnostic:
        line += f": {diagnostic}"
    if r.will_retry_until is not None:
        line += f" (retrying until {format_datetime(r.will_retry_until)})"
    return line
