"""The `report` commands of the `poolmta` command line: bounce and complaint reports.

    report parse FILE... [--json]     what the report parser makes of saved messages
                                      (runs `python -m dataplane.reports parse`)
    report unattributed [--server S]  the reports the inbound listeners accepted but
                                      could not attribute (admin token)
"""

from __future__ import annotations

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from . import names, render
from .client import CliError
from .commands import CommandTree, Context, emit_pages, list_options


def _report_parse(ctx: Context, a) -> int:
    from .passthrough import exec_report_parser

    try:
        return exec_report_parser(a.files, ctx.json)
    except OSError as exc:
        raise CliError(f"cannot run the report parser: {exc.strerror}") from None


def _report_unattributed(ctx: Context, a) -> int:
    request = pb.ListUnattributedReportsRequest(server_id=names.resolve_optional(ctx.client, names.SERVER, a.server))
    return emit_pages(ctx, a, ("servers", "ListUnattributedReports"), request, "reports", render.unattributed_reports)


def add(tree: CommandTree) -> None:
    """Add the `report` group."""
    subs = tree.group("report", "bounce and complaint reports")
    p = tree.leaf(subs, "parse", _report_parse,
                  "parse saved bounce / complaint messages (DSN, ARF, nonstandard): kind, recipients, "
                  "status, permanent, diagnostic")
    p.add_argument("files", nargs="+", metavar="FILE", help='message files ("-" reads standard input)')
    p = tree.leaf(subs, "unattributed", _report_unattributed,
                  "reports the inbound listeners accepted but could not attribute, newest first (admin token)")
    list_options(p, server=True)
