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


# One page of a list command without --limit or --all; the most a call asks for otherwise.
DEFAULT_LIST_PAGE = 50
MAX_LIST_PAGE = 1000


def list_options(parser: argparse.ArgumentParser, *, server: bool = False, states: tuple[str, ...] = ()) -> None:
    """Add the paging options of a list command (`--limit N`, `--all`, `--page-size N`,
    `--page-token T`) and, where its RPC has them, the `--server` and `--state` filters."""
    parser.add_argument("--limit", type=positive_int, metavar="N", help="the first N, over as many pages as needed")
    parser.add_argument("--all", action="store_true", help="every page, to the end of the list")
    parser.add_argument("--page-size", type=positive_int, metavar="N",
                        help=f"objects per call (1-1000; default {DEFAULT_LIST_PAGE} for one page, "
                             f"{MAX_LIST_PAGE} with --limit or --all)")
    parser.add_argument("--page-token", metavar="TOKEN", help="continue where the previous page ended")
    if server:
        parser.add_argument("--server", metavar="SERVER", help="only those on this MTA server (id or hostname)")
    if states:
        parser.add_argument("--state", choices=states, help="only those in this state")


def emit_pages(ctx: Context, a: argparse.Namespace, call: tuple[str, str], request, field_name: str, human) -> int:
    """Run a list command: one page (default), the first `--limit N` or every page
    (`--all`) of the List RPC `call` (service, method), from `--page-token` on; print
    them as one reply. When more follow, the JSON object has a `next_page_token` (it
    has none at the end of the list) and the table a hint line on stderr ("more: --all
    or --page-token X")."""
    if a.limit and a.all:
        raise CliError("give either --limit N or --all, not both", EXIT_USAGE)
    request.page_token = a.page_token or ""
    wanted = a.limit or (None if a.all else (a.page_size or DEFAULT_LIST_PAGE))
    found: list = []
    while True:
        room = MAX_LIST_PAGE if wanted is None else wanted - len(found)
        # Never more than the rest of --limit: the token then points just past the last one shown.
        request.page_size = min(a.page_size or MAX_LIST_PAGE, room)
        page = ctx.client.call(*call, request)
        found += getattr(page, field_name)
        request.page_token = page.next_page_token
        if not page.next_page_token or (wanted is not None and len(found) >= wanted):
            break
    reply = type(page)()
    reply.CopyFrom(page)
    reply.ClearField(field_name)
    getattr(reply, field_name).extend(found)
    if ctx.json:
        data = to_dict(reply)
        if not reply.next_page_token:
            data.pop("next_page_token", None)
        ctx.printer.json(data)
        return 0
    emit(ctx, reply, human)
    if reply.next_page_token:
        ctx.printer.note(f"more: --all or --page-token {reply.next_page_token}")
    return 0


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


def done(ctx: Context, reply, message: str) -> int:
    """Print `reply` as JSON, or `message` as a line for people."""
    if ctx.json:
        ctx.printer.json(reply)
    else:
        ctx.printer.line(message)
    return 0


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
