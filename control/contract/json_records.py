"""The compact JSON objects both planes keep in Redis (delivery events, suppression
entries): reading one back, and quoting refused input in an error message.

Stdlib only, like the rest of the contract.
"""

from __future__ import annotations

import json

__all__ = ["load_object", "quoted"]

# How much of a refused input an error message quotes.
QUOTED_CHARS = 60


def quoted(raw: bytes | str) -> str:
    """A short, printable prefix of refused input (error messages never echo more)."""
    text = bytes(raw).decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    return repr(text[:QUOTED_CHARS]) + ("..." if len(text) > QUOTED_CHARS else "")


def load_object(raw: bytes | str, what: str, error: type[ValueError]) -> dict:
    """The JSON object in `raw`; `error` saying "not a `what` (...)" with a prefix of
    `raw` when it is not JSON or not an object."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise error(f"not a {what} (not JSON): {quoted(raw)}") from exc
    if not isinstance(data, dict):
        raise error(f"not a {what} (not a JSON object): {quoted(raw)}")
    return data
