"""A scripted SMTP client for the abuse suite: raw bytes over a blocking socket
(from a chosen 127.x.y.z source address), every reply read whole and checked for
its form as it arrives, STARTTLS done for real, and a transcript of what the
session was allowed to do (AUTH succeeded, trusted network) and was told (message
ids of the 250 replies). The fuzz tests decide what to send; this module only says
whether what came back was a well-formed answer.

A session goes step by step: a step is bytes the client sends and the number of
replies they call for (one per command line, one per message, one per AUTH
response line). A server that closes the connection before answering them all
must have said why just before (`CLOSING_CODES`).
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, field

# RFC 5321 section 4.2: Reply-code [ SP / "-" textstring ] CRLF, the code's first
# digit 2-5 (1yz is not used by SMTP servers for commands), textstring printable
# ASCII and HT. 8-bit text is allowed in replies only under SMTPUTF8 (RFC 6531
# section 3.7.4.2), so UTF-8 is tolerated; control characters never are.
REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)", re.DOTALL)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# The replies after which a server may close the connection: 221 (QUIT), 421 (RFC 5321
# section 3.8: closing the channel), and aiosmtpd's 502 after five unknown commands
# (see test_smtp_findings: it should be a 421).
CLOSING_CODES = frozenset({221, 421})
TOO_MANY_UNKNOWN = b"5.5.1 Too many unrecognized commands"

READ_TIMEOUT = 10.0  # a liveness bound, not a timing assertion: no reply at all is a hang


class ProtocolViolation(AssertionError):
    """The server's bytes were not a well-formed SMTP answer to what was sent."""


@dataclass
class Reply:
    code: int
    lines: list[bytes]

    @property
    def text(self) -> bytes:
        return b"\n".join(self.lines)


@dataclass
class Transcript:
    """What one session sent, got and was allowed."""

    source: str
    trusted: bool
    sent: list[bytes] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    authenticated: bool = False  # a 235 was seen
    queued: list[str] = field(default_factory=list)  # message ids of "250 ... queued as ID"
    queued_after_auth: set[str] = field(default_factory=set)  # those sent while authenticated
    closed_by_server: bool = False


QUEUED = re.compile(rb"queued as ([0-9a-f]{26})")


def closes(reply: Reply) -> bool:
    """True for a reply after which the server closes the connection."""
    return reply.code in CLOSING_CODES or (reply.code == 502 and reply.text.startswith(TOO_MANY_UNKNOWN))


def check_reply_line(line: bytes) -> tuple[int, bool, bytes]:
    """(code, last line of the reply, text) of one reply line without its CRLF;
    ProtocolViolation when it is not RFC 5321's form."""
    match = REPLY_LINE.fullmatch(line)
    if match is None:
        raise ProtocolViolation(f"not an SMTP reply line: {line[:200]!r}")
    code, separator, text = int(match[1]), match[2], match[3]
    if separator == b"" and text:
        raise ProtocolViolation(f"reply code not followed by SP or '-': {line[:200]!r}")
    if _CONTROL.search(text):
        raise ProtocolViolation(f"control character in reply text: {line[:200]!r}")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(f"reply text is neither ASCII nor UTF-8: {line[:200]!r}") from None
    return code, separator != b"-", text


class SmtpSession:
    """One connection to `host:port` from `source`, driven step by step."""

    def __init__(self, host: str, port: int, source: str, *, trusted: bool = False) -> None:
        self.transcript = Transcript(source=source, trusted=trusted)
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=READ_TIMEOUT, source_address=(source, 0))
        self._buffer = b""
        self.open = True
        self.awaiting_tls = False  # a 220 answered STARTTLS: the handshake comes next
        banner = self._read_reply()
        if banner is None:
            raise ProtocolViolation("connection closed before the banner")
        if banner.code != 220:
            self._closing(banner)

    # -- reading ----------------------------------------------------------

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return b""
        except TimeoutError:
            raise ProtocolViolation(f"no reply within {READ_TIMEOUT:g}s; sent so far: "
                                    f"{[s[:80] for s in self.transcript.sent[-5:]]}") from None

    def _read_line(self) -> bytes | None:
        while b"\r\n" not in self._buffer:
            chunk = self._recv()
            if not chunk:
                if self._buffer:
                    raise ProtocolViolation(f"connection closed inside a reply line: {self._buffer[:200]!r}")
                return None
            self._buffer += chunk
            if len(self._buffer) > 1 << 20:
                raise ProtocolViolation("a reply line over 1 MiB")
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _read_reply(self) -> Reply | None:
        """The next whole reply (its lines checked), or None at a clean close."""
        lines: list[bytes] = []
        code = None
        while True:
            line = self._read_line()
            if line is None:
                if lines:
                    raise ProtocolViolation(f"connection closed inside a multi-line reply: {lines}")
                return None
            this_code, last, text = check_reply_line(line)
            if code is not None and this_code != code:
                raise ProtocolViolation(f"multi-line reply changes its code: {lines + [line]}")
            code = this_code
            lines.append(text)
            if last:
                break
        reply = Reply(code, lines)
        self.transcript.replies.append(reply)
        if code == 235:
            self.transcript.authenticated = True
        queued = QUEUED.search(reply.text)
        if code == 250 and queued:
            self.transcript.queued.append(queued[1].decode())
            if self.transcript.authenticated:
                self.transcript.queued_after_auth.add(queued[1].decode())
        return reply

    def _closing(self, last: Reply | None) -> None:
        self.open = False
        self.transcript.closed_by_server = True
        if last is None or not closes(last):
            raise ProtocolViolation(
                f"the server closed the connection after {last.code if last else 'no reply'} "
                f"(only after {sorted(CLOSING_CODES)} or a 502 for too many unknown commands); last replies: "
                f"{[(r.code, r.text[:80]) for r in self.transcript.replies[-3:]]}")

    # -- steps ------------------------------------------------------------

    def step(self, data: bytes, replies: int = 1) -> list[Reply]:
        """Send `data`, read the `replies` it calls for. Fewer when the server closed
        the connection, which it may do only right after a closing reply."""
        assert self.open, "the session is over"
        self.transcript.sent.append(data)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # it closed while we sent: what it said before is still to be read
        got: list[Reply] = []
        for _ in range(replies):
            reply = self._read_reply()
            if reply is None:
                self._closing(self.transcript.replies[-1] if self.transcript.replies else None)
                break
            got.append(reply)
            if closes(reply):
                # The connection ends here: nothing may follow.
                if self._read_reply() is not None:
                    raise ProtocolViolation(f"a reply after the closing {reply.code}")
                self._closing(reply)
                break
        last_line = data.rstrip(b"\r\n").rpartition(b"\n")[2]
        self.awaiting_tls = bool(got) and got[-1].code == 220 and last_line.upper().startswith(b"STARTTLS")
        return got

    def start_tls(self) -> None:
        """The TLS handshake after a 220 to STARTTLS (RFC 3207); the certificate is not checked."""
        assert self.awaiting_tls and not self._buffer, f"not right after a 220 to STARTTLS: {self._buffer!r}"
        self.awaiting_tls = False
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname="bridge.test")
        # RFC 3207 section 4.2: the session starts afresh, AUTH included.
        self.transcript.authenticated = False

    def abandon(self, data: bytes = b"") -> None:
        """Send `data` (if any) and close without QUIT, as a careless or hostile client does."""
        if data and self.open:
            try:
                self.sock.sendall(data)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        self.open = False
        try:
            self.sock.close()
        except OSError:
            pass
