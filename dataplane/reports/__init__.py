"""The bounce and complaint report parser: bytes in, a structured `Report` out.

    from dataplane.reports import parse_report, to_json
    report = parse_report(raw_bytes)        # never raises for bad input
    report.kind                             # "dsn" | "arf" | "nonstandard" | "unknown"
    report.failures()                       # failed/delayed RecipientStatus, .permanent
    report.feedback                         # Feedback for an ARF complaint, else None
    report.returned_header("x-virtual-mta") # attribution from the returned message

It reads RFC 3464 delivery status notifications (and RFC 6533's UTF-8 form),
RFC 5965 feedback reports, and nonstandard bounces through flufl.bounce. It
imports nothing else of the project. `python -m dataplane.reports parse FILE...`
prints what it makes of files. Bounds: see `dataplane.reports.limits`.
"""

from __future__ import annotations

from .limits import MAX_PARSED_BYTES, MAX_PARTS, MAX_RECIPIENTS
from .parser import parse_report
from .results import Feedback, RecipientStatus, Report, ReportKind, to_json

__all__ = [
    "MAX_PARSED_BYTES",
    "MAX_PARTS",
    "MAX_RECIPIENTS",
    "Feedback",
    "RecipientStatus",
    "Report",
    "ReportKind",
    "parse_report",
    "to_json",
]
