"""MIME for the report parser: bytes to a message tree, a bounded walk over it, and
the text, field blocks and header fields inside its parts, all without raising.

Policy: `email.policy.compat32`. Reports are read, never re-sent, and compat32 hands
back header values as the raw strings that were received; the `default` policy
parses each header into a structured object on access, which is where the stdlib
has historically raised on malformed addresses and encoded words, and flufl.bounce's
detectors are written against compat32 messages. With compat32 the feedparser
records bad MIME as defects instead of raising.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.errors
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from io import BytesIO
from typing import AnyStr

from .limits import (
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_FIELDS_PER_BLOCK,
    MAX_HEADER_FIELDS,
    MAX_HEADER_VALUE,
    MAX_PARTS,
    MAX_VALUE,
)

# What a report's third part may be (RFC 6522 section 3; RFC 3464 section 2;
# RFC 5965 section 2 item d; RFC 6533 sections 6.3 and 6.4 for the UTF-8 forms).
RETURNED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
RETURNED_HEADERS_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
RETURNED_TYPES = RETURNED_MESSAGE_TYPES | RETURNED_HEADERS_TYPES

# Errors the email package and codecs raise on malformed content when asked to
# decode or serialise it (bad base64 padding, unknown charsets, bad encoded words).
DECODE_ERRORS = (
    email.errors.MessageError,
    LookupError,
    UnicodeError,
    ValueError,
    TypeError,
    binascii.Error,
)

_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 3.6.8: printable ASCII but ':'


# A Content-Type field with its continuation lines (RFC 5322 2.2.3).
_LONG_CONTENT_TYPE = re.compile(rb"^content-type:(?:[^\r\n]|\r?\n[ \t])*", re.IGNORECASE | re.MULTILINE)


def _cut_at_separator(value: AnyStr, limit: int, separators: tuple[AnyStr, AnyStr]) -> AnyStr:
    # Cut at the last list separator before the limit, so no address or
    # parameter is kept half.
    cut = value[:limit]
    at = max(cut.rfind(separators[0]), cut.rfind(separators[1]))
    return cut[:at] if at > 0 else cut


def _shorten_content_type(found: re.Match[bytes]) -> bytes:
    # The feedparser reads every part's Content-Type parameters while it parses,
    # with work that grows faster than the length; a field longer than any real
    # one is cut before parsing.
    field = found.group(0)
    return field if len(field) <= MAX_HEADER_VALUE else _cut_at_separator(field, MAX_HEADER_VALUE, (b";", b";"))


# A part that holds other parts (RFC 2046 5.1 multipart, 5.2 message).
_CONTAINER = re.compile(rb"^content-type:[ \t]*(?:\r?\n[ \t]+)?(?:multipart|message)/", re.IGNORECASE | re.MULTILINE)


class MimeTooComplex(Exception):
    """The message declares more nested parts than the parser reads."""


def parse_message(data: bytes) -> Message:
    """A compat32 message tree of `data`; raises only MimeTooComplex.

    Content-Type fields longer than MAX_HEADER_VALUE are cut first. The
    feedparser follows nested parts recursively, with work that grows with the
    depth, and a few thousand levels exhaust the recursion limit: a message that
    declares more than MAX_CONTAINERS multipart or message parts is refused
    before parsing (RecursionError stays caught as a second guard).
    """
    data = _LONG_CONTENT_TYPE.sub(_shorten_content_type, bytes(data))
    containers = len(_CONTAINER.findall(data))
    if containers > MAX_CONTAINERS:
        raise MimeTooComplex(f"{containers} multipart or message parts declared (at most {MAX_CONTAINERS} are read)")
    try:
        return email.message_from_bytes(data, policy=compat32)
    except RecursionError:
        raise MimeTooComplex("MIME parts nested too deeply to parse") from None


def clean(value: object, limit: int = MAX_VALUE) -> str:
    """`value` as clean one-line text: bytes that were not UTF-8 replaced (no lone
    surrogates), folding undone (RFC 5322 2.2.3), control characters and runs of
    whitespace made single spaces, stripped, at most `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    # The parser keeps undecodable bytes as surrogate escapes; RFC 6532 says
    # 8-bit header text is UTF-8, so decode it as that.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = _CONTROL.sub(" ", text)
    # Unfolding (RFC 5322 2.2.3) and the indentation of continuation lines leave
    # runs of whitespace that say nothing; one space is kept.
    return _WHITESPACE.sub(" ", text).strip()[:limit]


@dataclass(frozen=True, slots=True)
class Walk:
    """The parts visited by `walk_parts`, in depth-first order, and what was cut."""

    parts: tuple[Message, ...]
    parts_cut: bool
    depth_cut: bool


def content_type(part: Message) -> str:
    """The part's lower-cased `maintype/subtype` (RFC 2045 5.2 default text/plain)."""
    try:
        return part.get_content_type()
    except DECODE_ERRORS:
        return "text/plain"


def payload(part: Message) -> list[Message] | str:
    """`part.get_payload()`, or "" for a leaf whose 8-bit text cannot be shown: the
    stdlib decodes it with the declared charset, and a charset with a NUL in it
    raises ValueError there instead of falling back as for an unknown one."""
    try:
        return part.get_payload()
    except DECODE_ERRORS:
        return ""


def walk_parts(msg: Message) -> Walk:
    """Depth-first parts of `msg` (itself first), at most MAX_PARTS, MAX_DEPTH deep.

    Only multipart/* parts are entered: a returned message (RETURNED_TYPES) is
    listed but what is inside it is the sender's content, not the report's.
    Iterative, so a deep tree cannot exhaust the stack the way Message.walk() can.
    """
    parts: list[Message] = []
    parts_cut = depth_cut = False
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if len(parts) >= MAX_PARTS:
            parts_cut = True
            break
        parts.append(part)
        body = payload(part)
        # Only multiparts hold MIME parts: a message/* part's sub-messages are a
        # returned message (not the report's) or a report's field blocks.
        if not isinstance(body, list) or not content_type(part).startswith("multipart/"):
            continue
        if depth >= MAX_DEPTH:
            depth_cut = depth_cut or bool(body)
            continue
        children = [child for child in body[:MAX_PARTS] if isinstance(child, Message)]
        stack.extend((child, depth + 1) for child in reversed(children))
    return Walk(tuple(parts), parts_cut, depth_cut)


def trim_headers(walk: Walk) -> bool:
    """Cut, in place, each walked part's header to MAX_HEADER_FIELDS fields of at
    most MAX_HEADER_VALUE characters; True when anything was cut.

    Everything after the parse (content-type parameters, flufl.bounce's address
    parsing of From and X-Failed-Recipients) then works on bounded strings.
    """
    cut = False
    for part in walk.parts:
        items = part.raw_items()
        fields = list(items)
        if len(fields) <= MAX_HEADER_FIELDS and all(len(str(v)) <= MAX_HEADER_VALUE for _, v in fields):
            continue
        cut = True
        for name in set(part.keys()):
            del part[name]
        for name, value in fields[:MAX_HEADER_FIELDS]:
            part[name] = _cut_at_separator(str(value), MAX_HEADER_VALUE, (",", ";"))
    return cut


def _transfer_decode(data: bytes, cte: str) -> bytes:
    """Undo a base64 or quoted-printable Content-Transfer-Encoding (RFC 2045 6.7, 6.8)."""
    if cte == "base64":
        compact = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        # Missing padding is common in broken generators; add it rather than fail.
        compact += b"=" * (-len(compact) % 4)
        try:
            return base64.b64decode(compact)
        except binascii.Error:
            return data
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    return data


def _message_bytes(msg: Message) -> bytes:
    """`msg` serialised back to the bytes it was parsed from (8-bit kept as is)."""
    body_text = payload(msg)
    if isinstance(body_text, str):
        # Written by hand rather than by the generator: the generator refolds
        # headers and always puts a blank line before the body, but where the
        # feedparser met a line that is not a field (transfer-encoded text) it
        # recorded MissingHeaderBodySeparatorDefect and no blank line was there.
        head = "".join(f"{name}: {value}\n" for name, value in msg.raw_items())
        gap = "" if any(isinstance(d, email.errors.MissingHeaderBodySeparatorDefect) for d in msg.defects) else "\n"
        # decode=True gives the body's original bytes; without it compat32 turns
        # 8-bit bytes into U+FFFD.
        try:
            body = msg.get_payload(decode=True)
        except DECODE_ERRORS:
            body = b""
        return (head + gap).encode("utf-8", "surrogateescape") + (body if isinstance(body, bytes) else b"")
    out = BytesIO()
    try:
        BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=compat32).flatten(msg)
    except DECODE_ERRORS:
        return b""
    return out.getvalue()


def part_bytes(part: Message) -> bytes:
    """The body of `part`, transfer encoding undone; b"" when it has none.

    The feedparser parses every message/* body (delivery-status, feedback-report,
    global-delivery-status) into nested header blocks whatever its
    Content-Transfer-Encoding, so those are serialised back and decoded here;
    RFC 6533 section 6 allows base64 and quoted-printable on the message/global*
    types and some MTAs use them on message/delivery-status too.
    """
    parts = payload(part)
    try:
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    except DECODE_ERRORS:
        cte = ""
    if isinstance(parts, list):
        raw = b"".join(_message_bytes(sub) for sub in parts if isinstance(sub, Message))
        return _transfer_decode(raw, cte)
    try:
        decoded = part.get_payload(decode=True)
    except DECODE_ERRORS:
        return b""
    return decoded if isinstance(decoded, bytes) else b""


def part_text(part: Message, limit: int) -> str:
    """The body of `part` as text in its declared charset (UTF-8 when none or
    unknown), undecodable bytes replaced, at most `limit` characters."""
    data = part_bytes(part)[: limit * 4]
    try:
        charset = part.get_content_charset() or "utf-8"
        codecs.lookup(charset)
    except DECODE_ERRORS:
        charset = "utf-8"
    try:
        return data.decode(charset, "replace")[:limit]
    except DECODE_ERRORS:
        return data.decode("utf-8", "replace")[:limit]


def field_blocks(text: str, max_blocks: int) -> list[list[tuple[str, str]]]:
    """`Name: value` blocks separated by blank lines (RFC 3464 section 2.1 and RFC
    5965 section 3 use RFC 5322 header syntax), continuation lines unfolded, values
    cleaned; lines that are not fields are skipped. At most `max_blocks` blocks of
    MAX_FIELDS_PER_BLOCK fields, each value at most MAX_VALUE characters."""
    blocks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
                if len(blocks) >= max_blocks:
                    return blocks
            continue
        if line[0] in " \t":
            if current and len(current[-1][1]) < MAX_VALUE:
                name, value = current[-1]
                current[-1] = (name, clean(value + " " + line))
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if colon and _FIELD_NAME.match(name) and len(current) < MAX_FIELDS_PER_BLOCK:
            current.append((clean(name, 80), clean(value)))
    if current and len(blocks) < max_blocks:
        blocks.append(current)
    return blocks


def field(block: list[tuple[str, str]], name: str) -> str:
    """The first value of field `name` (case-insensitive) in `block`, or ""."""
    wanted = name.lower()
    return next((value for field_name, value in block if field_name.lower() == wanted), "")


def fields(block: list[tuple[str, str]], name: str) -> list[str]:
    """Every value of field `name` (case-insensitive) in `block`, in order."""
    wanted = name.lower()
    return [value for field_name, value in block if field_name.lower() == wanted]


def header_fields(msg: Message, limit: int) -> list[tuple[str, str]]:
    """The header fields of `msg` as received, in order, cleaned, at most `limit`."""
    out: list[tuple[str, str]] = []
    for name, value in msg.raw_items():
        if len(out) >= limit:
            break
        out.append((clean(name, 80), clean(value)))
    return out


def returned_headers(part: Message, limit: int) -> list[tuple[str, str]]:
    """The header fields of the original message carried by a RETURNED_TYPES part.

    message/rfc822 arrives parsed (its headers are read as they are); the headers
    types (text/rfc822-headers, RFC 6522 section 4, and message/global-headers) and
    transfer-encoded message/global bodies are decoded and read as one field block.
    """
    parts = payload(part)
    try:
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    except DECODE_ERRORS:
        cte = ""
    if (
        isinstance(parts, list)
        and parts
        and isinstance(parts[0], Message)
        and cte not in ("base64", "quoted-printable")
    ):
        return header_fields(parts[0], limit)
    text = part_bytes(part).decode("utf-8", "replace")
    blocks = field_blocks(text, max_blocks=1)
    return blocks[0][:limit] if blocks else []


def iter_leaf_text(walk: Walk, types: frozenset[str], limit: int) -> Iterator[str]:
    """The decoded text of each walked leaf part whose type is in `types`."""
    for part in walk.parts:
        if not isinstance(payload(part), list) and content_type(part) in types:
            yield part_text(part, limit)
