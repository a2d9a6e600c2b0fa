"""Data-plane configuration: built once in `dataplane.__main__` from flags and
environment, validated here, then passed down. No other module reads the environment.

It is one module past ~450 lines on purpose: every setting of a worker, each with its
default and its validation, is a dataclass field here, and splitting the list by
feature would make "what can be configured, and to what" a search across files."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from control.contract.event_log import DEFAULT_MAX_EVENTS
from control.contract.runtime import (
    DEFAULT_HTTP_PORT,
    DEFAULT_INBOUND_PORT,
    DEFAULT_SMTP_PORT,
)

MIB = 1024 * 1024

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
# Open SMTP Bridge connections per MTA server, and per client address (the inbound
# listener's per-address cap is the same; its total is --inbound-max-connections).
# 20 per address: well above what one sending application opens (Postfix's
# default_destination_concurrency_limit is 20), far below what exhausts a worker.
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 20
# Idle seconds a Bridge session may spend before AUTH (unless trusted): enough for
# a person typing, far less than the 300 s aiosmtpd gives a session.
DEFAULT_PRE_AUTH_TIMEOUT = 30.0


MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

# Like Postfix (minimal_backoff_time 300 s, doubling, maximal 4000 s) and
# Exim's default retry rule: minutes at first, growing, capped; the last repeats.
DEFAULT_RETRY_SCHEDULE = (5 * MINUTE, 10 * MINUTE, 20 * MINUTE, 40 * MINUTE, HOUR, 2 * HOUR)
# Postfix's maximal_queue_lifetime; RFC 5321 4.5.4.1 says "at least 4-5 days".
DEFAULT_QUEUE_LIFETIME = 3 * DAY
DEFAULT_EVENT_RETENTION = 7 * DAY
# Both per MTA server (split over the workers). The destination limit is half
# the IP limit, so one slow destination never holds all of an IP's connections.
DEFAULT_MAX_CONN_PER_IP = 20
# Bytes of message content a worker's delivery queue keeps in memory ahead of
# sending; past it, bytes are read back from the spool when due (`payload_budget`).
DEFAULT_PAYLOAD_MEMORY = 32 * MIB
DEFAULT_MAX_CONN_PER_DESTINATION = 10
SMTP_PORT = 25
WILDCARD_ROUTE = "*"

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": MINUTE, "h": HOUR, "d": DAY}
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def argument_type(parse):
    """An argparse `type=` from a parser that raises ValueError: a bad value then exits 2
    with the parser's own message, not argparse's bare "invalid value"."""

    @functools.wraps(parse)
    def convert(value: str):
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def parse_duration(text: str) -> float:
    """`90`, `0.5s`, `5m`, `1.5h`, `3d` -> seconds (> 0); ValueError naming the problem."""
    match = _DURATION.fullmatch(text.strip().lower())
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else 0.0
    if not match or not 0 < seconds < math.inf:
        raise ValueError(f"not a duration: {text!r} (a positive number with an optional s, m, h or d suffix, "
                         "e.g. 0.5s, 5m, 2h, 3d)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling parse_duration reads back: 300 -> 5m, 0.5 -> 0.5s."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    text = repr(float(seconds))
    if "e" in text:  # repr's exponent form is not a duration; spell out the same digits
        text = format(Decimal(text), "f")
    return f"{text}s"


def parse_retry_schedule(text: str) -> tuple[float, ...]:
    """`5m,10m,20m,1h` -> delays in seconds before retry 1, 2, 3, ...; the last repeats."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"retry schedule must list at least one duration (e.g. 5m,10m,20m,1h), got {text!r}")
    return tuple(parse_duration(part) for part in parts)


