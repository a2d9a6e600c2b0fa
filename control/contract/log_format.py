"""How both planes write their logs: `text` (for people, the default) or `json` (one
object per line, for log shippers), chosen with `--log-format`.

A JSON line holds `ts` (RFC 3339, UTC, milliseconds), `level` (lower case),
`logger`, `msg` (the formatted message), the fields the process adds to every line
(`process_fields`: the data plane's role and pid), the structured fields a call
site passes with `extra=` (a delivery outcome's `message_id`, `pool`,
`source_ip`, ...), and `exc` with the traceback when there is one:

    {"ts": "2026-11-30T12:01:02.345Z", "level": "info", "logger": "poolmta.dataplane.delivery",
     "msg": "01a2... domain=example.net ... delivered: 250 2.0.0 Ok", "role": "w0", "pid": 4242,
     "message_id": "01a2...", "bridge_id": 1, "pool": "promo-3-1-pool-7", "source_ip": "127.0.0.2",
     "rcpt_domain": "example.net", "outcome": "delivered", "reply": "250 2.0.0 Ok", "attempt": 1}

Stdlib only, like the rest of the contract.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "formatter"]

TEXT = "text"
JSON = "json"
LOG_FORMATS = (TEXT, JSON)

# What every LogRecord carries: anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _jsonable(value: Any) -> Any:
    """`value` if json can write it as it is, else its str() (an exception, a Path)."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring); `fields` go on every line."""

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON: never a raw newline, whatever the message holds."""
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._fields,
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in line:
                line[name] = _jsonable(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str, text_format: str, fields: Mapping[str, Any] | None = None) -> logging.Formatter:
    """The formatter of `log_format` (one of LOG_FORMATS): `text_format` as a
    logging.Formatter format string, or a JsonFormatter with `fields` on every line."""
    if log_format == JSON:
        return JsonFormatter(fields)
    if log_format != TEXT:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    return logging.Formatter(text_format)
