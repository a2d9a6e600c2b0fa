"""The client commands of the `poolmta` command line: what each of them works with,
and the command tree they are added to. The commands themselves:

    account  create | list | show | tier | token                          admin_commands
    server   register | list | show | bounce-domain | shared-ip {add,list,release} | republish | status
    pool     create | list | show | rename | set-default | delete | headers | feed-type | bounce-domain
             | signing (dkim_commands)
    ip       provision | list | show | assign | pause | resume | weight | release
    bridge   create | list | show | revoke | rotate | dsn | trust        tenant_commands
    op       list | show | watch
    whoami                                                              admin_commands
    stats    pool | ip
    message  status
    suppression  list | show | add | remove                             suppression_commands
    dkim     generate | import | list | show | rotate | retire | delete   dkim_commands

A handler takes the Context and the parsed arguments and returns the exit code;
failures are raised as CliError. POOL arguments take an smtp_id or a label.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

from .client import EXIT_USAGE, CliError, ControlClient
from .render import Printer, to_dict

Handler = Callable[["Context", argparse.Namespace], int]


@dataclass
class Context:
    """What a client command works with: where to print, and a client made on first use."""

    printer: Printer
    connect: Callable[[], ControlClient]
    _client: ControlClient | None = field(default=None, repr=False)

    @property
    def client(self) -> ControlClient:
        """The client to the control plane, connected on first use."""
        if self._client is None:
            self._client = self.connect()
        return self._client

    @property
    def json(self) -> bool:
        """True when the command prints JSON (--json)."""
        return self.printer.json_mode

    def close(self) -> None:
        """Close the client, if one was made."""
        if self._client is not None:
            self._client.close()
            self._client = None


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def add_bounce_domain_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """Add the `[DOMAIN | --clear]` arguments of a `bounce-domain` command; `default`
    says what --clear goes back to."""
    parser.add_argument("domain", nargs="?", metavar="DOMAIN", help="e.g. bounces.example.com (with an MX to the server)")
    parser.add_argument("--clear", action="store_true", help=f"back to {default}")


def page_size_option(parser: argparse.ArgumentParser) -> None:
    """Add `--page-size N` to a list command, which follows every page anyway."""
    parser.add_argument("--page-size", type=positive_int, metavar="N",
                        help="objects fetched per call (1-1000; default the server's, 100); every page is shown")


def requested_bounce_domain(a: argparse.Namespace) -> str | None:
    """What a `bounce-domain` command asks for: the DOMAIN given, "" for --clear, None to
    only show it; CliError (usage) when given both."""
    if a.domain and a.clear:
        raise CliError("give either a DOMAIN or --clear, not both", EXIT_USAGE)
    if a.clear:
        return ""
    return a.domain or None


def emit(ctx: Context, message, human) -> int:
    """Print `message` as JSON, or `human(message)` as a rich renderable."""
    if ctx.json:
        ctx.printer.json(message)
    else:
        ctx.printer.show(human(message))
    return 0


def emit_list(ctx: Context, reply, human) -> int:
    """`emit` for a list the CLI followed to its last page: its JSON has no next_page_token."""
    if not ctx.json:
        return emit(ctx, reply, human)
    data = to_dict(reply)
    data.pop("next_page_token", None)
    ctx.printer.json(data)
    return 0


def done(ctx: Context, reply, message: str) -> int:
    """Print `reply` as JSON, or `message` as a line for people."""
    if ctx.json:
        ctx.printer.json(reply)
    else:
        ctx.printer.line(message)
    return 0


def all_pages(ctx: Context, service: str, method: str, request, field: str) -> list:
    """Every item of a paged List RPC: `request` sent again with each next_page_token
    until an empty one, the items of its repeated `field` gathered in order."""
    found = []
    while True:
        page = ctx.client.call(service, method, request)
        found += getattr(page, field)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


class CommandTree:
    """Adds command groups and commands under the top-level subparsers `commands`;
    every parser takes the global options (`parents`)."""

    def __init__(self, commands, parents: list[argparse.ArgumentParser]):
        self._commands = commands
        self._parents = parents

    def group(self, name: str, help_text: str, within=None):
        """A group of commands (`poolmta NAME COMMAND`), within another group's
        subparsers when given; returns the subparsers its commands go in."""
        parser = (within or self._commands).add_parser(name, help=help_text, description=help_text,
                                                       parents=self._parents)
        return parser.add_subparsers(dest=f"{name.replace('-', '_')}_command", metavar="COMMAND", required=True)

    def command(self, name: str, handler: Handler, help_text: str, description: str = "") -> argparse.ArgumentParser:
        """A top-level command (`poolmta NAME`), run by `handler`; returns its parser."""
        parser = self.leaf(self._commands, name, handler, help_text)
        if description:
            parser.description = description
        return parser

    def leaf(self, subs, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        """A command of a group, run by `handler`; returns its parser, for its arguments."""
        parser = subs.add_parser(name, help=help_text, description=help_text, parents=self._parents)
        parser.set_defaults(handler=handler)
        return parser
