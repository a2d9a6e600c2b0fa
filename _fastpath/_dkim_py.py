"""DKIM relaxed canonicalisation, pure Python: the specification `_dkim_c.pyx` follows.

Both functions produce the bytes a DKIM hash is computed over (RFC 6376 section
3.4, "relaxed"); the signer in the data plane hashes and signs them.

Line endings. Our messages travel as CRLF (RFC 5321 section 2.3.8), but a client
may hand over bare LFs. A line ends at LF; a CR right before it belongs to the line
ending (the rule of `_headers_py`). So a bare LF counts as CRLF, which is what
receivers that repair bare LFs, and `dkimpy`, see; a CR not followed by LF is an
ordinary byte of its line.

`relaxed_body` (RFC 6376 section 3.4.4):

- every run of WSP (SP, HTAB) inside a line becomes one SP;
- WSP at the end of a line is removed, the last line's too when the body does not
  end with a line ending (SMTP transmits it with one, RFC 5321 section 4.1.1.4);
- empty lines at the end of the body are removed;
- every remaining line ends with CRLF, so a non-empty result ends with CRLF;
- an empty body, or one with nothing but empty lines and WSP, gives b"": section
  3.4.4 adds a CRLF only to a non-empty body, unlike the "simple" rule of section
  3.4.3, which makes an empty body CRLF (dkimpy and OpenDKIM read it so too).

`relaxed_header(name, value)` (RFC 6376 section 3.4.2): the name in lower case
(ASCII) without the WSP before the colon, then ":", then the value unfolded (every
line ending removed), its WSP runs made one SP and WSP at both ends removed. No
CRLF is appended: the caller adds it between fields, and the DKIM-Signature field
itself is hashed without one (section 3.7).
"""

from __future__ import annotations

import re

from . import _errors

__all__ = ["relaxed_body", "relaxed_header"]

_WSP_RUN = re.compile(rb"[ \t]+")
_LINE_END = re.compile(rb"\r?\n")


def relaxed_body(body: bytes) -> bytes:
    """The relaxed canonical form of a message body (RFC 6376 section 3.4.4).

    b"" for a body with no content; otherwise lines with single SPs for WSP runs,
    no trailing WSP, no trailing empty lines, each ending with CRLF. Raises
    TypeError when `body` is not bytes.
    """
    if not isinstance(body, bytes):
        raise _errors.not_bytes("body", body)
    pieces = body.split(b"\n")
    last = pieces.pop()  # after the last LF: a line without its ending, or b""
    lines = [piece[:-1] if piece.endswith(b"\r") else piece for piece in pieces]
    if last:
        lines.append(last)
    lines = [_WSP_RUN.sub(b" ", line.rstrip(b" \t")) for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """The relaxed canonical form of one header field, `name:value` without CRLF
    (RFC 6376 section 3.4.2).

    `value` is everything after the colon, folds and a final line ending included
    or not. Raises TypeError when `name` or `value` is not bytes.
    """
    if not isinstance(name, bytes):
        raise _errors.not_bytes("header name", name)
    if not isinstance(value, bytes):
        raise _errors.not_bytes("header value", value)
    value = _WSP_RUN.sub(b" ", _LINE_END.sub(b"", value)).strip(b" \t")
    return name.lower().rstrip(b" \t") + b":" + value
