"""The Received trace header the Bridge writes at the top of every message (RFC
5321 4.4), and its pieces: printable text, the date, and address literals."""

from __future__ import annotations

import time


def printable(text: str | None, limit: int = 255) -> str:
    """`text` reduced to printable ASCII (for trace headers: no CR, LF or controls)."""
    if not text:
        return "unknown"
    return "".join(c if "!" <= c <= "~" else "?" for c in text[:limit])


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_date(epoch: float) -> str:
    """RFC 5322 section 3.3 date-time in UTC, independent of the locale."""
    tm = time.gmtime(epoch)
    return (
        f"{_DAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} +0000"
    )


def address_literal(address: str) -> str:
    """An IP as an address literal of a trace header (RFC 5321 4.1.3)."""
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"


def line_ending(raw: bytes) -> str:
    """The message's own line ending, by its first line: what the fields added on top
    of it (Received, DKIM-Signature) end with."""
    lf = raw.find(b"\n")
    return "\n" if lf == 0 or (lf > 0 and raw[lf - 1] != 13) else "\r\n"


class ReceivedHeader:
    """Writes Received headers; the date text is made once per second (one worker's
    messages share it), not per message."""

    def __init__(self) -> None:
        self._second = -1
        self._date = ""

    def render(self, helo: str, address: str, hostname: str, protocol: str, message_id: str,
               recipients: list[str], now: float, eol: str) -> bytes:
        """The header, its lines ending with `eol`; `for <rcpt>` only with one recipient
        (with several it would show each recipient the others, Bcc ones included)."""
        if int(now) != self._second:
            self._second = int(now)
            self._date = rfc5322_date(now)
        recipient = f"{eol}\tfor <{printable(recipients[0], 320)}>" if len(recipients) == 1 else ""
        text = (
            f"Received: from {printable(helo)} (unknown {address_literal(address)})"
            f"{eol}\tby {printable(hostname)} (poolmta) with {protocol} id {message_id}"
            f"{recipient}; {self._date}{eol}"
        )
        return text.encode("ascii")
