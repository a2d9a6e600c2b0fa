"""The sink's configuration: `SinkConfig`, built once from the command line
(`parse_args`), the only place its flags are defined."""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from pathlib import Path

from dataplane.config import argument_type, parse_listen

from .rules import DEFAULT_RULES, Rule, parse_rule

DEFAULT_LISTEN = "127.0.0.1:2626"
# aiosmtpd's own default (DATA_SIZE_DEFAULT); advertised in EHLO SIZE.
DEFAULT_MAX_MESSAGE_SIZE = 32 * 1024 * 1024
# RFC 5321 section 4.5.3.2.7: a server should wait at least 5 minutes for a command.
DEFAULT_IDLE_TIMEOUT = 300.0


@dataclass(frozen=True)
class SinkConfig:
    """Everything one sink process needs, built once from the command line.

    listen: addresses to listen on (port 0 = any free port).
    rules: checked in order per recipient; the first match decides.
    store_dir, log_path, counts_path: see `dataplane.sink`; None = off.
    print_every: seconds between count tables on stdout; None = only on exit/SIGUSR1.
    show_last: raw messages kept in memory and printed with the counts.
    dsn: advertise DSN (RFC 3461) and take its parameters, logged as given.
    """

    listen: tuple[tuple[str, int], ...] = (parse_listen(DEFAULT_LISTEN),)
    hostname: str = "localhost"
    rules: tuple[Rule, ...] = DEFAULT_RULES
    store_dir: Path | None = None
    log_path: Path | None = None
    counts_path: Path | None = None
    print_counts: bool = False
    print_every: float | None = None
    show_last: int = 0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    dsn: bool = False

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("the sink needs at least one listen address")
        if self.print_every is not None and self.print_every <= 0:
            raise ValueError("--print-every must be a positive number of seconds")
        if self.show_last < 0:
            raise ValueError("--show-last must be 0 or more")
        if self.max_message_size < 1:
            raise ValueError("--max-message-size must be at least 1 byte")
        if self.idle_timeout <= 0:
            raise ValueError("--idle-timeout must be a positive number of seconds")


def _listen_list(value: str) -> list[tuple[str, int]]:
    return [parse_listen(part) for part in value.split(",") if part.strip()] or [parse_listen(value)]


def _seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _count(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The `poolmta sink` argument parser (its `--help` is the sink's usage)."""
    parser = argparse.ArgumentParser(
        prog="poolmta sink",
        description="A destination MTA for demos, tests and benchmarks: accepts everything, "
        "or answers per recipient by rule, and records the address each client connected from.",
        epilog="Rules: PATTERN=ACTION, PATTERN a case-insensitive glob on the local part "
        "(or the whole address if it contains @), ACTION one of 250, CODE[xN][:text] "
        "(4xx/5xx at RCPT; xN = only the first N attempts per recipient), delay:SECONDS "
        "(hold the DATA reply), hang (never answer DATA). Defaults, checked after yours: "
        + ", ".join(str(rule) for rule in DEFAULT_RULES)
        + ".",
    )
    parser.add_argument(
        "--listen",
        action="append",
        type=argument_type(_listen_list),
        metavar="HOST:PORT",
        help=f"address to listen on; repeatable or comma-separated; port 0 = any (default {DEFAULT_LISTEN})",
    )
    parser.add_argument("--hostname", help="name in the banner and EHLO reply (default: this host's name)")
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        type=argument_type(parse_rule),
        metavar="PATTERN=ACTION",
        help="answer matching recipients by rule; repeatable; checked in order, before the defaults",
    )
    parser.add_argument("--no-default-rules", action="store_true", help="drop the default rules")
    parser.add_argument("--store", type=Path, metavar="DIR", help="write each accepted message to DIR/<n>.eml")
    parser.add_argument("--log", type=Path, metavar="PATH", help="append one JSON line per accepted message")
    parser.add_argument("--counts-file", type=Path, metavar="PATH", help="keep a JSON file of counts up to date")
    parser.add_argument("--print-counts", action="store_true", help="print a table of counts on exit")
    parser.add_argument("--print-every", type=argument_type(_seconds), metavar="SECONDS",
                        help="print it periodically too")
    parser.add_argument(
        "--show-last",
        type=argument_type(_count),
        default=0,
        metavar="K",
        help="keep the last K raw messages in memory and print them with the counts",
    )
    parser.add_argument(
        "--max-message-size",
        type=argument_type(_count),
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help=f"answer 552 to larger messages (default {DEFAULT_MAX_MESSAGE_SIZE})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=argument_type(_seconds),
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close connections idle this long, hung ones included (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    parser.add_argument("--dsn", action="store_true",
                        help="advertise DSN (RFC 3461) and accept NOTIFY, ORCPT, RET and ENVID, "
                        "logging them (dsn_params in --log)")
    return parser


def parse_args(argv: list[str] | None = None) -> SinkConfig:
    """Build the SinkConfig from the command line (argparse exits 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    listen = [address for group in args.listen or [[parse_listen(DEFAULT_LISTEN)]] for address in group]
    rules = tuple(args.rule) + (() if args.no_default_rules else DEFAULT_RULES)
    try:
        return SinkConfig(
            listen=tuple(dict.fromkeys(listen)),
            # Resolved once: aiosmtpd would call socket.getfqdn() (a DNS lookup) per connection.
            hostname=args.hostname or socket.gethostname(),
            rules=rules,
            store_dir=args.store,
            log_path=args.log,
            counts_path=args.counts_file,
            print_counts=args.print_counts,
            print_every=args.print_every,
            show_last=args.show_last,
            max_message_size=args.max_message_size,
            idle_timeout=args.idle_timeout,
            dsn=args.dsn,
        )
    except ValueError as exc:
        parser.error(str(exc))
