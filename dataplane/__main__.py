"""`python -m dataplane` (what `poolmta dataplane` runs): the data plane of one MTA server.

Every option has an environment variable; a flag given on the command line wins.
The configuration is built and validated here, once, and passed down.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import socket
import ssl
import sys
from pathlib import Path

from control.contract import file_modes
from control.contract.event_log import DEFAULT_MAX_EVENTS
from control.contract.redis_client import RedisUrlError, check_redis_url, cluster_option
from control.contract.runtime import (
    DEFAULT_DATAPLANE_METRICS_LISTEN,
    DEFAULT_HTTP_LISTEN,
    DEFAULT_INBOUND_LISTEN,
    DEFAULT_SMTP_LISTEN,
    default_data_dir,
    embedded_redis_url,
    redis_answers,
)

from . import event_loop, logs, spool
from .config import (
    DEFAULT_EVENT_RETENTION,
    DEFAULT_INBOUND_MAX_CONNECTIONS,
    DEFAULT_INBOUND_MAX_MESSAGE_SIZE,
    DEFAULT_INSECURE_AUTH_NETWORKS,
    DEFAULT_MAX_CONN_PER_DESTINATION,
    DEFAULT_MAX_CONN_PER_IP,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_RECIPIENTS,
    DEFAULT_MIN_FREE_DISK,
    DEFAULT_PAYLOAD_MEMORY,
    DEFAULT_PRE_AUTH_TIMEOUT,
    DEFAULT_QUEUE_LIFETIME,
    DEFAULT_RETRY_SCHEDULE,
    SMTP_PORT,
    AuthThrottleConfig,
    DataplaneConfig,
    DeliveryConfig,
    HttpConfig,
    InboundConfig,
    argument_type,
    format_duration,
    parse_duration,
    parse_fbl_address,
    parse_hostport,
    parse_listen,
    parse_retry_schedule,
    parse_route,
)

log = logging.getLogger("poolmta.dataplane")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SIZE_SUFFIXES = {"k": 1024, "m": 1024**2, "g": 1024**3}


def _size(text: str) -> int:
    """Bytes, with an optional K / M / G (binary) suffix: 25M, 1048576."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty size")
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    multiplier = _SIZE_SUFFIXES.get(value[-1:], 1)
    if multiplier != 1:
        value = value[:-1]
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use bytes, or a K/M/G suffix)")
    return int(value) * multiplier


