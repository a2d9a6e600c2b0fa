"""How a reported outcome is read: status codes (RFC 3463), actions (RFC 3464
section 2.3.3), the permanent/temporary decision, and recipient addresses.

The one decision every caller relies on, `decide`, is here so DSNs and
nonstandard bounces are judged by the same rule.
"""

from __future__ import annotations

import re
from typing import get_args

from .limits import MAX_ADDRESS
from .mime import clean
from .results import Action

# RFC 3463 section 2: status-code = class "." subject "." detail, class 2, 4 or 5,
# subject and detail 1 to 3 digits.
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# RFC 5321 section 4.2: a reply code is three digits, the first 2 to 5.
_BASIC = re.compile(r"(?<![\d.])([245])[0-5]\d(?![\d.])")

_ACTIONS: frozenset[str] = frozenset(get_args(Action))


def enhanced_code(text: str) -> str:
    """The first RFC 3463 status code in `text` ("5.1.1"), or ""."""
    found = _ENHANCED.search(text)
    return ".".join(found.groups()) if found else ""


def reply_class(text: str) -> str:
    """The class ("2", "4" or "5") of the first SMTP reply code in `text`, or ""."""
    found = _BASIC.search(text)
    return found.group(1) if found else ""


def normalise_action(value: str) -> Action | None:
    """The RFC 3464 section 2.3.3 action named by a field value, or None.

    Only the first word counts (some MTAs append a comment); OpenSMTPD writes the
    non-standard `error`, which means what `failed` does.
    """
    word = value.strip().split(" ", 1)[0].split("(", 1)[0].strip().lower() if value.strip() else ""
    if word == "error":
        return "failed"
    return word if word in _ACTIONS else None  # type: ignore[return-value]


def decide(action: Action | None, status: str, diagnostic: str) -> tuple[Action, str, bool] | None:
    """(action, status code, permanent) for one recipient, or None when the report
    says neither what happened nor with which code.

    The code is the Status field's (RFC 3464 2.3.4), else the first one in the
    diagnostic. With no action, the code's class stands for it (5 failed, 4
    delayed, 2 delivered). Permanent means the recipient will not get this
    message by retrying: action `failed` with class 5 (RFC 3463 section 3.1,
    "Permanent Failure"), or `failed` with no code at all, the MTA's own word.
    A 4.x.x code is "Persistent Transient Failure" (RFC 3463 3.1): even when an
    MTA gave up (`failed`, e.g. the queue lifetime ran out) the address itself is
    not known to be bad, so it is temporary; `delayed` is always temporary.
    """
    code = enhanced_code(status) or enhanced_code(diagnostic)
    klass = code[:1] or reply_class(diagnostic)
    if action is None:
        action = {"5": "failed", "4": "delayed", "2": "delivered"}.get(klass)  # type: ignore[assignment]
        if action is None:
            return None
    permanent = action == "failed" and klass in ("5", "")
    return action, code, permanent


def strip_type(value: str) -> str:
    """A typed field's value without its type: "dns; mx.example" -> "mx.example".

    RFC 3464 2.2.2, 2.3.5 and 2.3.6 (and RFC 5965 3.2 for Reporting-MTA) write
    "type ; value"; the type ("dns", "smtp") is not what a person reads.
    """
    head, semicolon, rest = value.partition(";")
    head = head.strip()
    return rest.strip() if semicolon and head and " " not in head else value.strip()


_TYPED = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9-]*)\s*;(.*)$", re.DOTALL)
_COMMENT = re.compile(r"\([^()]*\)")
_XTEXT = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _unescape_utf8_addr(text: str) -> str:
    # RFC 6533 section 3: utf-8-addr-xtext writes some characters as \x{HEX}.
    def char(found: re.Match[str]) -> str:
        point = int(found.group(1), 16)
        return chr(point) if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF else "\ufffd"

    return _XTEXT.sub(char, text)


def normalise_address(value: str) -> str:
    """A recipient address as the parser reports it, or "" when there is none.

    Strips the address type (`rfc822;`, `utf-8;`, RFC 3464 section 2.3.2 and RFC
    6533 section 3), comments, angle brackets and whitespace, and lower-cases the
    domain (domains are case-insensitive, RFC 5321 section 2.4; local parts are
    not, so they are kept). A single token without `@` (a gateway's own address
    form) is kept as written; longer than MAX_ADDRESS, or several words none of
    which has an `@`, is "".
    """
    text = clean(value, MAX_ADDRESS * 4)
    typed = _TYPED.match(text)
    if typed:
        address_type, text = typed.group(1).lower(), typed.group(2)
        if address_type == "utf-8":
            text = _unescape_utf8_addr(text)
    text = _COMMENT.sub(" ", text)
    if "<" in text:
        text = text.split("<", 1)[1].split(">", 1)[0]
    tokens = [token.strip("\"'<>,;:") for token in text.split()]
    tokens = [token for token in tokens if token and "<" not in token and ">" not in token]
    candidates = [token for token in tokens if "@" in token]
    if not candidates:
        # A gateway's non-Internet address (RFC 3464 appendix example "unknown;
        # nair_s") is still the recipient the report names: kept as written.
        # One with a ";" would read as a typed address ("type; value") the next time.
        single = tokens[0] if len(tokens) == 1 else ""
        return single if len(single) <= MAX_ADDRESS and ";" not in single else ""
    local, _, domain = candidates[0].rpartition("@")
    domain = domain.lower().rstrip(".")
    if not local or not domain or len(candidates[0]) > MAX_ADDRESS:
        return ""
    return f"{local}@{domain}"
