"""Header injection, pure Python: the specification `_headers_c.pyx` follows.

`inject` stamps the attribution headers on a raw RFC 5322 message in one pass:
the header block is scanned line by line up to the first empty line, every
field whose name is reserved or about to be injected is dropped together with
its folded continuation lines, and the new fields are written at the top. All
other bytes - kept fields, the empty line, the body - are copied unchanged.

Rules, with the part of RFC 5322 each one comes from:

- A line ends at LF; a CR before it belongs to the line ending (CRLF and bare-LF
  messages both work). The header block ends at the first empty line (§2.1,
  §3.5); without one the whole message is header block.
- A line starting with SP or HTAB continues the field above it (folding,
  §2.2.3) and shares that field's fate. Continuation lines at the very top of
  the block continue no field: they are malformed and dropped, because a field
  written above them would otherwise absorb them.
- A field matches a name when the line is that name, case-insensitively
  (§1.2.2), then optional SP / HTAB (obsolete syntax, §4.5.3), then ':'. Lines
  without a colon are not fields and are kept.
- Injected names must be field names: one or more printable US-ASCII characters
  33-126 other than ':' (§2.2, §3.6.8). Injected values may carry 8-bit bytes
  (SMTPUTF8, RFC 6532) but never CR, LF or NUL: each is written as one line,
  `name: value`, ending with the message's own line ending (that of its first
  line; CRLF when it has none).

Injecting the same headers twice gives the same bytes as injecting them once.

`prefix` (bytes, empty by default) is written as is above the new fields: complete
header lines the caller made itself, such as the Received trace header, which would
otherwise cost a second full copy of the message to prepend. It is neither checked
nor scanned, and the line ending is still the message's own.
"""

from __future__ import annotations

import re

from . import _errors, _stamped

__all__ = ["RESERVED_HEADERS", "inject"]

# The attribution headers only the platform may set (see `_stamped`); always
# removed from the client's message, whether or not they are injected again.
RESERVED_HEADERS = _stamped.STAMPED_HEADERS

# RFC 5322 §3.6.8: field-name = 1*ftext; ftext = %d33-57 / %d59-126.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")

_LF = 0x0A
_CR = 0x0D
_SP = 0x20
_HTAB = 0x09


def inject(raw: bytes, headers: list[tuple[bytes, bytes]], prefix: bytes = b"") -> bytes:
    """Return `raw` with `headers` written at the top of its header block, and
    `prefix` as is above them.

    Every existing field named like a reserved header or like one of `headers`
    (case-insensitive) is removed first, folded lines included. Raises TypeError
    when `raw`, `prefix` or a header is not bytes and ValueError on an invalid
    field name or a value holding CR, LF or NUL.
    """
    if not isinstance(raw, bytes):
        raise _errors.raw_not_bytes(raw)
    if not isinstance(prefix, bytes):
        raise _errors.prefix_not_bytes(prefix)
    removed = set(RESERVED_HEADERS)
    fields = []
    for item in headers:
        if not isinstance(item, tuple) or len(item) != 2:
            raise _errors.bad_header_item(item)
        name, value = item
        if not isinstance(name, bytes):
            raise _errors.name_not_bytes(name)
        if _FIELD_NAME.fullmatch(name) is None:
            raise _errors.invalid_header_name(name)
        if not isinstance(value, bytes):
            raise _errors.value_not_bytes(name, value)
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise _errors.invalid_header_value(name)
        removed.add(name.lower())
        fields.append((name, value))

    first_lf = raw.find(b"\n")
    eol = b"\r\n" if first_lf < 0 or (first_lf > 0 and raw[first_lf - 1] == _CR) else b"\n"
    parts: list = [prefix, b"".join(name + b": " + value + eol for name, value in fields)]

    view = memoryview(raw)
    size = len(raw)
    pos = 0
    run_start = 0  # start of the kept bytes not yet copied
    dropping = True  # the current field is dropped; True at the top drops orphan continuations
    while pos < size:
        lf = raw.find(b"\n", pos)
        end = size if lf < 0 else lf + 1
        first = raw[pos]
        if first == _LF or (first == _CR and lf == pos + 1):
            break  # the empty line: end of the header block
        if first == _SP or first == _HTAB:
            drop = dropping  # a continuation line shares its field's fate
        else:
            colon = raw.find(b":", pos, end)
            drop = colon >= 0 and raw[pos:colon].rstrip(b" \t").lower() in removed
        if drop:
            if not dropping:
                parts.append(view[run_start:pos])
        elif dropping:
            run_start = pos
        dropping = drop
        pos = end
    if dropping:
        run_start = pos
    parts.append(view[run_start:])
    return b"".join(parts)
