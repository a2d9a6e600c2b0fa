"""What a sender asked for with the RFC 3461 DSN extension, and whether a DSN is due.

The SMTP bridge gets four ESMTP parameters (RFC 3461 section 4):

    MAIL FROM:<s@example.com> RET=HDRS ENVID=QQ314159
    RCPT TO:<r@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;r@example.net

`parse_mail_params` and `parse_rcpt_params` read them from the parameter lists
aiosmtpd hands over ("KEY=VALUE" strings; other keywords belong to other
extensions and are ignored) into `MailDsnParams` and `RcptDsnParams`. A bad value
raises `DsnParamError`, whose `reply` is the 501 the bridge sends (RFC 5321 4.2.2:
501 is a syntax error in parameters; RFC 3463 3.6: X.5.4 invalid command
arguments). A reply quotes at most 32 characters of the input, escaped to ASCII
(at most 64 characters of escapes).

`dsn_due(mail_from, notify, action)` decides whether one recipient's outcome
gets a DSN at all; `should_notify` is the NOTIFY half of that rule.

Bounds: a value is refused past its RFC length (ENVID 100, ORCPT 500 characters);
nothing else is buffered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_ENVID = 100  # RFC 3461 4.4
MAX_ORCPT = 500  # RFC 3461 4.2
QUOTE_CHARS = 32
REPLY_INVALID_PARAM = "501 5.5.4 {detail}"

# RFC 3461 4: xchar = "!" (33) .. "~" (126) except "+" and "="
_XCHARS = frozenset(chr(c) for c in range(33, 127)) - {"+", "="}
_HEX = frozenset("0123456789ABCDEFabcdef")
# RFC 5322 3.2.3 atext, the characters of an addr-type (RFC 3461 4.2: an atom)
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")


class DsnParamError(ValueError):
    """A DSN parameter the client sent is invalid; `reply` is the SMTP reply for it."""

    @property
    def reply(self) -> str:
        """The 501 5.5.4 reply the bridge sends for this error."""
        return REPLY_INVALID_PARAM.format(detail=self.args[0])


def _quote(text: str) -> str:
    # ascii() escapes CR, LF and non-ASCII, so the quote cannot break an SMTP reply;
    # escapes are longer than what they stand for, hence the second cut.
    quoted = ascii(text[:QUOTE_CHARS])
    if len(quoted) > 2 * QUOTE_CHARS:
        return quoted[:2 * QUOTE_CHARS] + "..."
    return quoted + ("..." if len(text) > QUOTE_CHARS else "")


class Action(enum.StrEnum):
    """The RFC 3464 2.3.3 action of a per-recipient report. The delivery engine's
    outcomes map as bounced -> FAILED, deferred -> DELAYED, delivered -> DELIVERED
    (RELAYED: handed to a next hop that does not do DSN, RFC 3461 6.2.1)."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


class Ret(enum.StrEnum):
    """RFC 3461 4.3: return the full message, or only its headers, in a failure DSN."""

    FULL = "FULL"
    HDRS = "HDRS"


@dataclass(frozen=True, slots=True)
class Notify:
    """RFC 3461 4.1 NOTIFY: which outcomes the sender wants a DSN for. All False is NEVER."""

    success: bool = False
    failure: bool = False
    delay: bool = False

    def __str__(self) -> str:
        """The parameter value, as relayed to a next hop that speaks DSN (RFC 3461 5.2)."""
        words = [w for w, on in (("SUCCESS", self.success), ("FAILURE", self.failure), ("DELAY", self.delay)) if on]
        return ",".join(words) or "NEVER"


NOTIFY_NEVER = Notify()


@dataclass(frozen=True, slots=True)
class OriginalRecipient:
    """RFC 3461 4.2 ORCPT: the address type (lowercased, e.g. "rfc822", "utf-8") and the
    recipient as the sender first gave it, xtext-decoded."""

    addr_type: str
    address: str


