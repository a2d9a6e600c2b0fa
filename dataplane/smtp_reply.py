"""SMTP replies as the delivery engine judges them: what a reply means for a
recipient (delivered, bounced, deferred), and the replies it makes up itself
when there is no remote one (a connection that failed, a DNS answer, an expiry).

Classification follows RFC 5321 section 4.2.1: the first digit of the reply
code decides, 2yz positive, 4yz transient (retry), 5yz permanent (bounce). An
enhanced status code (RFC 3463, "X.Y.Z" at the start of the text) is kept with
the reply; it decides only when the reply code itself is not 2yz/4yz/5yz, and
one whose class contradicts the reply code is ignored (RFC 3463 section 2:
the class must match; Postfix does the same). Anything that is not a clear
"yes" or "no" is transient: a retry can be repaired, a bounce cannot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The outcome names belong to the delivery event (both planes read them); they are
# re-exported here because classification is where the data plane meets them.
from control.contract.delivery_event import BOUNCED, DEFERRED, DELIVERED, OUTCOMES  # noqa: F401

# Stages of a transaction, for the rules that depend on which command a reply answers.
STAGE_CONNECT = "connect"
STAGE_MAIL = "mail"
STAGE_RCPT = "rcpt"
STAGE_DATA = "data"

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: its code and its text (a multi-line reply's lines joined by spaces)."""

    code: int
    text: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.text else str(self.code)

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 status code at the start of the text, when its class matches the reply code."""
        match = _ENHANCED.match(self.text)
        if match is None:
            return None
        if self.code // 100 in (2, 4, 5) and int(match.group(1)) != self.code // 100:
            return None
        return match.group(0)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300


def classify(reply: Reply, stage: str = STAGE_DATA) -> str:
    """DELIVERED, BOUNCED or DEFERRED for a recipient given this reply at `stage`.

    A positive reply before the end of DATA is not a delivery yet; callers ask
    only about the reply that decides (a refusal, or the reply to the message).
    """
    first = reply.code // 100
    if first == 2:
        return DELIVERED
    if first == 5:
        # RFC 5321 4.5.3.1.10: a 552 to RCPT ("too many recipients") is to be
        # treated as temporary.
        if stage == STAGE_RCPT and reply.code == 552:
            return DEFERRED
        return BOUNCED
    if first == 4:
        return DEFERRED
    enhanced = _ENHANCED.match(reply.text)
    if enhanced is not None and enhanced.group(1) == "5":
        return BOUNCED
    return DEFERRED


def local(code: int, enhanced: str, text: str) -> Reply:
    """A reply the engine makes up (no remote server said it), in the same shape."""
    return Reply(code, f"{enhanced} {text}")


# --- replies made up by the engine (RFC 3463 codes) ----------------------------------
# Each is a format string; `local_reply(...)` fills it in.

BIND_FAILED = (451, "4.4.0", "source IP {ip} cannot be bound: {error}")
CONNECT_FAILED = (451, "4.4.1", "no connection to {host}: {error}")
CONNECTION_LOST = (451, "4.4.2", "connection to {host} lost {when}: {error}")
TIMED_OUT = (451, "4.4.2", "timeout {when} with {host}")
PROTOCOL_ERROR = (451, "4.5.0", "protocol error {when} with {host}: {error}")
SESSION_REFUSED = (451, "4.4.1", "{host} refused the session: {reply}")
DNS_FAILED = (451, "4.4.3", "DNS lookup for {domain} failed: {error}")
NO_ADDRESS = (451, "4.4.3", "no IPv{family} address for any mail server of {domain} ({hosts})")
BAD_DOMAIN = (553, "5.1.2", "cannot deliver to domain {domain!r}: {error}")
NO_SUCH_DOMAIN = (550, "5.1.2", "domain {domain} does not exist (DNS NXDOMAIN)")
NULL_MX = (556, "5.1.10", "domain {domain} does not accept mail (null MX, RFC 7505)")
NO_SOURCE_IP = (451, "4.4.0", "pool {pool} has no usable source IP right now (paused, weight 0 or released)")
TOO_BIG = (552, "5.3.4", "message of {size} bytes exceeds the {limit}-byte limit of {host}")
NEEDS_SMTPUTF8 = (553, "5.6.7", "{host} does not support SMTPUTF8, which this message's addresses need")
BAD_ADDRESS = (553, "5.1.3", "address {address!r} cannot be sent in an SMTP command")
LOCAL_ERROR = (451, "4.3.0", "local error in delivery; will retry")
EXPIRED = (550, "5.4.7", "delivery time expired after {lifetime} ({attempts} attempt(s)); last reply: {last}")
# An operator bounced the message through queue control (poolmta queue bounce).
OPERATOR_BOUNCE = (550, "5.0.0", "bounced by the operator of the sending service")


def local_reply(spec: tuple[int, str, str], **values) -> Reply:
    code, enhanced, text = spec
    return local(code, enhanced, text.format(**values))
