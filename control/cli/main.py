"""`poolmta`: the command line (console script `poolmta = control.cli.main:main`).

    poolmta up | control | dataplane ARGS... | sink ARGS...   run the servers
    poolmta demo [--messages N] [--keep-running]       the whole story on loopback
    poolmta account | server | pool | ip | bridge | op | stats | message | suppression | dkim ...   client commands
    poolmta whoami                                     who the token speaks for
    poolmta report parse FILE... | report unattributed   bounce and complaint reports
    poolmta verp list | rotate | prune | retire ID     the data directory's VERP signing keys

This module is the parser of every runner's options and the global settings, kept
in one place past ~450 lines so `poolmta --help` and the README's configuration
table have one source; the client commands' parsers are their own modules
(`*_commands.py`).

Global options go before or after the command: --data-dir, --redis-url, --grpc,
--token, --grpc-ca, --grpc-tls, --grpc-client-cert, --grpc-client-key, --insecure,
--json, -v. Settings are read here, once, from flags and the environment
(POOLMTA_DATA_DIR, POOLMTA_REDIS_URL, POOLMTA_GRPC, POOLMTA_TOKEN, POOLMTA_GRPC_CA,
POOLMTA_GRPC_CLIENT_CERT, POOLMTA_GRPC_CLIENT_KEY, POOLMTA_ADMIN_TOKEN) and passed down.

Exit codes: 0 success, 1 an error (a gRPC status, an unreachable control plane,
a failed operation), 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# gRPC's C core writes its own lines to stderr, past `logging` and --log-format (an
# INFO line about fork handlers each time `up` starts the data plane): only its errors,
# unless the environment asks for more. gRPC reads it once, when first imported: by the
# imports below, which come after it on purpose.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .. import grpc_tls
from ..contract.log_format import LOG_FORMATS, TEXT, formatter
from ..contract.redis_client import cluster_option
from ..contract.runtime import (
    DEFAULT_CONTROL_METRICS_LISTEN,
    DEFAULT_SMTP_LISTEN,
    default_data_dir,
)
from ..embedded_redis import DEFAULT_MAXMEMORY
from . import (
    admin_commands,
    dkim_commands,
    queue_commands,
    report_commands,
    suppression_commands,
    tenant_commands,
    top_command,
)
from .client import EXIT_USAGE, CliError, ControlClient, resolve_token
from .commands import CommandTree, Context, positive_int
from .render import Printer
from .up_options import add_dataplane_args, dataplane_args

DEFAULT_GRPC = "127.0.0.1:50051"
EXIT_INTERRUPTED = 130
SERVER_COMMANDS = ("up", "control")
# Commands whose arguments go, untouched, to another program (see _find_passthrough).
PASSTHROUGH_COMMANDS = ("dataplane", "sink", "demo", "verp")

# Global options, for finding the command word before argparse runs (see _split_passthrough).
_GLOBAL_VALUE_OPTIONS = ("--data-dir", "--redis-url", "--redis-cluster", "--grpc", "--token", "--grpc-ca", "--grpc-client-cert",
                         "--grpc-client-key")
_GLOBAL_FLAGS = ("--json", "-v", "--verbose", "--grpc-tls", "--insecure")


@dataclass(frozen=True)
class Settings:
    """The global options, resolved from flags, then environment, then defaults.

    data_dir_given / redis_url: whether the user named them (flag or environment),
    so `poolmta dataplane` forwards only what was given.
    token: --token or POOLMTA_TOKEN; admin_token: POOLMTA_ADMIN_TOKEN.
    grpc_ca / grpc_tls / grpc_client_cert / grpc_client_key / insecure: how client
    commands reach --grpc (grpc_tls.ClientTls);
    insecure also lets `up` / `control` serve plaintext gRPC off loopback.
    """

    data_dir: Path
    data_dir_given: bool
    redis_url: str | None
    grpc: str
    token: str | None
    admin_token: str | None
    json: bool
    verbose: bool
    grpc_ca: Path | None = None
    grpc_tls: bool = False
    insecure: bool = False
    grpc_client_cert: Path | None = None
    grpc_client_key: Path | None = None

    @classmethod
    def build(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
        """The settings from parsed `args`, then `environ`, then the defaults."""
        def env(name: str) -> str | None:
            return environ.get(name) or None

        def path(option: str, name: str) -> Path | None:
            given = getattr(args, option, None) or env(name)
            return Path(given).expanduser() if given else None

        data_dir = getattr(args, "data_dir", None) or env("POOLMTA_DATA_DIR")
        return cls(
            data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(environ),
            data_dir_given=bool(data_dir),
            redis_url=(getattr(args, "redis_url", None) or getattr(args, "redis_cluster", None)
                       or env("POOLMTA_REDIS_URL")),
            grpc=getattr(args, "grpc", None) or env("POOLMTA_GRPC") or DEFAULT_GRPC,
            token=getattr(args, "token", None) or env("POOLMTA_TOKEN"),
            admin_token=env("POOLMTA_ADMIN_TOKEN"),
            json=getattr(args, "json", False),
            verbose=getattr(args, "verbose", False),
            grpc_ca=path("grpc_ca", "POOLMTA_GRPC_CA"),
            grpc_tls=getattr(args, "grpc_tls", False),
            insecure=getattr(args, "insecure", False),
            grpc_client_cert=path("grpc_client_cert", "POOLMTA_GRPC_CLIENT_CERT"),
            grpc_client_key=path("grpc_client_key", "POOLMTA_GRPC_CLIENT_KEY"),
        )

    @property
    def client_tls(self) -> grpc_tls.ClientTls:
        """How client commands reach the control plane."""
        return grpc_tls.ClientTls(enabled=self.grpc_tls, ca_file=self.grpc_ca, insecure=self.insecure,
                                  cert_file=self.grpc_client_cert, key_file=self.grpc_client_key)


# -- parsing ------------------------------------------------------------------------


def listen_arg(value: str) -> str:
    """A HOST:PORT to listen on (port 0 picks a free one)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def memory_size_arg(value: str) -> int:
    """A size in bytes, or with a unit: 512mb, 2gb (1024-based, as Redis reads them)."""
    match = re.fullmatch(r"\s*(\d+)\s*(b|kb|mb|gb)?\s*", value.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 512mb or 2gb, got {value!r}")
    size = int(match.group(1)) * 1024 ** ("b kb mb gb".split().index(match.group(2) or "b"))
    if size < 1024**2:
        raise argparse.ArgumentTypeError(f"expected at least 1mb, got {value!r}")
    return size


def metrics_listen_arg(value: str) -> str | None:
    """A HOST:PORT to serve metrics on, or None for 'none'."""
    return None if value.strip().lower() in ("none", "off") else listen_arg(value)


def global_options() -> argparse.ArgumentParser:
    """The options every command takes; SUPPRESS defaults let them go before or after the
    command word without the subcommand's parser resetting what came before."""
    parser = argparse.ArgumentParser(add_help=False)
    g = parser.add_argument_group("global options (before or after the command)")
    s = argparse.SUPPRESS
    g.add_argument("--data-dir", type=Path, default=s, metavar="DIR",
                   help=f"state directory (env POOLMTA_DATA_DIR; default {default_data_dir(os.environ)})")
    redis = g.add_mutually_exclusive_group()
    redis.add_argument("--redis-url", default=s, metavar="URL",
                       help="Redis to use (env POOLMTA_REDIS_URL; redis+cluster://HOST:PORT[,HOST:PORT] for a "
                       "Redis Cluster); without one, up and control start an embedded Redis")
    redis.add_argument("--redis-cluster", type=cluster_option, default=s, metavar="HOST:PORT[,HOST:PORT]",
                       help="use the Redis Cluster these nodes belong to (the same as --redis-url "
                       "redis+cluster://HOST:PORT[,HOST:PORT])")
    g.add_argument("--grpc", default=s, metavar="HOST:PORT",
                   help=f"control plane address for client commands (env POOLMTA_GRPC; default {DEFAULT_GRPC})")
    g.add_argument("--token", default=s,
                   help="API token for client commands (env POOLMTA_TOKEN; default the admin token "
                   "in <data-dir>/admin.token)")
    g.add_argument("--grpc-ca", default=s, metavar="FILE",
                   help="verify the control plane's TLS certificate with this PEM CA (env POOLMTA_GRPC_CA; "
                   "client commands)")
    g.add_argument("--grpc-tls", action="store_true", default=s,
                   help="reach the control plane over TLS, verified with gRPC's default roots (client commands)")
    g.add_argument("--grpc-client-cert", default=s, metavar="FILE",
                   help="PEM client certificate for a control plane that asks for one (--grpc-tls-client-ca; "
                   "env POOLMTA_GRPC_CLIENT_CERT; needs --grpc-client-key)")
    g.add_argument("--grpc-client-key", default=s, metavar="FILE",
                   help="its unencrypted PEM private key (env POOLMTA_GRPC_CLIENT_KEY)")
    g.add_argument("--insecure", action="store_true", default=s,
                   help="allow gRPC without TLS off loopback: client commands send the token in clear, "
                   "up / control serve plaintext on a non-loopback --grpc-listen")
    g.add_argument("--json", action="store_true", default=s, help="machine-readable output (client commands)")
    g.add_argument("-v", "--verbose", action="store_true", default=s,
                   help="debug logging, and tracebacks for unexpected errors")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The `poolmta` parser: every command, each taking the global options."""
    common = global_options()
    parser = argparse.ArgumentParser(
        prog="poolmta", parents=[common],
        description="Dedicated-IP pools for senders: Pools, Bridges, IP rotation, per-Pool stats.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"poolmta {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("up", parents=[common], help="run everything for one MTA server on this host",
                            description="Embedded Redis (unless --redis-url), the control plane and the data "
                            "plane of one MTA server. Ctrl-C or SIGTERM stops it all.")
    p.add_argument("--grpc-listen", type=listen_arg, default=DEFAULT_GRPC, metavar="HOST:PORT",
                   help=f"control plane gRPC address (default {DEFAULT_GRPC})")
    p.add_argument("--smtp-listen", type=listen_arg, default=DEFAULT_SMTP_LISTEN, metavar="HOST:PORT",
                   help=f"SMTP bridge address (default {DEFAULT_SMTP_LISTEN})")
    p.add_argument("--http-listen", type=listen_arg, metavar="HOST:PORT",
                   help="REST bridge, /metrics and /healthz address (data plane default 127.0.0.1:8025)")
    p.add_argument("--inbound-listen", type=listen_arg, metavar="HOST:PORT",
                   help="bounce / FBL listener address (data plane default 127.0.0.1:2526)")
    p.add_argument("--server-id", type=positive_int, default=1, metavar="N", help="the MTA server this host runs "
                   "(default 1)")
    p.add_argument("--workers", type=positive_int, metavar="K", help="data-plane worker processes")
    p.add_argument("--no-dataplane", dest="dataplane", action="store_false",
                   help="run Redis and the control plane only")
    p.add_argument("--dataplane-metrics-listen", type=metrics_listen_arg, metavar="HOST:PORT|none",
                   help="the data plane's Prometheus metrics address, or 'none' (data plane default "
                   "127.0.0.1:9125)")
    add_dataplane_args(p)
    _add_trusted_prefix_args(p)
    _add_grpc_tls_args(p)
    _add_operating_args(p)

    p = commands.add_parser("control", parents=[common], help="run the control plane only",
                            description="Embedded Redis (unless --redis-url) and the control plane.")
    p.add_argument("--grpc-listen", type=listen_arg, default=DEFAULT_GRPC, metavar="HOST:PORT",
                   help=f"control plane gRPC address (default {DEFAULT_GRPC})")
    _add_trusted_prefix_args(p)
    _add_grpc_tls_args(p)
    _add_operating_args(p)

    _add_passthrough(commands, common, "dataplane", help_text="run a data plane (python -m dataplane ARGS...)",
                     description="Runs `python -m dataplane ARGS...`; every argument after `dataplane` "
                     "is passed through, after the global --data-dir / --redis-url when given. Without a "
                     "Redis URL and with no embedded Redis running for the data directory, it starts that "
                     "Redis and runs the data plane beside it.")
    _add_passthrough(commands, common, "sink", help_text="run a destination MTA for demos and benchmarks "
                     "(python -m dataplane.sink ARGS...)",
                     description="Runs `python -m dataplane.sink ARGS...` (`poolmta sink --help` lists "
                     "its options): accepts mail, or bounces / defers recipients by rule, and records "
                     "the address each client connected from.")
    _add_passthrough(commands, common, "demo", help_text="the whole story on loopback in one command",
                     description="Starts Redis, the control plane, the data plane and a sink in a "
                     "temporary directory, builds an account with three Pools, sends mail through "
                     "their Bridges and shows the per-Pool stats (`poolmta demo --help` lists its "
                     "options).")

    _add_passthrough(commands, common, "verp", help_text="the VERP signing keys of the data directory: list, "
                     "rotate, prune, retire (python -m dataplane.verp_admin ARGS...)",
                     description="Runs `python -m dataplane.verp_admin ARGS...` on the data directory's "
                     "verp.keys (`poolmta verp --help` lists its commands). Rotating never breaks mail in "
                     "flight: earlier keys keep verifying until pruned.")

    tree = CommandTree(commands, [common])
    admin_commands.add(tree)
    tenant_commands.add(tree)
    report_commands.add(tree)
    suppression_commands.add(tree)
    dkim_commands.add(tree)
    queue_commands.add(tree)
    top_command.add(tree)
    return parser


def _add_passthrough(commands, common: argparse.ArgumentParser, name: str, *, help_text: str,
                     description: str) -> None:
    """Add one of PASSTHROUGH_COMMANDS: its parser only documents it (`poolmta NAME --help`
    is the other program's), since `main` hands its arguments over before argparse sees them."""
    assert name in PASSTHROUGH_COMMANDS
    parser = commands.add_parser(name, parents=[common], help=help_text, description=description)
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")


def _version() -> str:
    try:
        return importlib.metadata.version("poolmta")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _find_passthrough(argv: Sequence[str]) -> tuple[str, list[str], list[str]] | None:
    """(command, global options, its args) when the command is one of PASSTHROUGH_COMMANDS,
    else None.

    argparse cannot hand an option-looking remainder (`--server-id 1`) to a
    subcommand, so the command word is found here, skipping global options.
    """
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _GLOBAL_VALUE_OPTIONS:
            i += 2
        elif token in _GLOBAL_FLAGS or token.partition("=")[0] in _GLOBAL_VALUE_OPTIONS:
            i += 1
        else:
            return (token, list(argv[:i]), list(argv[i + 1 :])) if token in PASSTHROUGH_COMMANDS else None
    return None


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(global options, data-plane args) when the command is `dataplane`, else None."""
    found = _find_passthrough(argv)
    return (found[1], found[2]) if found is not None and found[0] == "dataplane" else None


def _attach_values(argv: Sequence[str]) -> list[str]:
    """`--token VALUE` as `--token=VALUE` (likewise the other global options with a value).

    Tokens are URL-safe base64 and may begin with '-', which argparse would take for
    an option; the word after one of these options is always its value.
    """
    out: list[str] = []
    words = iter(argv)
    for word in words:
        value = next(words, None) if word in _GLOBAL_VALUE_OPTIONS else None
        out.append(word if value is None else f"{word}={value}")
    return out


def _configure_logging(settings: Settings, command: str, log_format: str = TEXT) -> None:
    if settings.verbose:
        level = logging.DEBUG
    elif command in SERVER_COMMANDS:
        level = logging.INFO
    else:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, "%(asctime)s %(levelname)s %(name)s: %(message)s",
                                   {"role": command, "pid": os.getpid()}))
    logging.basicConfig(level=level, handlers=[handler])


# -- running ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `poolmta` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    passthrough = _find_passthrough(argv)
    try:
        args = parser.parse_args(_attach_values(passthrough[1] + [passthrough[0]] if passthrough else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    settings = Settings.build(args, os.environ)
    _configure_logging(settings, args.command, getattr(args, "log_format", TEXT))
    try:
        if passthrough is not None:
            command, _, rest = passthrough
            if command == "sink":
                return _exec_sink(rest)
            if command == "verp":
                return _exec_verp(settings, rest)
            if command == "demo":
                from .demo.main import main as demo_main

                return demo_main(rest)
            return _run_dataplane(settings, rest)
        if args.command in SERVER_COMMANDS:
            return _serve(settings, args)
        return _client_command(settings, args)
    except CliError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"error: {exc}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`poolmta pool list | head -1`): stop quietly, and
        # point stdout at /dev/null so the interpreter's final flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback only with -v
        if settings.verbose:
            traceback.print_exc()
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {exc}"
                         f"{'' if settings.verbose else ' (run with -v for the traceback)'}\n")
        return 1


def _client_command(settings: Settings, args: argparse.Namespace) -> int:
    def connect() -> ControlClient:
        token = resolve_token(settings.token, settings.admin_token, settings.data_dir)
        return ControlClient(settings.grpc, token, tls=settings.client_tls)

    ctx = Context(Printer(settings.json), connect)
    try:
        return args.handler(ctx, args)
    finally:
        ctx.close()


def _add_trusted_prefix_args(p: argparse.ArgumentParser) -> None:
    from .. import validation

    for version, default, most in ((4, validation.MIN_TRUSTED_PREFIX_V4, 32), (6, validation.MIN_TRUSTED_PREFIX_V6, 128)):
        p.add_argument(f"--min-trusted-prefix-v{version}", type=_prefix_arg(most), default=default, metavar="N",
                       help=f"widest IPv{version} network a bridge may trust, as a prefix length "
                       f"(default /{default}; lower allows wider)")


def _prefix_arg(most: int):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) > most:
            raise argparse.ArgumentTypeError(f"must be a prefix length 0-{most}")
        return int(text)
    return parse


def _add_operating_args(p: argparse.ArgumentParser) -> None:
    """--metrics-listen and --log-format of `up` and `control`."""
    p.add_argument("--metrics-listen", type=metrics_listen_arg, default=DEFAULT_CONTROL_METRICS_LISTEN,
                   metavar="HOST:PORT|none", help="the control plane's Prometheus metrics address, or 'none' "
                   f"(default {DEFAULT_CONTROL_METRICS_LISTEN})")
    p.add_argument("--log-format", choices=LOG_FORMATS, default=TEXT,
                   help="text, or json: one object per line with ts, level, logger, msg and the event's fields "
                   "(`up` passes it to the data plane; default text)")
    p.add_argument("--redis-maxmemory", type=memory_size_arg, default=DEFAULT_MAXMEMORY, metavar="SIZE",
                   help="memory cap of the embedded Redis, e.g. 512mb or 4gb (policy noeviction: past it writes "
                   f"fail and are retried, nothing is evicted; default {DEFAULT_MAXMEMORY // 1024**3}gb)")


def _add_grpc_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc-tls-cert", type=Path, metavar="FILE",
                   help="serve gRPC over TLS with this PEM certificate (chain); needs --grpc-tls-key")
    p.add_argument("--grpc-tls-key", type=Path, metavar="FILE",
                   help="the certificate's unencrypted PEM private key; needs --grpc-tls-cert")
    p.add_argument("--grpc-tls-client-ca", type=Path, metavar="FILE",
                   help="mutual TLS: accept only clients whose certificate chains to these PEM CAs "
                   "(needs --grpc-tls-cert)")


def _server_tls(settings: Settings, args: argparse.Namespace) -> grpc_tls.ServerTls | None:
    """The TLS material of `up` / `control`, after checking that plaintext would be allowed
    on --grpc-listen without it; CliError (exit 2) otherwise."""
    if (args.grpc_tls_cert is None) != (args.grpc_tls_key is None):
        raise CliError("--grpc-tls-cert and --grpc-tls-key go together: give both or neither", EXIT_USAGE)
    if args.grpc_tls_client_ca is not None and args.grpc_tls_cert is None:
        raise CliError("--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key", EXIT_USAGE)
    try:
        tls = None
        if args.grpc_tls_cert is not None:
            tls = grpc_tls.load_server_tls(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_tls_client_ca)
        grpc_tls.check_listen(args.grpc_listen, tls=tls is not None, insecure=settings.insecure)
    except (grpc_tls.TlsMaterialError, grpc_tls.InsecureGrpcError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return tls


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from .serve import ServeOptions, serve

    up = args.command == "up"
    tls = _server_tls(settings, args)
    opts = ServeOptions(
        data_dir=settings.data_dir, redis_url=settings.redis_url, grpc_listen=args.grpc_listen,
        admin_token=settings.admin_token, dataplane=up and args.dataplane,
        min_trusted_prefix_v4=args.min_trusted_prefix_v4, min_trusted_prefix_v6=args.min_trusted_prefix_v6,
        grpc_tls=tls, grpc_insecure=settings.insecure,
        metrics_listen=args.metrics_listen, log_format=args.log_format, redis_maxmemory=args.redis_maxmemory,
        **(
            dict(server_id=args.server_id, smtp_listen=args.smtp_listen, http_listen=args.http_listen,
                 inbound_listen=args.inbound_listen, workers=args.workers,
                 dataplane_metrics_listen=args.dataplane_metrics_listen,
                 dataplane_args=dataplane_args(args))
            if up else {}
        ),
    )
    return serve(opts, sys.stdout)


def _run_dataplane(settings: Settings, args: list[str]) -> int:
    from .passthrough import run_dataplane

    try:
        return run_dataplane(args, settings.data_dir, settings.data_dir_given, settings.redis_url, sys.stdout)
    except OSError as exc:
        raise CliError(f"cannot run the data plane ({sys.executable} -m dataplane): {exc.strerror}") from None


def _exec_verp(settings: Settings, args: list[str]) -> int:
    from .passthrough import exec_verp

    try:
        return exec_verp(args, settings.data_dir if settings.data_dir_given else None, settings.json)
    except OSError as exc:
        raise CliError(f"cannot run the VERP key tool ({sys.executable} -m dataplane.verp_admin): "
                       f"{exc.strerror}") from None


def _exec_sink(args: list[str]) -> int:
    from .passthrough import exec_sink

    try:
        return exec_sink(args)
    except OSError as exc:
        raise CliError(f"cannot run the sink ({sys.executable} -m dataplane.sink): {exc.strerror}") from None
