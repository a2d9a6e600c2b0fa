"""Logging of data-plane processes: one line per event on stderr, tagged with the
process role (supervisor or worker N) and pid; as text for people (the default) or
one JSON object per line (`--log-format json`, `control.contract.log_format`)."""

from __future__ import annotations

import logging
import os
import sys

from control.contract.log_format import LOG_FORMATS, TEXT, formatter

__all__ = ["FORMATS", "LEVELS", "configure"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = LOG_FORMATS


class _DropAiosmtpdNoise(logging.Filter):
    """aiosmtpd 1.4 logs a deprecation warning on every successful AUTH
    ("Session.login_data is deprecated"); it says nothing about our sessions."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


def configure(level: str, role: str, log_format: str = TEXT) -> None:
    """Route poolmta's and aiosmtpd's logs to stderr at `level` (aiosmtpd's per-command
    INFO lines only at debug), as `log_format` (one of FORMATS) says."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(
        log_format, f"%(asctime)s %(levelname)s dataplane[{role} pid {os.getpid()}] %(name)s: %(message)s",
        {"role": role, "pid": os.getpid()},
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    mail = logging.getLogger("mail.log")
    mail.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    mail.addFilter(_DropAiosmtpdNoise())