def parse_hostport(value: str, *, what: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (or `host` / `[v6]` when there is a default port) -> (host, port)."""
    text = value.strip()
    port = ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest[1:] if rest.startswith(":") else "x"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text if ":" not in text else ""  # a bare IPv6 address needs brackets
    if not port and default_port is not None:
        port = str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:2626, [::1]:2626), got {value!r}")
    return host, int(port)


def normalize_domain(domain: str) -> str:
    """A destination domain as routes and connection limits key it: lower case, no final dot."""
    return domain.strip().rstrip(".").lower()


def parse_route(value: str) -> tuple[str, str, int]:
    """`example.com=127.0.0.1:2626` or `*=host:port` -> (domain, host, port)."""
    domain, sep, target = value.partition("=")
    domain = normalize_domain(domain)
    if not sep or not domain or not target.strip():
        raise ValueError(f"route must be DOMAIN=HOST:PORT (or '*=HOST:PORT' for every domain), got {value!r}")
    if domain != WILDCARD_ROUTE and not _DOMAIN.fullmatch(domain):
        raise ValueError(f"route {value!r}: {domain!r} is not a domain name (or *)")
    host, port = parse_hostport(target, what=f"route {value!r}: the target", default_port=SMTP_PORT)
    return domain, host, port


@dataclass(frozen=True)
class SmtpTimeouts:
    """Seconds the delivery client waits (RFC 5321 4.5.3.2 gives the minimums a
    client should allow for each reply; connect is Postfix's smtp_connect_timeout)."""

    connect: float = 30.0
    greeting: float = 300.0  # 4.5.3.2.1 initial 220: 5 minutes
    command: float = 300.0  # EHLO, STARTTLS, MAIL (4.5.3.2.2), RCPT (4.5.3.2.3), RSET, QUIT
    data_start: float = 120.0  # 4.5.3.2.4 DATA initiation: 2 minutes
    data_block: float = 180.0  # 4.5.3.2.5 each block of data: 3 minutes
    data_end: float = 600.0  # 4.5.3.2.6 DATA termination: 10 minutes

    def __post_init__(self) -> None:
        for name in ("connect", "greeting", "command", "data_start", "data_block", "data_end"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SMTP {name} timeout must be positive")


@dataclass(frozen=True)
class DeliveryConfig:
    """How a worker delivers what it spooled.

    enabled: False = accept and spool only (benchmarks of the accept path).
    routes: (domain, host, port); an exact domain beats "*", which beats the
        smarthost, which beats MX lookup.
    smarthost: (host, port) for every domain without a route.
    retry_schedule: seconds before retry 1, 2, ...; the last repeats.
    queue_lifetime: seconds after acceptance a deferred recipient is bounced.
    max_conn_per_ip, max_conn_per_destination: concurrent outbound connections
        per source IP and per destination, for the whole MTA server (each
        worker gets its share, rounded up).
    event_retention: seconds a message's delivery events stay in Redis.
    events_max: how many delivery events the server's event log keeps at most
        (`control.contract.event_log`; about 285 bytes of Redis memory each, 460
        with a long reply).
    dns_server: (host, port) of the resolver for MX/A/AAAA lookups; None =
        the system's (/etc/resolv.conf).
    mx_port: port of the hosts found by MX lookup (25; another for tests).
    idle_timeout: seconds an idle outbound connection is kept for reuse.
    max_messages_per_connection: transactions before a connection is renewed.
    rescan_interval: seconds between scans of the spool for records this
        worker owns but does not know (a safety net: records are handed over
        in memory at acceptance, and found by the scan at start).
    flush_max_events: events per stats/events batch (a flush starts early
        when this many wait).
    payload_memory: bytes of message content one worker keeps in memory for
        messages waiting to be sent; the others' bytes are read back from the
        spool when due (0: always read back).
    """

    enabled: bool = True
    routes: tuple[tuple[str, str, int], ...] = ()
    smarthost: tuple[str, int] | None = None
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    queue_lifetime: float = DEFAULT_QUEUE_LIFETIME
    max_conn_per_ip: int = DEFAULT_MAX_CONN_PER_IP
    max_conn_per_destination: int = DEFAULT_MAX_CONN_PER_DESTINATION
    event_retention: float = DEFAULT_EVENT_RETENTION
    events_max: int = DEFAULT_MAX_EVENTS
    dns_server: tuple[str, int] | None = None
    mx_port: int = SMTP_PORT
    timeouts: SmtpTimeouts = field(default_factory=SmtpTimeouts)
    idle_timeout: float = 5.0
    max_messages_per_connection: int = 1000
    rescan_interval: float = 30.0
    flush_max_events: int = 1000
    payload_memory: int = DEFAULT_PAYLOAD_MEMORY

    def __post_init__(self) -> None:
        domains = [domain for domain, _, _ in self.routes]
        duplicates = sorted({d for d in domains if domains.count(d) > 1})
        if duplicates:
            raise ValueError(f"more than one --route for {', '.join(duplicates)}")
        if self.smarthost is not None and WILDCARD_ROUTE in domains:
            raise ValueError("--smarthost and --route '*=...' both name where every domain goes; give one")
        if not self.retry_schedule or any(not d > 0 for d in self.retry_schedule):
            raise ValueError("the retry schedule needs at least one positive duration")
        for name in ("queue_lifetime", "event_retention", "idle_timeout", "rescan_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive")
        for name in ("max_conn_per_ip", "max_conn_per_destination", "max_messages_per_connection",
                     "flush_max_events", "events_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.payload_memory < 0:
            raise ValueError(f"delivery payload memory must be 0 or more bytes, got {self.payload_memory}")
        if not 0 < self.mx_port <= 65535:
            raise ValueError(f"MX port must be 1-65535, got {self.mx_port}")

    def route_for(self, domain: str) -> tuple[str, int] | None:
        """The static next hop of `domain` (normalized): its route, the `*` route,
        the smarthost, or None (MX lookup)."""
        wildcard = None
        for route_domain, host, port in self.routes:
            if route_domain == domain:
                return host, port
            if route_domain == WILDCARD_ROUTE:
                wildcard = (host, port)
        return wildcard or self.smarthost

    def share(self, limit: int, workers: int) -> int:
        """One worker's share of a server-wide connection limit (rounded up)."""
        return worker_share(limit, workers)


def worker_share(limit: int, workers: int) -> int:
    """One worker's share of a server-wide limit (rounded up, at least 1)."""
    return max(1, -(-limit // workers))


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError naming the problem."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be HOST:PORT (e.g. 127.0.0.1:2525 or [::1]:2525), got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_listen(host: str, port: int) -> str:
    """The inverse of parse_listen (brackets around an IPv6 host)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class AuthThrottleConfig:
    """Failed-AUTH throttling per client (an IPv4 address or an IPv6 /64), counted for
    every worker of the MTA server through Redis (`dataplane.bridge_auth`).

    Within `window` seconds, the first `delay_after - 1` failures are answered at
    once; from the `delay_after`-th on each failure is answered after a delay that
    doubles from `base_delay` up to `max_delay`; the `block_after`-th failure (and
    any AUTH from that client while it stays at the limit) gets 421 and the
    connection is closed. `max_tracked_addresses` bounds the clients a worker
    remembers while Redis is unreachable and it counts on its own.
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
        if self.max_tracked_addresses < 1:
            raise ValueError("AUTH throttle must remember at least 1 client address")


# A report carries the returned message (RFC 3462 / RFC 6522 section 3), so it is as
# large as what we sent, but the parser reads only its first 2 MiB: 10 MB covers the
# returned message of all but the largest mail, far below the Bridge's 25 MB.
DEFAULT_INBOUND_MAX_MESSAGE_SIZE = 10 * MIB
# Postfix's default_process_limit: concurrent SMTP sessions of one server.
DEFAULT_INBOUND_MAX_CONNECTIONS = 100
# A report goes to one return path (RFC 3464 section 2: one DSN per envelope sender);
# a few more cover an FBL report copied to several addresses.
DEFAULT_INBOUND_MAX_RECIPIENTS = 20
_ADDRESS = re.compile(r"[^@\s<>]{1,64}@[A-Za-z0-9.-]{1,255}")


def parse_fbl_address(value: str) -> str:
    """A feedback-loop address (`fbl@acme.example`) as the inbound listener compares it:
    lower case; ValueError naming the problem."""
    address = value.strip().lower()
    if not _ADDRESS.fullmatch(address) or not address.isascii():
        raise ValueError(f"not an FBL address: {value[:80]!r} (an address like fbl@example.com)")
    return address


@dataclass(frozen=True)
class InboundConfig:
    """The inbound listener of every worker: bounces (to VERP return paths) and
    feedback reports (to FBL addresses) come in here (`dataplane.inbound`).

    enabled: False = no inbound listener (`--inbound-listen none`).
    host, port: where it listens, shared by all workers (SO_REUSEPORT); port 0 lets
        the supervisor pick one.
    max_message_size: largest report accepted, advertised with SIZE (552 beyond).
    fbl_addresses: addresses registered with providers' feedback loops (lower case),
        accepted beside `fbl@`, `abuse@` and `postmaster@` each bounce domain.
    max_connections: concurrent inbound sessions for the whole server (each worker
        gets its share, rounded up); more get 421.
    max_recipients: RCPT TOs per transaction; more get 452.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = DEFAULT_INBOUND_PORT
    max_message_size: int = DEFAULT_INBOUND_MAX_MESSAGE_SIZE
    fbl_addresses: tuple[str, ...] = ()
    max_connections: int = DEFAULT_INBOUND_MAX_CONNECTIONS
    max_recipients: int = DEFAULT_INBOUND_MAX_RECIPIENTS

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"inbound port must be 0-65535, got {self.port}")
        if self.max_message_size < 1024:
            raise ValueError(f"inbound max size must be at least 1024 bytes, got {self.max_message_size}")
        if self.max_connections < 1 or self.max_recipients < 1:
            raise ValueError("inbound connection and recipient limits must be at least 1")
        for address in self.fbl_addresses:
            parse_fbl_address(address)

    @property
    def listen(self) -> str:
        return format_listen(self.host, self.port)


# /readyz fails below this much free disk under the spool: a full disk fails every
# spool write, so a load balancer should send new mail elsewhere before it is full.
DEFAULT_MIN_FREE_DISK = 256 * MIB
# Messages in one REST batch request (`POST /v1/messages/batch`).
DEFAULT_REST_MAX_BATCH = 100


@dataclass(frozen=True)
class HttpConfig:
    """The REST Bridge with /healthz and /readyz (`dataplane.rest`), served by every
    worker on one SO_REUSEPORT port.

    enabled: False = no HTTP listener (`--http-listen none`).
    host, port: where it listens; port 0 lets the supervisor pick one.
    min_free_disk: bytes free under the spool below which /readyz answers 503.
    max_batch: messages one `POST /v1/messages/batch` may carry.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = DEFAULT_HTTP_PORT
    min_free_disk: int = DEFAULT_MIN_FREE_DISK
    max_batch: int = DEFAULT_REST_MAX_BATCH

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"HTTP port must be 0-65535, got {self.port}")
        if self.min_free_disk < 0 or self.max_batch < 1:
            raise ValueError("--min-free-disk must not be negative and the batch size must be at least 1")

    @property
    def listen(self) -> str:
        return format_listen(self.host, self.port)


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
    max_connections: open SMTP Bridge connections for the whole server (all
        workers together); more get 421.
    max_connections_per_address: open connections from one client address, for the
        whole server, to the Bridge and to the inbound listener (each counted on its
        own); more get 421.
    connection_cap_exempt: client networks (CIDR) whose connections neither
        connection cap counts (none by default: loopback is counted too).
    pre_auth_timeout: idle seconds a Bridge session that has not authenticated (and
        is not from a trusted network) is kept; then 421 and closed.
    heartbeat_interval: seconds between acks; each also checks the `current`
        snapshot version (so a missed notice is caught within one interval).
    stats_flush_interval: seconds between stats flushes to Redis.
    stats_journal_max_bytes: disk one worker's stats journal may take (it grows
        while Redis is down; `dataplane.stats_journal`); past it counts are dropped.
    shutdown_grace: seconds a stopping worker lets messages in DATA (and
        outbound transactions) finish.
    delivery: the delivery engine's settings.
    inbound: the inbound listener's settings.
    metrics_listen: (host, port) where the supervisor serves the workers' merged
        Prometheus metrics (port 0 picks one); None = not served (the workers still
        count, in memory, when no metrics directory is set: `dataplane.metrics`).
    http: the REST Bridge's and health endpoints' settings.
    event_loop: the workers' event loop, "auto" (uvloop when installed), "asyncio" or
        "uvloop" (`dataplane.event_loop`).
    """

    server_id: int
    data_dir: Path
    redis_url: str
    smtp_host: str = "127.0.0.1"
    smtp_port: int = DEFAULT_SMTP_PORT
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
    stats_journal_max_bytes: int = 512 * 1024 * 1024
    shutdown_grace: float = 10.0
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    pre_auth_timeout: float = DEFAULT_PRE_AUTH_TIMEOUT
    connection_cap_exempt: tuple[str, ...] = ()
    metrics_listen: tuple[str, int] | None = None
    http: HttpConfig = field(default_factory=HttpConfig)
    event_loop: str = "auto"

    def __post_init__(self) -> None:
        if self.metrics_listen is not None and not 0 <= self.metrics_listen[1] <= 65535:
            raise ValueError(f"metrics port must be 0-65535, got {self.metrics_listen[1]}")
        if self.max_connections < 1 or self.max_connections_per_address < 1:
            raise ValueError("--max-connections and --max-connections-per-address must be at least 1, got "
                             f"{self.max_connections} and {self.max_connections_per_address}")
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
        for network in (*self.insecure_auth_networks, *self.connection_cap_exempt):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"not a network (CIDR): {network!r}") from None
        for name in ("session_timeout", "heartbeat_interval", "stats_flush_interval", "pre_auth_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must not be negative")
        if self.stats_journal_max_bytes < 1024 * 1024:
            raise ValueError(f"stats journal max bytes must be at least 1M, got {self.stats_journal_max_bytes}")

    @property
    def smtp_listen(self) -> str:
        return format_listen(self.smtp_host, self.smtp_port)

    @property
    def spool_dir(self) -> Path:
        """`<data_dir>/spool/server-<N>/`; layout in `dataplane.spool.directory`."""
        return self.data_dir / "spool" / f"server-{self.server_id}"

    @property
    def stats_journal_dir(self) -> Path:
        """`<data_dir>/stats-journal/server-<N>/`; layout in `dataplane.stats_journal`."""
        return self.data_dir / "stats-journal" / f"server-{self.server_id}"

    @property
    def metrics_dir(self) -> Path:
        """`<data_dir>/metrics/server-<N>/`: the workers' metric files (`dataplane.metrics`)."""
        return self.data_dir / "metrics" / f"server-{self.server_id}"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

