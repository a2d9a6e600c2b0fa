"""What the SMTP and REST Bridges hand to `BridgeHandler.accept` beside the envelope,
and what they get back: who submitted the message, and the acceptance's reply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Submitter:
    """Who handed a message to a Bridge, as its Received header and spool record name them."""

    address: str  # the client's IP address
    helo: str  # its EHLO / HELO name ("" for REST)
    protocol: str  # the Received header's "with": ESMTP[S][A] (RFC 3848), or HTTP[S]
    tls: bool
    hostname: str  # the name this server answered with

    @classmethod
    def of_session(cls, server, session, auth_kind: str) -> Submitter:
        """The SMTP client of this session."""
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if server.tls_active:
            protocol += "S"
        if auth_kind == "auth":
            protocol += "A"  # RFC 3848
        return cls(server.peer_address, session.host_name or "", protocol, server.tls_active, server.hostname)


@dataclass(frozen=True, slots=True)
class Acceptance:
    """The end of one submission: the reply for the client; `message_id` once it is spooled."""

    reply: str
    message_id: str | None = None

