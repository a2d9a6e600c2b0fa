"""`python -m dataplane.reports parse FILE... [--json]`: what the parser makes of
saved messages (the lead exposes it as `poolmta report parse`).

Without --json: a table, one row per recipient (or per file when it has none).
With --json: one JSON document, a list of `{"file": ..., **to_json(report)}`.
Exit status 0 when every file was read (unknown reports included), 2 when a file
could not be read (named on stderr; the others are still printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from rich import box
from rich.console import Console
from rich.table import Table

from .limits import MAX_PARSED_BYTES
from .parser import parse_report
from .results import Report, to_json

EXIT_OK = 0
EXIT_UNREADABLE = 2
# Wide enough that a piped table is not folded at 80 columns.
PIPE_WIDTH = 200
_DIAGNOSTIC_SHOWN = 70


def read_prefix(name: str, stdin: IO[bytes]) -> bytes:
    """The first MAX_PARSED_BYTES + 1 bytes of file `name` ("-" is standard input):
    one byte past the cap lets the parser note that the file was longer."""
    if name == "-":
        return stdin.read(MAX_PARSED_BYTES + 1)
    with Path(name).open("rb") as f:
        return f.read(MAX_PARSED_BYTES + 1)


def _rows(name: str, report: Report) -> list[tuple[str, ...]]:
    if report.recipients:
        return [
            (name, report.kind, r.address, r.status or "-", r.action, "yes" if r.permanent else "no",
             r.diagnostic[:_DIAGNOSTIC_SHOWN])
            for r in report.recipients
        ]
    if report.feedback is not None:
        fb = report.feedback
        who = ", ".join(fb.original_rcpt_to) or report.returned_header("to") or "-"
        return [(name, report.kind, who, "-", f"complaint: {fb.feedback_type or '?'}", "-", fb.source_ip)]
    return [(name, report.kind, "-", "-", "-", "-", (report.problem or "")[:_DIAGNOSTIC_SHOWN])]


def _table(results: list[tuple[str, Report]]) -> Table:
    table = Table(
        "file", "kind", "recipient", "status", "action", "permanent", "diagnostic",
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
    )
    for name, report in results:
        for row in _rows(name, report):
            table.add_row(*row)
    return table


def parse_command(files: Sequence[str], as_json: bool, out: IO[str], err: IO[str], stdin: IO[bytes]) -> int:
    """Parse each file and print the results to `out`; unreadable files are named on
    `err`. Returns EXIT_OK, or EXIT_UNREADABLE when any file could not be read."""
    results: list[tuple[str, Report]] = []
    status = EXIT_OK
    for name in files:
        try:
            data = read_prefix(name, stdin)
        except OSError as exc:
            err.write(f"cannot read {name}: {exc.strerror or exc}\n")
            status = EXIT_UNREADABLE
            continue
        results.append((name, parse_report(data)))
    if as_json:
        json.dump([{"file": name, **to_json(report)} for name, report in results], out, indent=2)
        out.write("\n")
    elif results:
        width = None if getattr(out, "isatty", lambda: False)() else PIPE_WIDTH
        Console(file=out, width=width, highlight=False).print(_table(results))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m dataplane.reports`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dataplane.reports", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    parse = commands.add_parser("parse", help="parse saved bounce / complaint messages")
    parse.add_argument("files", nargs="+", metavar="FILE", help='message files ("-" reads standard input)')
    parse.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    return parse_command(args.files, args.json, sys.stdout, sys.stderr, sys.stdin.buffer)
