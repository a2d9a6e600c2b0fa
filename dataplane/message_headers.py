"""Header fields read from a message's raw bytes with byte searches only: the SMTP
Bridge (the message index), the inbound listener and the sink read a few fields
per message, where the stdlib `email` parser would cost far more than the rest of
the work (ARCHITECTURE.md: never on the per-message hot path).
"""

from __future__ import annotations

# RFC 5322 section 2.1.1: no line is longer than 998 characters, so neither is a
# Message-ID worth indexing.
MAX_MESSAGE_ID = 998


def header_block(message: bytes) -> bytes:
    """The message's header section, its last line ending included (CRLF or bare LF)."""
    if message[:1] == b"\n" or message[:2] == b"\r\n":
        return b""
    end = message.find(b"\r\n\r\n")
    limit = len(message) if end < 0 else end
    bare = message.find(b"\n\n", 0, limit)
    if bare >= 0:
        return message[: bare + 1]
    return message if end < 0 else message[: end + 2]


def header_fields(message: bytes, names: tuple[str, ...]) -> dict[str, str | None]:
    """The first value of each header in `names` (lower-case), unfolded and stripped;
    None when absent. Only the header block is searched; no email parsing."""
    text = b"\n" + header_block(message).replace(b"\r\n", b"\n")
    lowered = text.lower()
    fields: dict[str, str | None] = {}
    for name in names:
        start = lowered.find(b"\n" + name.encode() + b":")
        if start < 0:
            fields[name] = None
            continue
        start += len(name) + 2
        end = text.find(b"\n", start)
        # RFC 5322 section 2.2.3: a line starting with WSP continues the field.
        while end >= 0 and text[end + 1 : end + 2] in (b" ", b"\t"):
            end = text.find(b"\n", end + 1)
        value = text[start:] if end < 0 else text[start:end]
        fields[name] = value.replace(b"\n", b"").strip().decode("utf-8", "replace")
    return fields


def indexed_message_id(value: str | None) -> str | None:
    """A Message-ID header value as the message index keys it: the msg-id between
    the first "<" and the next ">" (RFC 5322 section 3.6.4; comments and folding
    around it dropped), else the whole value stripped; None when there is nothing
    to index or it is longer than a header line may be."""
    if not value:
        return None
    start = value.find("<")
    end = value.find(">", start + 1) if start >= 0 else -1
    found = value[start + 1 : end] if end > start >= 0 else value
    found = found.strip()
    return found if found and len(found) <= MAX_MESSAGE_ID else None
