"""The outbound SMTP client of the delivery engine: one connection, bound to a
Pool's source IP, carrying one transaction after another.

aiosmtplib (the project's SMTP client elsewhere) reads one reply per command it
writes, so it cannot pipeline (RFC 2920); this client is small and does only
what delivery needs, over asyncio streams:

* the TCP socket is bound to the chosen source IP before it connects, and a
  bind failure is its own error (`BindError`): there is no fallback to another
  source address, ever;
* EHLO with the IP's hostname (HELO if EHLO is refused), then STARTTLS when
  offered (opportunistic: certificates are not verified, as MTAs do for
  unauthenticated TLS, RFC 7435), then EHLO again (RFC 3207 4.2);
* MAIL, RCPT..., DATA written together when PIPELINING is offered (RFC 2920
  3.1), one at a time otherwise; the message with CRLF line ends and dot-stuffing;
* every reply waited for at most the RFC 5321 4.5.3.2 time of its command.

Errors: `BindError` and `ConnectError` before a session exists;
`SessionError` (connection lost, a timeout, a malformed reply, a refused
greeting or TLS handshake) once it does. After a SessionError the connection is
closed and must not be used again.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import sys
from dataclasses import dataclass, field

from .config import SmtpTimeouts
from .smtp_reply import Reply

# A reply line is at most 512 octets (RFC 5321 4.5.3.1.5); servers exceed it,
# so allow more, but bound a reply so a broken server cannot exhaust memory.
READ_LIMIT = 64 * 1024
MAX_REPLY_LINES = 100
# Linux: choose the source port at connect time rather than bind time, so a
# bound source IP is not limited to one connection per ephemeral port overall.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

_EOL = re.compile(rb"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SmtpClientError(Exception):
    """Base of the client's errors."""


class BindError(SmtpClientError):
    """The socket could not be bound to the source IP (not on this host, or not allowed)."""

    def __init__(self, source_ip: str, error: OSError) -> None:
        super().__init__(f"{error.strerror or error}")
        self.source_ip = source_ip


class ConnectError(SmtpClientError):
    """The TCP connection to the destination could not be made (refused, unreachable, timed out)."""


class SessionError(SmtpClientError):
    """The session broke: `when` says at which step, e.g. "after MAIL"."""

    def __init__(self, message: str, when: str, *, timeout: bool = False, reply: Reply | None = None,
                 tls_failed: bool = False) -> None:
        super().__init__(message)
        self.when = when
        self.timeout = timeout
        self.reply = reply
        self.tls_failed = tls_failed


