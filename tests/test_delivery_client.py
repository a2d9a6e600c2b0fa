"""The delivery engine's SMTP client against real servers on loopback: the socket
bound to the source IP (and a bind failure that never falls back), the IP's
EHLO name, opportunistic STARTTLS, PIPELINING (proved by a server that answers
nothing until it has the whole MAIL/RCPT/DATA group), the same transaction one
command at a time, and a refused greeting, a refused connection and a broken TLS
handshake as errors the engine can act on."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP

from dataplane.config import SmtpTimeouts
from dataplane.smtp_client import (
    BindError,
    ConnectError,
    SessionError,
    SmtpConnection,
    client_tls_context,
    data_payload,
)
from dataplane.smtp_reply import Reply
from dataplane.tls import ensure_self_signed, server_context

SOURCE = "127.0.0.18"
TIMEOUTS = SmtpTimeouts(connect=5, greeting=5, command=5, data_start=5, data_block=5, data_end=5)


class Recorder:
    """aiosmtpd handler remembering what each transaction looked like."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("no"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.seen.append({
            "peer": session.peer[0], "helo": session.host_name, "tls": session.ssl is not None,
            "mail_from": envelope.mail_from, "rcpts": list(envelope.rcpt_tos), "data": envelope.original_content,
        })
        return "250 2.0.0 accepted"


async def _aiosmtpd(handler, tls_context=None) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AiosmtpdSMTP(handler, hostname="dest.test", tls_context=tls_context, decode_data=False,
                             require_starttls=False, loop=loop),
        "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _open(port: int, **kwargs) -> SmtpConnection:
    return await SmtpConnection.open("127.0.0.1", port, source_ip=kwargs.pop("source_ip", SOURCE),
                                     helo_name="out-18.example", timeouts=TIMEOUTS, server_name="dest.test", **kwargs)


async def test_starttls_when_offered_from_the_source_ip_with_its_helo_name(tmp_path):
    cert, key = ensure_self_signed(tmp_path, "dest.test")
    handler = Recorder()
    server, port = await _aiosmtpd(handler, server_context(cert, key))
    try:
        connection = await _open(port, tls_context=client_tls_context())
        assert connection.tls and "STARTTLS" not in connection.extensions  # EHLO again after TLS
        message = b"Subject: hi\n\n.leading dot\nbare LF\r\n"
        result = await connection.transaction("s@example.com", ["a@dest.test", "no@dest.test"],
                                              data_payload(message))
        assert result.mail == Reply(250, "OK") and result.rcpts[1] == Reply(550, "5.1.1 no such user")
        assert result.final == Reply(250, "2.0.0 accepted")
        # A second transaction on the same connection.
        result = await connection.transaction("s@example.com", ["b@dest.test"], data_payload(b"x\r\n"))
        assert result.final is not None and result.final.code == 250
        await connection.quit()
    finally:
        server.close()
    first, second = handler.seen
    assert (first["peer"], first["helo"], first["tls"]) == (SOURCE, "out-18.example", True)
    assert first["rcpts"] == ["a@dest.test"]
    assert first["data"] == b"Subject: hi\r\n\r\n.leading dot\r\nbare LF\r\n"
    assert second["rcpts"] == ["b@dest.test"]


async def test_no_tls_context_means_plaintext(tmp_path):
    cert, key = ensure_self_signed(tmp_path, "dest.test")
    handler = Recorder()
    server, port = await _aiosmtpd(handler, server_context(cert, key))
    try:
        connection = await _open(port, tls_context=None)
        assert not connection.tls and "STARTTLS" in connection.extensions
        await connection.transaction("s@example.com", ["a@dest.test"], data_payload(b"x\r\n"))
        await connection.quit()
    finally:
        server.close()
    assert handler.seen[0]["tls"] is False


