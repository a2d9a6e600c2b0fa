"""A REST send request as the message and envelope the Bridge accepts: a JSON
message built into MIME with the stdlib `email` package, or a raw RFC 5322
message (`message/rfc822`) with its envelope in the query string.

JSON fields (`/openapi.json`, schema `Message`): `from` (required), `to`, `cc`,
`bcc` (an address or a list; at least one recipient in all), `reply_to`,
`subject`, `text` and/or `html` (at least one), `headers` (name -> value), and
`attachments` ([{filename, content_type, content: base64}]). Bcc recipients are
in the envelope, never in a header. The builder sets Date and Message-ID unless
`headers` gives them.

Everything here refuses with `problems.Problem` (400 for what cannot be read,
422 for a message that cannot be built as asked); no I/O.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage

from .problems import invalid_message, malformed

# RFC 5322 3.6.8: a field name is printable ASCII except the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# Deliberately plain (RFC 5321 4.1.2 addr-spec without quoted local parts or literals):
# the address goes into an SMTP envelope as it is.
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
# Headers the builder writes from the JSON fields: given in `headers`, they would
# contradict them (or, for Bcc, disclose the blind recipients).
_BUILT_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "subject", "mime-version", "content-type",
                            "content-transfer-encoding", "content-disposition"})
_FIELDS = frozenset({"from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "headers", "attachments"})
# What may not be in a header value given in JSON: the C0 controls but TAB, DEL, and
# what str.splitlines() breaks at (the stdlib's header folding refuses those as line breaks).
_NOT_IN_HEADER = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
# An error quotes at most this much of the client's input (ARCHITECTURE.md, "Limits").
_QUOTE = 80


@dataclass(frozen=True, slots=True)
class Submission:
    """One message to accept: its envelope and its RFC 5322 bytes (CRLF line ends)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


def _quote(text: str) -> str:
    return repr(text[:_QUOTE] + ("…" if len(text) > _QUOTE else ""))


def _string(value, field: str) -> str:
    if not isinstance(value, str):
        raise malformed(f"{field} must be a string")
    if _NOT_IN_HEADER.search(value):
        raise invalid_message(f"{field} must be one line of text (no CR, LF, NUL or other control characters)")
    return value


def mailbox(value, field: str) -> tuple[str, str]:
    """(display name, address) of `Name <a@b>` or `a@b`; 422 naming `field` when it is not one."""
    name, address = email.utils.parseaddr(_string(value, field))
    if not _ADDRESS.fullmatch(address):
        raise invalid_message(f"{field}: not an email address: {_quote(value)} (ASCII, like name@example.com)")
    return name, address


def _mailboxes(value, field: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise malformed(f"{field} must be an address or a list of addresses")
    return [mailbox(item, f"{field}[{i}]" if items is value else field) for i, item in enumerate(items)]


def _header_value(mailboxes: list[tuple[str, str]]) -> list[Address]:
    return [Address(display_name=name, addr_spec=address) for name, address in mailboxes]


def _add_headers(message: EmailMessage, headers) -> None:
    if not isinstance(headers, dict):
        raise malformed("headers must be an object of header name -> value")
    for name, value in headers.items():
        if not _FIELD_NAME.fullmatch(name):
            raise invalid_message(f"headers: not a header name: {_quote(name)} (RFC 5322 3.6.8)")
        if name.lower() in _BUILT_HEADERS:
            raise invalid_message(f"headers: {name} is set from the message's own fields; use them instead")
        message[name] = _string(value, f"headers[{name}]")


def _attach(message: EmailMessage, attachments) -> None:
    if not isinstance(attachments, list):
        raise malformed("attachments must be a list")
    for i, item in enumerate(attachments):
        where = f"attachments[{i}]"
        if not isinstance(item, dict):
            raise malformed(f"{where} must be an object with filename, content_type and content")
        filename = _string(item.get("filename"), f"{where}.filename")
        content_type = _string(item.get("content_type", "application/octet-stream"), f"{where}.content_type")
        if not _CONTENT_TYPE.fullmatch(content_type):
            raise invalid_message(f"{where}.content_type: not a media type: {_quote(content_type)}")
        try:
            data = base64.b64decode(_string(item.get("content"), f"{where}.content"), validate=True)
        except binascii.Error:
            raise invalid_message(f"{where}.content is not base64") from None
        maintype, subtype = content_type.lower().split("/", 1)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)


def from_json(document) -> Submission:
    """The message a JSON send request describes, built as MIME (multipart/alternative
    for text plus html, multipart/mixed around it with attachments)."""
    try:
        return _build(document)
    except (ValueError, TypeError, IndexError) as exc:  # what the email package refuses past the checks above
        raise invalid_message(f"the message cannot be built: {str(exc)[:_QUOTE]}") from None


def _build(document) -> Submission:
    if not isinstance(document, dict):
        raise malformed("the request body must be a JSON object (a message)")
    unknown = sorted(set(document) - _FIELDS)
    if unknown:
        raise malformed(f"unknown field(s): {', '.join(_quote(u) for u in unknown[:5])}")
    if "from" not in document:
        raise invalid_message("from is required")
    sender = mailbox(document["from"], "from")
    to, cc, bcc = (_mailboxes(document.get(f), f) for f in ("to", "cc", "bcc"))
    if not (to or cc or bcc):
        raise invalid_message("the message needs at least one recipient in to, cc or bcc")
    text, html = document.get("text"), document.get("html")
    if text is None and html is None:
        raise invalid_message("the message needs a body: text, html or both")
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = _header_value([sender])
    for name, mailboxes in (("To", to), ("Cc", cc), ("Reply-To", _mailboxes(document.get("reply_to"), "reply_to"))):
        if mailboxes:
            message[name] = _header_value(mailboxes)
    message["Subject"] = _string(document.get("subject", ""), "subject")
    _add_headers(message, document.get("headers", {}))
    if "date" not in message:
        message["Date"] = email.utils.formatdate(usegmt=True)
    if "message-id" not in message:
        message["Message-ID"] = email.utils.make_msgid(domain=sender[1].rpartition("@")[2])
    if text is not None:
        message.set_content(_body(text, "text"))
    if html is not None:
        if text is None:
            message.set_content(_body(html, "html"), subtype="html")
        else:
            message.add_alternative(_body(html, "html"), subtype="html")
    if document.get("attachments"):
        _attach(message, document["attachments"])
    recipients = tuple(dict.fromkeys(address for _, address in (*to, *cc, *bcc)))
    return Submission(sender[1], recipients, message.as_bytes())


def _body(value, field: str) -> str:
    if not isinstance(value, str):
        raise malformed(f"{field} must be a string")
    return value


def from_raw(content: bytes, sender: str | None, recipients: list[str]) -> Submission:
    """A raw RFC 5322 message with its envelope (`from`, `to` query parameters); the
    content is sent as it came (its limits are the Bridge's: `content_refusal`)."""
    if sender is None:
        raise invalid_message("a message/rfc822 body needs the envelope sender: ?from=sender@example.com "
                              "(from= empty for the null sender)")
    mail_from = "" if sender == "" else mailbox(sender, "from")[1]
    addresses = [part.strip() for value in recipients for part in value.split(",") if part.strip()]
    if not addresses:
        raise invalid_message("a message/rfc822 body needs its recipients: ?to=rcpt@example.net (repeatable)")
    rcpt_tos = tuple(dict.fromkeys(mailbox(a, "to")[1] for a in addresses))
    if not content.strip():
        raise invalid_message("the message is empty")
    return Submission(mail_from, rcpt_tos, content)