def _routes_from_env(text: str | None) -> list[tuple[str, str, int]]:
    """POOLMTA_ROUTE: routes separated by commas or whitespace."""
    if not text:
        return []
    try:
        return [parse_route(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError as exc:
        raise SystemExit(f"error: POOLMTA_ROUTE: {exc}") from None


def _networks(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _flag_default(env: dict[str, str], name: str) -> bool:
    raw = env.get(name)
    if raw is None:
        return False
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise SystemExit(f"error: {name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def _add_duration(group, env: dict[str, str], flag: str, env_name: str, default: float, help_text: str) -> None:
    """Add a duration option (s/m/h/d suffixes) whose default is `env_name`, else `default`;
    its help ends with both."""
    shown = format_duration(default)
    group.add_argument(flag, type=argument_type(parse_duration), default=env.get(env_name, shown), metavar="DURATION",
                       help=f"{help_text} (env {env_name}; default {shown})")


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="poolmta dataplane",
        description="Run the data plane of one MTA server: the SMTP Bridge in K worker processes.",
    )
    e = env.get
    p.add_argument("--server-id", type=int, default=e("POOLMTA_SERVER_ID"),
                   help="MTA server whose snapshot to serve (env POOLMTA_SERVER_ID; required)")
    p.add_argument("--data-dir", type=Path, default=e("POOLMTA_DATA_DIR"),
                   help="state directory (env POOLMTA_DATA_DIR; default $XDG_DATA_HOME/poolmta "
                        "or ~/.local/share/poolmta)")
    redis = p.add_mutually_exclusive_group()
    redis.add_argument("--redis-url", default=e("POOLMTA_REDIS_URL"),
                       help="Redis URL (env POOLMTA_REDIS_URL); default: the data directory's embedded "
                            "Redis, which `poolmta up`, `poolmta control` or `poolmta dataplane` runs; "
                            "redis+cluster://HOST:PORT[,HOST:PORT] for a Redis Cluster")
    redis.add_argument("--redis-cluster", type=cluster_option, metavar="HOST:PORT[,HOST:PORT]",
                       help="use the Redis Cluster these nodes belong to (the same as --redis-url "
                            "redis+cluster://HOST:PORT[,HOST:PORT])")
    p.add_argument("--smtp-listen", default=e("POOLMTA_SMTP_LISTEN", DEFAULT_SMTP_LISTEN),
                   help=f"SMTP Bridge host:port (env POOLMTA_SMTP_LISTEN; default {DEFAULT_SMTP_LISTEN}; "
                        "port 0 picks one)")
    p.add_argument("--workers", type=int, default=e("POOLMTA_WORKERS"),
                   help="worker processes (env POOLMTA_WORKERS; default: the number of CPU cores)")
    p.add_argument("--hostname", default=e("POOLMTA_HOSTNAME"),
                   help="name in the SMTP banner and EHLO reply (env POOLMTA_HOSTNAME; default: the "
                        "MTA server's hostname from the snapshot)")
    p.add_argument("--tls-cert", type=Path, default=e("POOLMTA_TLS_CERT"),
                   help="PEM certificate (chain) for STARTTLS (env POOLMTA_TLS_CERT; default: a "
                        "self-signed one generated into <data-dir>/tls/)")
    p.add_argument("--tls-key", type=Path, default=e("POOLMTA_TLS_KEY"),
                   help="PEM private key of --tls-cert (env POOLMTA_TLS_KEY)")
    p.add_argument("--allow-insecure-auth", action="store_true",
                   default=_flag_default(env, "POOLMTA_ALLOW_INSECURE_AUTH"),
                   help="accept AUTH before STARTTLS from any client (env POOLMTA_ALLOW_INSECURE_AUTH=1)")
    p.add_argument("--insecure-auth-networks", type=_networks,
                   default=e("POOLMTA_INSECURE_AUTH_NETWORKS", ",".join(DEFAULT_INSECURE_AUTH_NETWORKS)),
                   help="comma-separated client networks that may AUTH before STARTTLS, or 'none' "
                        "(env POOLMTA_INSECURE_AUTH_NETWORKS; default loopback: "
                        f"{','.join(DEFAULT_INSECURE_AUTH_NETWORKS)})")
    p.add_argument("--max-message-size", type=_size,
                   default=e("POOLMTA_MAX_MESSAGE_SIZE", str(DEFAULT_MAX_MESSAGE_SIZE)),
                   help="largest message accepted, advertised with SIZE (env POOLMTA_MAX_MESSAGE_SIZE; "
                        "bytes or K/M/G; default 25M)")
    p.add_argument("--stats-journal-max-bytes", type=_size,
                   default=e("POOLMTA_STATS_JOURNAL_MAX_BYTES", "512M"),
                   help="disk each worker's stats journal may take while Redis is down; past it new counts "
                        "are dropped, logged (env POOLMTA_STATS_JOURNAL_MAX_BYTES; bytes or K/M/G; default 512M)")
    p.add_argument("--max-recipients", type=int,
                   default=e("POOLMTA_MAX_RECIPIENTS", str(DEFAULT_MAX_RECIPIENTS)),
                   help=f"RCPT TOs per message (env POOLMTA_MAX_RECIPIENTS; default {DEFAULT_MAX_RECIPIENTS})")
    p.add_argument("--max-line-length", type=int,
                   default=e("POOLMTA_MAX_LINE_LENGTH", str(DEFAULT_MAX_LINE_LENGTH)),
                   help="longest message line in octets, CRLF excluded (env POOLMTA_MAX_LINE_LENGTH; "
                        f"default {DEFAULT_MAX_LINE_LENGTH}, RFC 5322)")
    defaults = AuthThrottleConfig()
    p.add_argument("--auth-delay-after", type=int,
                   default=e("POOLMTA_AUTH_DELAY_AFTER", str(defaults.delay_after)),
                   help="failed AUTHs from one client (IPv4 address or IPv6 /64) before replies are delayed "
                        f"(env POOLMTA_AUTH_DELAY_AFTER; default {defaults.delay_after})")
    p.add_argument("--auth-block-after", type=int,
                   default=e("POOLMTA_AUTH_BLOCK_AFTER", str(defaults.block_after)),
                   help="failed AUTHs from one client within the window before it gets 421 "
                        f"(env POOLMTA_AUTH_BLOCK_AFTER; default {defaults.block_after})")
    _add_duration(p, env, "--auth-fail-window", "POOLMTA_AUTH_FAIL_WINDOW", defaults.window,
                  "how long a failed AUTH counts against its client, for every worker of the server "
                  "(a plain number is seconds)")
    d = p.add_argument_group("delivery")
    d.add_argument("--route", action="append", type=argument_type(parse_route), metavar="DOMAIN=HOST:PORT",
                   default=None,
                   help="deliver DOMAIN's mail to HOST:PORT instead of its MX; repeatable; '*' = every "
                        "domain, an exact domain wins over '*' (env POOLMTA_ROUTE, comma-separated)")
    d.add_argument("--smarthost", type=argument_type(lambda v: parse_hostport(v, what="--smarthost",
                                                                             default_port=SMTP_PORT)),
                   default=e("POOLMTA_SMARTHOST"), metavar="HOST:PORT",
                   help="relay every domain without a --route through HOST:PORT (env POOLMTA_SMARTHOST)")
    d.add_argument("--retry-schedule", type=argument_type(parse_retry_schedule),
                   default=e("POOLMTA_RETRY_SCHEDULE", ",".join(map(format_duration, DEFAULT_RETRY_SCHEDULE))),
                   metavar="D1,D2,...",
                   help="waits before retry 1, 2, ... of a deferred recipient; the last repeats; s/m/h/d "
                        "suffixes, fractions allowed (env POOLMTA_RETRY_SCHEDULE; default "
                        f"{','.join(map(format_duration, DEFAULT_RETRY_SCHEDULE))})")
    _add_duration(d, env, "--queue-lifetime", "POOLMTA_QUEUE_LIFETIME", DEFAULT_QUEUE_LIFETIME,
                  "how long after acceptance a deferred recipient is retried before it bounces")
    d.add_argument("--max-conn-per-ip", type=int, default=e("POOLMTA_MAX_CONN_PER_IP", str(DEFAULT_MAX_CONN_PER_IP)),
                   metavar="N", help="outbound connections per source IP, for the whole server "
                                     f"(env POOLMTA_MAX_CONN_PER_IP; default {DEFAULT_MAX_CONN_PER_IP})")
    d.add_argument("--max-conn-per-destination", type=int,
                   default=e("POOLMTA_MAX_CONN_PER_DESTINATION", str(DEFAULT_MAX_CONN_PER_DESTINATION)),
                   metavar="N", help="outbound connections per destination (domain, or route target), for the "
                                     "whole server (env POOLMTA_MAX_CONN_PER_DESTINATION; default "
                                     f"{DEFAULT_MAX_CONN_PER_DESTINATION})")
    d.add_argument("--delivery-payload-memory", type=_size,
                   default=e("POOLMTA_DELIVERY_PAYLOAD_MEMORY", f"{DEFAULT_PAYLOAD_MEMORY // 1024**2}M"),
                   metavar="BYTES",
                   help="message content each worker keeps in memory for mail waiting to be sent; past it, "
                        "a message's bytes are read back from the spool when it is due, so a backlog costs "
                        "disk, not memory (env POOLMTA_DELIVERY_PAYLOAD_MEMORY; bytes or K/M/G; "
                        f"default {DEFAULT_PAYLOAD_MEMORY // 1024**2}M)")
    _add_duration(d, env, "--event-retention", "POOLMTA_EVENT_RETENTION", DEFAULT_EVENT_RETENTION,
                  "how long a message's delivery events stay in Redis for `message status`")
    d.add_argument("--events-max", type=int, default=e("POOLMTA_EVENTS_MAX", str(DEFAULT_MAX_EVENTS)), metavar="N",
                   help="delivery events the server keeps in Redis at most, the oldest trimmed first (about 285-"
                        f"460 bytes each; env POOLMTA_EVENTS_MAX; default {DEFAULT_MAX_EVENTS})")
    d.add_argument("--dns-server",
                   type=argument_type(lambda v: parse_hostport(v, what="--dns-server", default_port=53)),
                   default=e("POOLMTA_DNS_SERVER"), metavar="HOST[:PORT]",
                   help="DNS resolver for MX and address lookups (env POOLMTA_DNS_SERVER; default: the "
                        "system's, /etc/resolv.conf)")
    d.add_argument("--mx-port", type=int, default=e("POOLMTA_MX_PORT", str(SMTP_PORT)), metavar="PORT",
                   help=f"port of the mail servers found by MX lookup (env POOLMTA_MX_PORT; default {SMTP_PORT})")
    d.add_argument("--no-delivery", action="store_true", default=_flag_default(env, "POOLMTA_NO_DELIVERY"),
                   help="accept and spool only, deliver nothing (benchmarks of the accept path; "
                        "env POOLMTA_NO_DELIVERY=1)")
    d.add_argument("--event-loop", choices=event_loop.CHOICES, default=e("POOLMTA_EVENT_LOOP", "auto"),
                   help="the workers' event loop: uvloop when installed (the 'fast' extra), or asyncio's "
                        "own (env POOLMTA_EVENT_LOOP; default auto)")
    i = p.add_argument_group("inbound listener (bounces and feedback reports)")
    i.add_argument("--inbound-listen", default=e("POOLMTA_INBOUND_LISTEN", DEFAULT_INBOUND_LISTEN),
                   metavar="HOST:PORT|none",
                   help="where the inbound listener takes bounces and feedback reports (port 25 on a real MX; "
                        f"port 0 picks one; 'none' turns it off; env POOLMTA_INBOUND_LISTEN; default "
                        f"{DEFAULT_INBOUND_LISTEN})")
    i.add_argument("--inbound-max-size", type=_size,
                   default=e("POOLMTA_INBOUND_MAX_SIZE", str(DEFAULT_INBOUND_MAX_MESSAGE_SIZE)),
                   help="largest report accepted, advertised with SIZE (env POOLMTA_INBOUND_MAX_SIZE; bytes or "
                        "K/M/G; default 10M)")
    i.add_argument("--inbound-max-connections", type=int,
                   default=e("POOLMTA_INBOUND_MAX_CONNECTIONS", str(DEFAULT_INBOUND_MAX_CONNECTIONS)), metavar="N",
                   help="concurrent inbound sessions for the whole server; more get 421 (env "
                        f"POOLMTA_INBOUND_MAX_CONNECTIONS; default {DEFAULT_INBOUND_MAX_CONNECTIONS})")
    i.add_argument("--fbl-address", action="append", type=argument_type(parse_fbl_address), default=None,
                   metavar="ADDRESS",
                   help="an address registered with a provider's feedback loop; repeatable; fbl@, abuse@ and "
                        "postmaster@ each bounce domain are always taken (env POOLMTA_FBL_ADDRESS, "
                        "comma-separated)")
    c = p.add_argument_group("connection limits (each counted across all workers)")
    c.add_argument("--max-connections", type=int, default=e("POOLMTA_MAX_CONNECTIONS", str(DEFAULT_MAX_CONNECTIONS)),
                   help="open SMTP Bridge connections for the whole server; more get 421 "
                        f"(env POOLMTA_MAX_CONNECTIONS; default {DEFAULT_MAX_CONNECTIONS})")
    c.add_argument("--max-connections-per-address", type=int,
                   default=e("POOLMTA_MAX_CONNECTIONS_PER_ADDRESS", str(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)),
                   help="open connections from one client address, to the Bridge and to the inbound listener "
                        "(each counted on its own); more get 421 (env POOLMTA_MAX_CONNECTIONS_PER_ADDRESS; "
                        f"default {DEFAULT_MAX_CONNECTIONS_PER_ADDRESS})")
    c.add_argument("--connection-cap-exempt", type=_networks, default=e("POOLMTA_CONNECTION_CAP_EXEMPT", "none"),
                   metavar="CIDR,...", help="client networks the connection caps never count, or 'none' "
                   "(env POOLMTA_CONNECTION_CAP_EXEMPT; default none: loopback is counted too)")
    _add_duration(c, env, "--pre-auth-timeout", "POOLMTA_PRE_AUTH_TIMEOUT", DEFAULT_PRE_AUTH_TIMEOUT,
                  "idle time a Bridge session may spend before AUTH (trusted networks excepted); then 421")
    p.add_argument("--log-level", choices=logs.LEVELS, default=e("POOLMTA_LOG_LEVEL", "info"),
                   help="env POOLMTA_LOG_LEVEL; default info")
    p.add_argument("--log-format", choices=logs.FORMATS, default=e("POOLMTA_LOG_FORMAT", "text"),
                   help="text, or json: one object per line with ts, level, logger, msg and the event's fields "
                        "(env POOLMTA_LOG_FORMAT; default text)")
    p.add_argument("--metrics-listen", default=e("POOLMTA_METRICS_LISTEN", DEFAULT_DATAPLANE_METRICS_LISTEN),
                   metavar="HOST:PORT|none",
                   help="where the workers' Prometheus metrics are served, merged (port 0 picks one; 'none' "
                        f"turns it off; env POOLMTA_METRICS_LISTEN; default {DEFAULT_DATAPLANE_METRICS_LISTEN})")
    h = p.add_argument_group("REST Bridge and health endpoints")
    h.add_argument("--http-listen", default=e("POOLMTA_HTTP_LISTEN", DEFAULT_HTTP_LISTEN), metavar="HOST:PORT|none",
                   help="REST Bridge (POST /v1/messages, /openapi.json), /healthz and /readyz, on every worker "
                        f"(port 0 picks one; 'none' turns it off; env POOLMTA_HTTP_LISTEN; default "
                        f"{DEFAULT_HTTP_LISTEN})")
    h.add_argument("--min-free-disk", type=_size, default=e("POOLMTA_MIN_FREE_DISK", str(DEFAULT_MIN_FREE_DISK)),
                   help="free disk under the spool below which /readyz answers 503 (env POOLMTA_MIN_FREE_DISK; "
                        "bytes or K/M/G; default 256M)")
    p.set_defaults(env_route=e("POOLMTA_ROUTE"), env_fbl=e("POOLMTA_FBL_ADDRESS"))
    return p


def _inbound_config(args: argparse.Namespace) -> InboundConfig:
    """The inbound listener's settings; ValueError naming a bad one."""
    fbl = args.fbl_address
    if fbl is None:
        fbl = [parse_fbl_address(a) for a in re.split(r"[,\s]+", args.env_fbl or "") if a]
    enabled = args.inbound_listen.strip().lower() not in ("none", "off")
    host, port = parse_listen(args.inbound_listen) if enabled else ("127.0.0.1", 0)
    return InboundConfig(enabled=enabled, host=host, port=port, max_message_size=args.inbound_max_size,
                         fbl_addresses=tuple(dict.fromkeys(fbl)), max_connections=int(args.inbound_max_connections))


def _metrics_listen(text: str) -> tuple[str, int] | None:
    """--metrics-listen: (host, port), or None for 'none'; ValueError naming a bad one."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise ValueError(f"--metrics-listen: {exc} (or 'none')") from None


def _http_config(args: argparse.Namespace) -> HttpConfig:
    """The REST Bridge's settings; ValueError naming a bad one."""
    enabled = args.http_listen.strip().lower() not in ("none", "off")
    host, port = parse_listen(args.http_listen) if enabled else ("127.0.0.1", 0)
    return HttpConfig(enabled=enabled, host=host, port=port, min_free_disk=args.min_free_disk)


def build_config(args: argparse.Namespace, redis_url: str) -> DataplaneConfig:
    host, port = parse_listen(args.smtp_listen)
    return DataplaneConfig(
        server_id=int(args.server_id),
        data_dir=args.data_dir,
        redis_url=redis_url,
        smtp_host=host,
        smtp_port=port,
        workers=int(args.workers) if args.workers is not None else (os.cpu_count() or 1),
        hostname=args.hostname or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        allow_insecure_auth=args.allow_insecure_auth,
        insecure_auth_networks=args.insecure_auth_networks,
        max_message_size=args.max_message_size,
        max_recipients=args.max_recipients,
        max_line_length=args.max_line_length,
        stats_journal_max_bytes=args.stats_journal_max_bytes,
        auth_throttle=AuthThrottleConfig(
            delay_after=args.auth_delay_after,
            block_after=args.auth_block_after,
            window=args.auth_fail_window,
        ),
        delivery=DeliveryConfig(
            enabled=not args.no_delivery,
            routes=tuple(args.route if args.route is not None else _routes_from_env(args.env_route)),
            smarthost=args.smarthost,
            retry_schedule=args.retry_schedule,
            queue_lifetime=args.queue_lifetime,
            max_conn_per_ip=int(args.max_conn_per_ip),
            max_conn_per_destination=int(args.max_conn_per_destination),
            event_retention=args.event_retention,
            events_max=int(args.events_max),
            dns_server=args.dns_server,
            mx_port=int(args.mx_port),
            payload_memory=args.delivery_payload_memory,
        ),
        inbound=_inbound_config(args),
        max_connections=int(args.max_connections),
        max_connections_per_address=int(args.max_connections_per_address),
        pre_auth_timeout=args.pre_auth_timeout,
        connection_cap_exempt=args.connection_cap_exempt,
        metrics_listen=_metrics_listen(args.metrics_listen),
        http=_http_config(args),
        event_loop=event_loop.resolve(args.event_loop),
    )


def _join_embedded_redis(data_dir: Path) -> str | None:
    """The URL of the data directory's embedded Redis when it answers (`poolmta up`,
    `control` or `dataplane` runs it), else None: the data plane starts no Redis itself."""
    url = embedded_redis_url(data_dir)
    return url if redis_answers(url) else None


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if args.server_id is None:
        parser.error("--server-id (or POOLMTA_SERVER_ID) is required")
    if args.data_dir is None:
        args.data_dir = default_data_dir(env)
    args.data_dir = args.data_dir.expanduser().absolute()
    logs.configure(args.log_level, "supervisor", args.log_format)

    from .supervisor import StartError, Supervisor
    from .tls import ensure_self_signed, server_context

    try:
        # Validate everything that does not need Redis first: a typo fails fast.
        config = build_config(args, redis_url=args.redis_url or "redis://placeholder")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        file_modes.private_dir(args.data_dir)
        spool.lock(config.spool_dir)  # its descriptor stays open, and the lock held, until exit
        report = spool.recover(config.spool_dir, owners=config.workers)
    except spool.SpoolLocked as exc:
        print(f"error: {exc} (is this MTA server's data plane already running?)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot prepare the spool {config.spool_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log.info("spool %s: %d message(s) queued (%d bytes), %d partial write(s) removed, %d quarantined in corrupt/, "
             "%d adopted by their owner", config.spool_dir, report.queued, report.queued_bytes,
             report.removed_partial, len(report.quarantined), report.adopted)
    try:
        if config.tls_cert is None:
            cert, key = ensure_self_signed(config.tls_dir, config.hostname or socket.getfqdn())
        else:
            cert, key = config.tls_cert, config.tls_key
        server_context(cert, key)  # fail here, clearly, rather than in every worker
    except (OSError, ssl.SSLError) as exc:
        print(f"error: cannot load the STARTTLS certificate and key: {exc}", file=sys.stderr)
        return 1
    redis_url = args.redis_cluster or args.redis_url or _join_embedded_redis(args.data_dir)
    if redis_url is None:
        print(f"error: no Redis to use: the embedded Redis of {args.data_dir} does not answer "
              f"({embedded_redis_url(args.data_dir)}). Start `poolmta up` or `poolmta control` with this data "
              "directory, run the data plane as `poolmta dataplane` (which starts that Redis), "
              "or pass --redis-url.", file=sys.stderr)
        return 1
    try:
        check_redis_url(redis_url)
    except RedisUrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config = dataclasses.replace(config, redis_url=redis_url, tls_cert=cert, tls_key=key)
    try:
        return Supervisor(config, log_level=args.log_level, log_format=args.log_format).run()
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