class Scripted:
    """A raw SMTP server: EHLO (with or without PIPELINING), then answers from a
    script. With `wait_for_data`, it answers nothing of a transaction until the
    DATA command is in, which only a pipelining client survives."""

    def __init__(self, *, pipelining: bool, replies: dict[str, str], wait_for_data: bool = False) -> None:
        self.pipelining = pipelining
        self.replies = replies
        self.wait_for_data = wait_for_data
        self.commands: list[str] = []
        self.bodies: list[bytes] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        assert self.server is not None
        self.server.close()

    def _answer(self, line: str) -> str:
        verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
        if verb == "RCPT" and "refuse" in line:
            return self.replies.get("RCPT-REFUSED", "550 5.1.1 no")
        return self.replies.get(verb, "354 go ahead" if verb == "DATA" else "250 OK")

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            while True:
                line = (await reader.readline()).decode().rstrip("\r\n")
                if not line:
                    return
                self.commands.append(line)
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    writer.write(b"250-scripted\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                                 + b"250 8BITMIME\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                elif self.wait_for_data and verb in ("MAIL", "RCPT"):
                    continue  # answered together once DATA is in
                elif verb == "DATA" and self.wait_for_data:
                    group = [c for c in self.commands[self.commands.index(self._last_mail()):]]
                    writer.write("".join(self._answer(c) + "\r\n" for c in group).encode())
                    if self._answer(line).startswith("354"):
                        await self._body(reader, writer)
                else:
                    writer.write((self._answer(line) + "\r\n").encode())
                    if verb == "DATA" and self._answer(line).startswith("354"):
                        await self._body(reader, writer)
                await writer.drain()
        finally:
            writer.close()

    def _last_mail(self) -> str:
        return [c for c in self.commands if c.upper().startswith("MAIL")][-1]

    async def _body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.bodies.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write((self.replies.get("END", "250 2.0.0 queued") + "\r\n").encode())


async def test_pipelining_sends_mail_rcpt_and_data_as_one_group():
    server = Scripted(pipelining=True, replies={}, wait_for_data=True)
    await server.start()
    try:
        connection = await _open(server.port)
        assert connection.pipelining
        result = await connection.transaction("s@example.com", ["a@x.test", "refuse@x.test", "b@x.test"],
                                              data_payload(b"line\r\n..two dots\r\n"), mail_params=["SIZE=30"])
        assert [r.code for r in result.rcpts] == [250, 550, 250]
        assert result.data == Reply(354, "go ahead")
        assert result.final == Reply(250, "2.0.0 queued")
        await connection.quit()
    finally:
        server.close()
    assert server.commands[1:6] == ["MAIL FROM:<s@example.com> SIZE=30", "RCPT TO:<a@x.test>",
                                    "RCPT TO:<refuse@x.test>", "RCPT TO:<b@x.test>", "DATA"]
    assert server.bodies == [b"line\r\n...two dots\r\n.\r\n"]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_refused_mail_or_every_rcpt_ends_with_rset_and_no_message(pipelining):
    server = Scripted(pipelining=pipelining, replies={"MAIL": "451 4.3.0 later", "DATA": "503 5.5.1 no"})
    await server.start()
    try:
        connection = await _open(server.port)
        result = await connection.transaction("s@example.com", ["a@x.test"], data_payload(b"x\r\n"))
        assert result.mail == Reply(451, "4.3.0 later") and result.final is None
        server.replies = {"DATA": "554 5.5.1 no valid recipients"}
        result = await connection.transaction("s@example.com", ["refuse@x.test"], data_payload(b"x\r\n"))
        assert result.rcpts == [Reply(550, "5.1.1 no")] and result.final is None
        server.replies = {}
        result = await connection.transaction("s@example.com", ["a@x.test"], data_payload(b"x\r\n"))
        assert result.final == Reply(250, "2.0.0 queued")  # the connection is still good
        await connection.quit()
    finally:
        server.close()
    assert server.commands.count("RSET") == 2 and server.bodies == [b"x\r\n.\r\n"]
    if not pipelining:
        assert "DATA" not in server.commands[:5]  # no DATA after a refused MAIL or RCPT


async def test_bind_failure_is_its_own_error_and_nothing_connects():
    server = Scripted(pipelining=False, replies={})
    await server.start()
    try:
        with pytest.raises(BindError, match="assign requested address") as caught:
            await _open(server.port, source_ip="192.0.2.55")
        assert caught.value.source_ip == "192.0.2.55"
        await asyncio.sleep(0.05)
        assert server.commands == []
    finally:
        server.close()


async def test_refused_connection_refused_greeting_and_broken_tls():
    with pytest.raises(ConnectError):
        await _open(1)  # nothing listens on port 1 of loopback

    async def greet_554(reader, writer):
        writer.write(b"554 5.7.1 go away\r\n")
        await writer.drain()
        writer.close()

    async def broken_tls(reader, writer):
        writer.write(b"220 hi\r\n")
        await reader.readline()
        writer.write(b"250-hi\r\n250 STARTTLS\r\n")
        await reader.readline()
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await reader.read(100)  # the ClientHello
        writer.write(b"this is not TLS\r\n" * 10)
        await writer.drain()
        writer.close()

    for handler, check in ((greet_554, lambda e: e.reply == Reply(554, "5.7.1 go away")),
                           (broken_tls, lambda e: e.tls_failed)):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        try:
            with pytest.raises(SessionError) as caught:
                await _open(server.sockets[0].getsockname()[1], tls_context=client_tls_context())
            assert check(caught.value), caught.value
        finally:
            server.close()


def test_client_tls_context_does_not_verify():
    context = client_tls_context()
    assert context.verify_mode == ssl.CERT_NONE and context.check_hostname is False
