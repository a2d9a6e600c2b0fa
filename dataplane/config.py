"""Data-plane configuration: built once in `dataplane.__main__` from flags and
environment, validated here, then passed down. No other module reads the environment."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024

DEFAULT_SMTP_LISTEN = "127.0.0.1:2525"
# Large enough for a ~18 MB attachment after base64 (33 % overhead); what the
# common sending services accept (Mailgun 25 MB, SendGrid 30 MB).
DEFAULT_MAX_MESSAGE_SIZE = 25 * MIB
# Postfix's smtpd_recipient_limit.
DEFAULT_MAX_RECIPIENTS = 1000
# RFC 5322 section 2.1.1: a line MUST be at most 998 characters, CRLF excluded.
DEFAULT_MAX_LINE_LENGTH = 998
# Clients on these networks may AUTH without STARTTLS: loopback traffic never
# leaves the host, so there is nothing to sniff.
DEFAULT_INSECURE_AUTH_NETWORKS = ("127.0.0.0/8", "::1/128")


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError naming the problem."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be host:port (e.g. 127.0.0.1:2525), got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_listen(host: str, port: int) -> str:
    """The inverse of parse_listen (brackets around an IPv6 host)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class AuthThrottleConfig:
    """Failed-AUTH throttling per client address (per worker process).

    Within `window` seconds, the first `delay_after - 1` failures are answered at
    once; from the `delay_after`-th on each failure is answered after a delay that
    doubles from `base_delay` up to `max_delay`; the `block_after`-th failure (and
    any AUTH from that address while it stays over the limit) gets 421 and the
    connection is closed.
    """

    delay_after: int = 3
    block_after: int = 10
    window: float = 300.0
    base_delay: float = 0.5
    max_delay: float = 5.0
    max_tracked_addresses: int = 100_000

    def __post_init__(self) -> None:
        if self.delay_after < 1 or self.block_after < 1:
            raise ValueError("AUTH failure thresholds must be at least 1")
        if self.window <= 0 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("AUTH throttle window must be positive and 0 <= base delay <= max delay")


@dataclass(frozen=True)
class DataplaneConfig:
    """What one data-plane server (supervisor plus its workers) needs to run.

    server_id: the MTA server whose snapshot the workers serve.
    data_dir: holds `spool/server-<N>/` and, unless a certificate is configured,
        `tls/` with the generated self-signed certificate.
    redis_url: where snapshots, acks and stats live.
    smtp_host, smtp_port: the SMTP Bridge listener, shared by all workers
        (SO_REUSEPORT); port 0 lets the supervisor pick one.
    workers: worker processes.
    hostname: the name in the banner and EHLO reply; None = the snapshot's
        MTA server hostname.
    tls_cert, tls_key: PEM files for STARTTLS; None = self-signed, generated once.
    allow_insecure_auth: accept AUTH before STARTTLS from any client.
    insecure_auth_networks: client networks that may AUTH before STARTTLS
        (loopback by default); `()` = none.
    max_message_size: advertised with SIZE, enforced with 552.
    max_recipients: RCPT TOs per message; more get 452.
    max_line_length: longest message line accepted (CRLF excluded).
    auth_throttle: failed-AUTH throttling per client address.
    session_timeout: seconds an idle SMTP session is kept.
    heartbeat_interval: seconds between acks; each also checks the `current`
        snapshot version (so a missed notice is caught within one interval).
    stats_flush_interval: seconds between stats flushes to Redis.
    shutdown_grace: seconds a stopping worker lets messages in DATA finish.
    """

    server_id: int
    data_dir: Path
    redis_url: str
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    workers: int = 1
    hostname: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_insecure_auth: bool = False
    insecure_auth_networks: tuple[str, ...] = DEFAULT_INSECURE_AUTH_NETWORKS
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    auth_throttle: AuthThrottleConfig = AuthThrottleConfig()
    session_timeout: float = 300.0
    heartbeat_interval: float = 0.5
    stats_flush_interval: float = 0.25
    shutdown_grace: float = 10.0

    def __post_init__(self) -> None:
        if self.server_id < 1:
            raise ValueError(f"server id must be a positive integer, got {self.server_id}")
        if not self.redis_url:
            raise ValueError("redis_url is required")
        if not 0 <= self.smtp_port <= 65535:
            raise ValueError(f"SMTP port must be 0-65535, got {self.smtp_port}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.max_message_size < 1024:
            raise ValueError(f"max message size must be at least 1024 bytes, got {self.max_message_size}")
        if self.max_recipients < 1:
            raise ValueError(f"max recipients must be at least 1, got {self.max_recipients}")
        if self.max_line_length < 78:
            raise ValueError(f"max line length must be at least 78, got {self.max_line_length}")
        for network in self.insecure_auth_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"not a network (CIDR): {network!r}") from None
        for name in ("session_timeout", "heartbeat_interval", "stats_flush_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must not be negative")

    @property
    def smtp_listen(self) -> str:
        return format_listen(self.smtp_host, self.smtp_port)

    @property
    def spool_dir(self) -> Path:
        """`<data_dir>/spool/server-<N>/`; layout in `dataplane.spool`."""
        return self.data_dir / "spool" / f"server-{self.server_id}"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"