def data_payload(message: bytes) -> bytes:
    """The bytes to send after the 354: line ends made CRLF (a bare LF or CR becomes
    CRLF, RFC 5322 2.3 allows no other), a final CRLF added if missing, every
    line starting with "." given another (RFC 5321 4.5.2), then the ".\\r\\n" that
    ends the data."""
    if b"\n" in message or b"\r" in message:
        crlf = message.count(b"\r\n")
        if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
            message = _EOL.sub(b"\r\n", message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    if b"\r\n." in message:
        message = message.replace(b"\r\n.", b"\r\n..")
    return message + b".\r\n"


def client_tls_context() -> ssl.SSLContext:
    """TLS for opportunistic STARTTLS: encrypt, do not authenticate (RFC 7435 1.3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _sni(host: str) -> str | None:
    """The name to send in SNI: a host name, never an IP address literal."""
    if not host or ":" in host or host.replace(".", "").isdigit():
        return None
    return host


@dataclass
class TransactionResult:
    """What the server said in one transaction.

    `mail`: the reply to MAIL. `rcpts`: the reply to each RCPT, in order (None
    for recipients never sent because MAIL failed). `data`: the reply to DATA
    (354 or a refusal), None if not reached. `final`: the reply to the message,
    None if not reached.
    """

    mail: Reply
    rcpts: list[Reply | None]
    data: Reply | None = None
    final: Reply | None = None


@dataclass
class SmtpConnection:
    """An open SMTP session (after the greeting, EHLO and STARTTLS)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    host: str  # what the destination is called in replies and logs ("mx.example[192.0.2.9]:25")
    source_ip: str
    timeouts: SmtpTimeouts
    extensions: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    transactions: int = 0
    closed: bool = False
    _last_lines: list[str] = field(default_factory=list, repr=False)

    # -- opening ------------------------------------------------------------

    @classmethod
    async def open(cls, address: str, port: int, *, source_ip: str, helo_name: str, timeouts: SmtpTimeouts,
                   server_name: str = "", tls_context: ssl.SSLContext | None = None) -> SmtpConnection:
        """Connect from `source_ip` to address:port and get to a ready session.

        `server_name` is the destination's host name (for SNI and messages);
        `tls_context` None = never STARTTLS.
        """
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in source_ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        shown = f"{server_name}[{address}]:{port}" if server_name and server_name != address else f"{address}:{port}"
        try:
            sock.setblocking(False)
            if sys.platform.startswith("linux"):
                try:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass
            try:
                sock.bind((source_ip, 0))
            except OSError as exc:
                raise BindError(source_ip, exc) from None
            try:
                async with asyncio.timeout(timeouts.connect):
                    await loop.sock_connect(sock, (address, port))
            except TimeoutError:
                raise ConnectError(f"connect timed out after {timeouts.connect:g}s") from None
            except OSError as exc:
                raise ConnectError(exc.strerror or str(exc)) from None
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
        except BaseException:
            sock.close()
            raise
        connection = cls(reader, writer, shown, source_ip, timeouts)
        try:
            greeting = await connection.read_reply(timeouts.greeting, "waiting for the greeting")
            if greeting.code != 220:
                raise SessionError(f"greeting {greeting}", "at the greeting", reply=greeting)
            await connection._hello(helo_name)
            if tls_context is not None and "STARTTLS" in connection.extensions:
                await connection._starttls(tls_context, _sni(server_name), helo_name)
        except BaseException:
            connection.abort()
            raise
        return connection

    async def _hello(self, helo_name: str) -> None:
        reply = await self.command(f"EHLO {helo_name}", self.timeouts.command, "after EHLO")
        if reply.code == 250:
            self.extensions = self._parse_extensions(self._last_lines)
            return
        if reply.code == 421:
            raise SessionError(f"EHLO answered {reply}", "after EHLO", reply=reply)
        reply = await self.command(f"HELO {helo_name}", self.timeouts.command, "after HELO")
        if reply.code != 250:
            raise SessionError(f"HELO answered {reply}", "after HELO", reply=reply)
        self.extensions = {}

    @staticmethod
    def _parse_extensions(lines: list[str]) -> dict[str, str]:
        extensions = {}
        for line in lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            if keyword:
                extensions[keyword.upper()] = params.strip()
        return extensions

    async def _starttls(self, context: ssl.SSLContext, server_name: str | None, helo_name: str) -> None:
        reply = await self.command("STARTTLS", self.timeouts.command, "after STARTTLS")
        if reply.code != 220:
            return  # opportunistic: go on in plaintext
        try:
            async with asyncio.timeout(self.timeouts.command):
                await self.writer.start_tls(context, server_hostname=server_name)
        except TimeoutError:
            raise SessionError("TLS handshake timed out", "in the TLS handshake", timeout=True,
                               tls_failed=True) from None
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            raise SessionError(f"TLS handshake failed: {exc}", "in the TLS handshake", tls_failed=True) from None
        self.tls = True
        await self._hello(helo_name)  # RFC 3207 4.2: forget what was said before TLS

    # -- replies and commands -------------------------------------------------

    async def read_reply(self, timeout: float, when: str) -> Reply:
        """The next reply (all lines of a multi-line one); SessionError if none comes."""
        lines: list[str] = []
        code = b""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.reader.readline()
                    if not line.endswith(b"\n"):
                        raise SessionError("connection closed by the server", when)
                    code = line[:3]
                    if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                        raise SessionError(f"malformed reply line {line[:80]!r}", when)
                    lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
                    if line[3:4] != b"-":
                        break
                    if len(lines) >= MAX_REPLY_LINES:
                        raise SessionError(f"reply longer than {MAX_REPLY_LINES} lines", when)
        except TimeoutError:
            self.abort()
            raise SessionError(f"no reply within {timeout:g}s", when, timeout=True) from None
        except SessionError:
            self.abort()
            raise
        except (ValueError, asyncio.LimitOverrunError):  # a line over READ_LIMIT
            self.abort()
            raise SessionError("reply line too long", when) from None
        except (OSError, ConnectionError) as exc:
            self.abort()
            raise SessionError(str(exc) or type(exc).__name__, when) from None
        self._last_lines = lines
        return Reply(int(code), " ".join(line.strip() for line in lines if line.strip()))

    async def _write(self, data: bytes, timeout: float, when: str) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError:
            self.abort()
            raise SessionError(f"could not send within {timeout:g}s", when, timeout=True) from None
        except (OSError, ConnectionError, RuntimeError) as exc:
            self.abort()
            raise SessionError(str(exc) or type(exc).__name__, when) from None

    async def command(self, line: str, timeout: float, when: str, *, utf8: bool = False) -> Reply:
        await self._write(self._encode(line, utf8), timeout, when)
        return await self.read_reply(timeout, when)

    @staticmethod
    def _encode(line: str, utf8: bool) -> bytes:
        if _CONTROL.search(line):
            raise ValueError(f"control character in SMTP command {line!r}")
        return (line.encode("utf-8", "surrogateescape") if utf8 else line.encode("ascii")) + b"\r\n"

    # -- a transaction ----------------------------------------------------------

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    def size_limit(self) -> int | None:
        """The server's SIZE limit (RFC 1870), None when it has none."""
        value = self.extensions.get("SIZE")
        if value is None:
            return None
        return int(value) if value.isdigit() and int(value) > 0 else None

    async def transaction(self, mail_from: str, rcpts: list[str], payload: bytes, *,
                          mail_params: list[str] = (), rcpt_params: list[list[str]] | None = None,
                          utf8: bool = False) -> TransactionResult:
        """One mail transaction; `payload` as made by `data_payload`; `rcpt_params`, when
        given, the ESMTP parameters of each RCPT (in the order of `rcpts`).

        Replies decide nothing here: the caller judges them. A SessionError
        means the connection is gone; what was replied before it is lost with
        it, and the caller treats the recipients without a decision as deferred.
        """
        self.transactions += 1
        timeouts = self.timeouts
        params = "".join(f" {p}" for p in mail_params)
        mail_line = f"MAIL FROM:<{mail_from}>{params}"
        rcpt_lines = [f"RCPT TO:<{rcpt}>" for rcpt in rcpts]
        if rcpt_params is not None:
            rcpt_lines = [line + "".join(f" {p}" for p in params)
                          for line, params in zip(rcpt_lines, rcpt_params, strict=True)]
        if self.pipelining:
            batch = b"".join(self._encode(line, utf8) for line in (mail_line, *rcpt_lines, "DATA"))
            await self._write(batch, timeouts.command, "after MAIL")
            mail = await self.read_reply(timeouts.command, "after MAIL")
            replies: list[Reply | None] = []
            for _ in rcpts:
                replies.append(await self.read_reply(timeouts.command, "after RCPT"))
            data = await self.read_reply(timeouts.data_start, "after DATA")
            result = TransactionResult(mail, replies, data)
            accepted = mail.positive and any(r is not None and r.positive for r in replies)
            if data.code == 354 and not accepted:
                # RFC 2920 3.1: a 354 with no valid recipient still needs the end of data.
                await self._write(b".\r\n", timeouts.data_block, "after DATA")
                await self.read_reply(timeouts.data_end, "after the end of data")
                await self._reset()
                return result
            if data.code != 354:
                await self._reset()
                return result
        else:
            mail = await self.command(mail_line, timeouts.command, "after MAIL", utf8=utf8)
            result = TransactionResult(mail, [None] * len(rcpts))
            if not mail.positive:
                await self._reset()
                return result
            for i, line in enumerate(rcpt_lines):
                result.rcpts[i] = await self.command(line, timeouts.command, "after RCPT", utf8=utf8)
            if not any(r is not None and r.positive for r in result.rcpts):
                await self._reset()
                return result
            result.data = await self.command("DATA", timeouts.data_start, "after DATA")
            if result.data.code != 354:
                await self._reset()
                return result
        await self._write(payload, max(timeouts.data_block, len(payload) / 65536), "while sending the message")
        result.final = await self.read_reply(timeouts.data_end, "after the end of data")
        return result

    async def _reset(self) -> None:
        """RSET after a transaction that did not complete, so the next one starts clean."""
        reply = await self.command("RSET", self.timeouts.command, "after RSET")
        if reply.code != 250:
            self.abort()
            raise SessionError(f"RSET answered {reply}", "after RSET", reply=reply)

    async def quit(self, timeout: float = 5.0) -> None:
        """QUIT politely (best effort, briefly), then close."""
        if self.closed:
            return
        try:
            self.writer.write(b"QUIT\r\n")
            async with asyncio.timeout(timeout):
                await self.writer.drain()
                await self.reader.readline()
        except (TimeoutError, OSError, ConnectionError, RuntimeError):
            pass
        self.abort()

    def abort(self) -> None:
        """Close now, without QUIT."""
        if not self.closed:
            self.closed = True
            self.writer.close()
