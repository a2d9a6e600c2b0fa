"""The `poolmta sink` rule grammar: how the sink answers each recipient.

A rule is ``PATTERN=ACTION``; the sink checks rules in order and the first whose
pattern matches a recipient decides (no match: accept).

PATTERN
    A case-insensitive shell-style glob (``*``, ``?``, ``[...]``). Without ``@`` it
    is matched against the recipient's local part (``bounce*`` matches
    ``Bounce-7@example.com``); with ``@`` against the whole address
    (``*@blocked.example``). It cannot contain ``=`` (the first ``=`` ends it),
    whitespace or control characters.

ACTION
    ``250``                 accept (e.g. to exempt addresses from a later rule)
    ``CODE[xN][:TEXT]``     CODE is 4xx or 5xx, given as the RCPT reply; with ``xN``
                            only for the first N attempts for that recipient, then
                            accept. TEXT replaces the default reply text.
                            ``550``, ``550:5.7.1 go away``, ``451x2``, ``421x1``
    ``delay:SECONDS``       accept, but hold the reply to DATA for SECONDS (0-600)
    ``hang``                accept, read the message, then never answer DATA

Keywords and the ``x`` are case-insensitive. Everything here is pure: parsing and
matching only; the sink keeps the per-recipient attempt counts.
"""

from __future__ import annotations

import enum
import fnmatch
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_RULE_SPECS = ("bounce*=550", "defer*=451x2", "slow*=delay:2.0")

# RFC 5321 section 4.5.3.2.6: a client waits 10 minutes for the reply to the end
# of DATA; a longer delay is a hang, and most likely a typo for milliseconds.
MAX_DELAY_SECONDS = 600.0
# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
MAX_REPLY_TEXT = 500

ACTION_SYNTAX = "250, 4xx/5xx[xN][:text], delay:SECONDS or hang"

# Enhanced status codes (RFC 3463) for the default reply texts; other codes get
# the class's generic X.0.0.
_ENHANCED = {
    550: "5.1.1",
    551: "5.1.6",
    552: "5.2.2",
    553: "5.1.3",
    554: "5.7.1",
    421: "4.3.2",
    450: "4.2.1",
    451: "4.3.0",
    452: "4.2.2",
}

_REPLY_ACTION = re.compile(r"(?P<code>\d{3})(?:[xX](?P<times>[^:]*))?(?::(?P<text>.*))?", re.DOTALL)
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


class ActionKind(enum.Enum):
    ACCEPT = "accept"
    REPLY = "reply"
    DELAY = "delay"
    HANG = "hang"


@dataclass(frozen=True)
class Action:
    """What a matching rule does. `code`, `times` and `text` are for REPLY
    (`times` None = every attempt); `seconds` is for DELAY."""

    kind: ActionKind
    code: int = 250
    times: int | None = None
    text: str | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        """The canonical spelling; parse_action() reads it back to an equal Action."""
        if self.kind is ActionKind.ACCEPT:
            return "250"
        if self.kind is ActionKind.DELAY:
            return f"delay:{self.seconds!r}"
        if self.kind is ActionKind.HANG:
            return "hang"
        spec = str(self.code)
        if self.times is not None:
            spec += f"x{self.times}"
        if self.text is not None:
            spec += f":{self.text}"
        return spec


@dataclass(frozen=True)
class Rule:
    """One ``PATTERN=ACTION``; `pattern` is kept as given (matching ignores case)."""

    pattern: str
    action: Action
    whole_address: bool = field(init=False, repr=False, compare=False)
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "whole_address", "@" in self.pattern)
        object.__setattr__(self, "_regex", re.compile(fnmatch.translate(self.pattern), re.IGNORECASE))

    def __str__(self) -> str:
        return f"{self.pattern}={self.action}"

    def matches(self, address: str) -> bool:
        """True when the pattern matches `address` (its local part, for a pattern without @)."""
        return self._matches(address, local_part(address))

    def _matches(self, address: str, local: str) -> bool:
        return self._regex.match(address if self.whole_address else local) is not None

    def rcpt_reply(self, attempt: int) -> str | None:
        """The reply to this RCPT, `attempt` being the 1-based count of RCPTs of this
        recipient that matched the rule (this one included); None = accept it."""
        action = self.action
        if action.kind is not ActionKind.REPLY:
            return None
        if action.times is not None and attempt > action.times:
            return None
        if action.text is not None:
            return f"{action.code} {action.text}"
        enhanced = _ENHANCED.get(action.code, f"{action.code // 100}.0.0")
        verdict = "rejected" if action.code >= 500 else "try again later"
        return f"{action.code} {enhanced} {verdict} (sink rule {self.pattern})"


