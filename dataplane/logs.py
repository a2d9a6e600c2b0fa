"""Logging of data-plane processes: one line per event on stderr, tagged with the
process role (supervisor or worker N) and pid."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("debug", "info", "warning", "error")


class _DropAiosmtpdNoise(logging.Filter):
    """aiosmtpd 1.4 logs a deprecation warning on every successful AUTH
    ("Session.login_data is deprecated"); it says nothing about our sessions."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


def configure(level: str, role: str) -> None:
    """Route poolmta's and aiosmtpd's logs to stderr at `level` (aiosmtpd's per-command
    INFO lines only at debug)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s dataplane[{role} pid {os.getpid()}] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    mail = logging.getLogger("mail.log")
    mail.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    mail.addFilter(_DropAiosmtpdNoise())