@dataclass(frozen=True, slots=True)
class MailDsnParams:
    """The DSN parameters of MAIL FROM; None where the sender gave none."""

    ret: Ret | None = None
    envid: str | None = None


@dataclass(frozen=True, slots=True)
class RcptDsnParams:
    """The DSN parameters of one RCPT TO; None where the sender gave none."""

    notify: Notify | None = None
    orcpt: OriginalRecipient | None = None


# --- xtext (RFC 3461 section 4) ---------------------------------------------


def xtext_encode(text: str) -> str:
    """`text` as xtext: every character outside "!".."~", and "+" and "=", becomes
    "+" and two upper-case hex digits per UTF-8 octet (RFC 3461 4). DsnParamError
    for text that has no UTF-8 form (a lone surrogate)."""
    out = []
    for char in text:
        if char in _XCHARS:
            out.append(char)
            continue
        try:
            octets = char.encode("utf-8")
        except UnicodeEncodeError:
            raise DsnParamError(f"{char!a} has no UTF-8 form") from None
        out.extend(f"+{octet:02X}" for octet in octets)
    return "".join(out)


def xtext_decode(value: str, *, allow_utf8: bool = False) -> str:
    """The text an xtext value encodes. DsnParamError for a character outside xchar, a
    "+" without two hex digits after it (RFC 3461 4 asks for upper case; lower case
    is accepted), or octets that are not UTF-8. `allow_utf8` lets raw non-ASCII
    characters through (RFC 6533 3, utf-8-addr-unitext in an SMTPUTF8 session)."""
    octets = bytearray()
    i, end = 0, len(value)
    while i < end:
        char = value[i]
        if char == "+":
            pair = value[i + 1:i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise DsnParamError(f"xtext {_quote(value)}: '+' must be followed by two hex digits")
            octets.append(int(pair, 16))
            i += 3
            continue
        if char in _XCHARS:
            octets.append(ord(char))
        elif allow_utf8 and ord(char) > 0x7F:
            octets += char.encode("utf-8", "surrogatepass")  # a lone surrogate fails the decode below
        else:
            raise DsnParamError(f"xtext {_quote(value)}: character {char!a} must be written as +XX")
        i += 1
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise DsnParamError(f"xtext {_quote(value)} does not decode to UTF-8 text") from None


# --- the four parameters ----------------------------------------------------


def parse_notify(value: str) -> Notify:
    """RFC 3461 4.1: "NEVER", or a comma-separated list of SUCCESS, FAILURE and DELAY
    (any case, each at most once)."""
    words = [w.upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return NOTIFY_NEVER
    if "NEVER" in words:
        raise DsnParamError("NOTIFY=NEVER cannot be combined with other values")
    unknown = [w for w in words if w not in ("SUCCESS", "FAILURE", "DELAY")]
    if unknown:
        raise DsnParamError(f"NOTIFY value {_quote(unknown[0])}: expected NEVER, SUCCESS, FAILURE or DELAY")
    if len(set(words)) != len(words):
        raise DsnParamError(f"NOTIFY={_quote(value)} names a value twice")
    return Notify(success="SUCCESS" in words, failure="FAILURE" in words, delay="DELAY" in words)


def parse_ret(value: str) -> Ret:
    """RFC 3461 4.3: FULL or HDRS, any case."""
    try:
        return Ret(value.upper())
    except ValueError:
        raise DsnParamError(f"RET={_quote(value)}: expected FULL or HDRS") from None


def parse_envid(value: str) -> str:
    """RFC 3461 4.4: the xtext-decoded envelope id; at most 100 characters, and it must
    decode to printable US-ASCII."""
    if not value:
        raise DsnParamError("ENVID must not be empty")
    if len(value) > MAX_ENVID:
        raise DsnParamError(f"ENVID is {len(value)} characters; the limit is {MAX_ENVID}")
    envid = xtext_decode(value)
    if not all(" " <= c <= "~" for c in envid):
        raise DsnParamError(f"ENVID={_quote(value)} must decode to printable US-ASCII")
    return envid


def parse_orcpt(value: str) -> OriginalRecipient:
    """RFC 3461 4.2: "addr-type;xtext", at most 500 characters. The address type is
    an atom (lowercased); the address must not be empty or decode to control
    characters. For the "utf-8" type raw UTF-8 is accepted too (RFC 6533 3)."""
    if len(value) > MAX_ORCPT:
        raise DsnParamError(f"ORCPT is {len(value)} characters; the limit is {MAX_ORCPT}")
    addr_type, semicolon, encoded = value.partition(";")
    if not semicolon or not addr_type or not set(addr_type) <= _ATEXT:
        raise DsnParamError(f"ORCPT={_quote(value)}: expected addr-type;address, e.g. rfc822;user@example.com")
    addr_type = addr_type.lower()
    address = xtext_decode(encoded, allow_utf8=addr_type == "utf-8")
    if not address:
        raise DsnParamError("ORCPT has an empty address")
    # A decoded CR or LF would end the Original-Recipient field of the DSN early.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        raise DsnParamError(f"ORCPT={_quote(value)} decodes to control characters")
    return OriginalRecipient(addr_type=addr_type, address=address)


def _parsed(params: Iterable[str], parsers: dict[str, Callable[[str], object]]) -> dict[str, object]:
    """{field name: parsed value} for the keywords `parsers` knows, the field name being
    the keyword in lower case; other keywords belong to other extensions."""
    found: dict[str, object] = {}
    for param in params:
        keyword, equals, value = param.partition("=")
        keyword = keyword.upper()  # RFC 5321 2.4: keywords are case-insensitive
        if keyword not in parsers:
            continue
        if not equals or not value:
            raise DsnParamError(f"{keyword} needs a value ({keyword}=...)")
        if keyword.lower() in found:
            raise DsnParamError(f"{keyword} given twice")  # ambiguous: refuse rather than guess
        found[keyword.lower()] = parsers[keyword](value)
    return found


def parse_mail_params(params: Iterable[str]) -> MailDsnParams:
    """RET and ENVID from the parameters of MAIL FROM ("KEY=VALUE" strings);
    DsnParamError if either is invalid or repeated."""
    return MailDsnParams(**_parsed(params, {"RET": parse_ret, "ENVID": parse_envid}))


def parse_rcpt_params(params: Iterable[str]) -> RcptDsnParams:
    """NOTIFY and ORCPT from the parameters of one RCPT TO ("KEY=VALUE" strings);
    DsnParamError if either is invalid or repeated."""
    return RcptDsnParams(**_parsed(params, {"NOTIFY": parse_notify, "ORCPT": parse_orcpt}))


# --- whether a DSN is due ---------------------------------------------------


def should_notify(notify: Notify | None, action: Action) -> bool:
    """Whether this recipient's NOTIFY asks for a DSN about `action`.

    Without NOTIFY, only failures are reported: RFC 3461 4.1 leaves the default
    to the MTA, RFC 5321 6.1 requires a failure to be reported, and a delay warning
    nobody asked for is noise to a bulk sender. Success covers delivered, relayed
    and expanded (RFC 3461 4.1, 6.2)."""
    if notify is None:
        return action is Action.FAILED
    if action is Action.FAILED:
        return notify.failure
    if action is Action.DELAYED:
        return notify.delay
    return notify.success


def is_null_sender(mail_from: str) -> bool:
    """Whether `mail_from` is the null reverse-path ("" or "<>", spaces ignored)."""
    return mail_from.strip() in ("", "<>")


def dsn_due(mail_from: str, notify: Notify | None, action: Action) -> bool:
    """Whether a DSN about `action` for one recipient is to be sent to `mail_from`.

    Never to the null reverse-path: notifications are sent from it, and nothing is
    ever sent back to it, which is what stops bounce loops (RFC 5321 4.5.5 and 6.1,
    RFC 3461 6.2). Otherwise as `should_notify` says."""
    return not is_null_sender(mail_from) and should_notify(notify, action)