class RuleSet:
    """Rules in order; the first match decides."""

    __slots__ = ("rules",)

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)

    def match(self, address: str) -> Rule | None:
        """The first rule matching the recipient `address`, or None."""
        local = local_part(address)
        for rule in self.rules:
            if rule._matches(address, local):
                return rule
        return None

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


def local_part(address: str) -> str:
    """The part before the last @ (a quoted local part may itself contain @)."""
    at = address.rfind("@")
    return address if at < 0 else address[:at]


def parse_action(text: str) -> Action:
    """Parse an ACTION (see the module docstring); ValueError naming the problem."""
    keyword = text.lower()
    if keyword == "hang":
        return Action(ActionKind.HANG)
    if keyword.startswith("delay:"):
        return Action(ActionKind.DELAY, seconds=_parse_seconds(text[len("delay:") :], text))
    match = _REPLY_ACTION.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown action {text!r}: expected {ACTION_SYNTAX}")
    code = int(match["code"])
    if code == 250:
        if match["times"] is not None or match["text"] is not None:
            raise ValueError(f"action {text!r}: 250 (accept) takes no count and no text")
        return Action(ActionKind.ACCEPT)
    if code // 100 not in (4, 5) or code % 100 // 10 > 5:
        raise ValueError(
            f"action {text!r}: reply code must be 250 or a 4xx/5xx code "
            f"(RFC 5321 section 4.2: second digit 0-5), got {code}"
        )
    times = None
    if match["times"] is not None:
        digits = match["times"]
        if not digits.isdigit() or not digits.isascii() or int(digits) < 1:
            raise ValueError(f"action {text!r}: the count after x must be a whole number >= 1, got {digits!r}")
        times = int(digits)
    reply_text = match["text"]
    if reply_text is not None:
        if not _PRINTABLE_ASCII.fullmatch(reply_text):
            raise ValueError(f"action {text!r}: reply text must be non-empty printable ASCII (no CR, LF or tabs)")
        if len(reply_text) > MAX_REPLY_TEXT:
            raise ValueError(f"action {text!r}: reply text is longer than {MAX_REPLY_TEXT} characters")
    return Action(ActionKind.REPLY, code=code, times=times, text=reply_text)


def _parse_seconds(value: str, action: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_DELAY_SECONDS:  # also rejects nan
        raise ValueError(
            f"action {action!r}: delay must be a number of seconds from 0 to {MAX_DELAY_SECONDS:g} "
            f"(use hang for a destination that never answers), got {value!r}"
        )
    return seconds


def parse_rule(spec: str) -> Rule:
    """Parse ``PATTERN=ACTION``; ValueError naming the problem."""
    pattern, sep, action = spec.partition("=")
    if not sep:
        raise ValueError(f"rule must be PATTERN=ACTION (e.g. bounce*=550), got {spec!r}")
    if not pattern:
        raise ValueError(f"rule {spec!r} has an empty pattern (use * to match every recipient)")
    if not pattern.isprintable() or any(ch.isspace() for ch in pattern):
        raise ValueError(f"rule {spec!r}: the pattern must not contain whitespace or control characters")
    if not action:
        raise ValueError(f"rule {spec!r} has an empty action: expected {ACTION_SYNTAX}")
    try:
        parsed = parse_action(action)
    except ValueError as exc:
        raise ValueError(f"rule {spec!r}: {exc}") from None
    return Rule(pattern, parsed)


DEFAULT_RULES = tuple(parse_rule(spec) for spec in DEFAULT_RULE_SPECS)
