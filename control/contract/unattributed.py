"""A report the inbound listener accepted that counted nothing: one it could not
attribute to a message, pool or IP of ours, or one that is no bounce or complaint
at all. The data plane keeps the newest ones in Redis
(`rediskeys.unattributed_reports_key`, newest first, `rediskeys.UNATTRIBUTED_KEPT`)
in the form encoded here; the control plane decodes them for
`poolmta report unattributed`. Nothing a listener accepted is dropped unseen.

The wire format is a compact JSON object; the report's first RAW_KEPT_BYTES are
kept, base64-encoded, so an operator can see what arrived without Redis holding
megabytes per entry. Stdlib only: both planes import this module.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

__all__ = ["RAW_KEPT_BYTES", "UnattributedError", "UnattributedReport"]

# How much of a report is kept: the headers and the human-readable part of any real
# bounce fit, and the store stays bounded (UNATTRIBUTED_KEPT entries of at most this).
RAW_KEPT_BYTES = 16 * 1024

_QUOTED = 60


class UnattributedError(ValueError):
    """Bytes that are not a kept report (not JSON, not an object, a field of the wrong kind)."""


@dataclass(frozen=True, slots=True)
class UnattributedReport:
    """One report that counted nothing, and why."""

    at_ms: int  # when it arrived, Unix time in milliseconds
    server_id: int  # the MTA server whose inbound listener took it
    reason: str  # why it counted nothing, for a person
    kind: str  # what the parser made of it: dsn | arf | nonstandard | unknown
    peer: str  # the client address it came from
    mail_from: str  # its envelope sender ("" for the null sender)
    rcpt_tos: tuple[str, ...]  # its envelope recipients
    size: int  # its size in bytes
    sha256: str  # hex digest of all its bytes
    subject: str  # its Subject header (cut), to tell entries apart
    raw: bytes  # its first RAW_KEPT_BYTES bytes

    @property
    def truncated(self) -> bool:
        """True when only the start of the report was kept."""
        return self.size > len(self.raw)

    def encode(self) -> str:
        """The entry as the compact JSON object stored in Redis."""
        return json.dumps({
            "at_ms": self.at_ms, "server_id": self.server_id, "reason": self.reason, "kind": self.kind,
            "peer": self.peer, "mail_from": self.mail_from, "rcpt_tos": list(self.rcpt_tos), "size": self.size,
            "sha256": self.sha256, "subject": self.subject,
            "raw": base64.b64encode(self.raw[:RAW_KEPT_BYTES]).decode("ascii"),
        }, separators=(",", ":"))

    @classmethod
    def decode(cls, data: bytes | str) -> UnattributedReport:
        """The entry in `data` (as `encode` writes it); a missing field takes its default
        (0, "" or empty); UnattributedError when `data` is not such an object."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise UnattributedError(f"not a kept report (not JSON): {_prefix(data)}") from exc
        if not isinstance(doc, dict):
            raise UnattributedError(f"not a kept report (not a JSON object): {_prefix(data)}")
        get = doc.get
        try:
            rcpts = get("rcpt_tos", [])
            if not isinstance(rcpts, list):
                raise TypeError("rcpt_tos is not a list")
            return cls(
                at_ms=int(get("at_ms", 0)), server_id=int(get("server_id", 0)), reason=str(get("reason", "")),
                kind=str(get("kind", "")), peer=str(get("peer", "")), mail_from=str(get("mail_from", "")),
                rcpt_tos=tuple(str(r) for r in rcpts), size=int(get("size", 0)), sha256=str(get("sha256", "")),
                subject=str(get("subject", "")), raw=base64.b64decode(str(get("raw", "")), validate=True),
            )
        except (TypeError, ValueError, OverflowError, binascii.Error) as exc:
            raise UnattributedError(f"not a kept report ({exc}): {_prefix(data)}") from exc


def _prefix(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
    return repr(text[:_QUOTED]) + ("..." if len(text) > _QUOTED else "")
