"""A spool record: one accepted message, its envelope, decisions and state.

The metadata below is what a journal `M` frame carries (`journal`). The record
file format of spools written before the journal (`queue/<id>.msg`, still read
at start-up to carry such messages into the journal), big-endian integers:

    offset 0         8 bytes   magic b"PMTASPL1" (format version 1)
    8                4 bytes   M, length of the metadata
    12               M bytes   metadata, a msgpack map (SpoolRecord fields below)
    12+M             8 bytes   B, length of the message
    20+M             B bytes   the stamped message: the client's DATA after
                               dot-unstuffing, with the Received trace header and the
                               injected headers at the top; exactly what delivery sends
    20+M+B           4 bytes   CRC-32 (zlib) of bytes 0 .. 20+M+B

Metadata keys: schema (1), id, received_ms, server_id, snapshot_version, worker,
client_address, client_helo, tls, auth ("auth" | "trusted"), bridge_id,
bridge_username, user_id, smtp_id, pool (internal name), ip (chosen source
address), ip_hostname (its HELO name), feed_type, zone, mail_from, rcpt_tos,
mail_options, smtputf8, attempts (list of maps appended by the delivery engine,
one per recipient per attempt: at_ms, rcpt, outcome ("delivered" | "bounced" |
"deferred"), code, text (the reply), ip (the source IP used), mx (the server
that answered, "" if none), attempt (1, 2, ... for that recipient), and on a
bounce the sender is to hear about, dsn: "owed" until the DSN is in the spool,
then its message id; empty at acceptance). A recipient with a delivered or
bounced entry is final.

Added since (a record without them reads as shown): dsn_ret ("" | "FULL" |
"HDRS") and dsn_envid (xtext-decoded; "" = none), the RFC 3461 MAIL parameters;
rcpt_options (per recipient, in the order of rcpt_tos, a map with "notify", e.g.
"FAILURE,DELAY" or "NEVER", and "orcpt", [addr-type, address], each only when
given; () = none for any); send_dsns (the Bridge's switch at acceptance; true);
bounce_domain (the domain of the message's VERP return paths; "" = decided at
delivery); dsn_of (for a DSN poolmta sends to a sender: the id of the message it
reports on; "" for a sender's own mail); dkim (how acceptance signed it: "d=D s=S",
two such joined by "; " with a feedback signature, or "unsigned: no key for D";
"" = accepted before signing existed, and DSNs); held (true while an operator holds the
message: delivery attempts none until it is released; false).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path

import msgpack

MAGIC = b"PMTASPL1"
SCHEMA = 1

_META_LEN = struct.Struct(">I")
_BODY_LEN = struct.Struct(">Q")
_CRC = struct.Struct(">I")
_HEAD = len(MAGIC) + _META_LEN.size


class SpoolError(Exception):
    """Base of spool errors."""


class SpoolCorrupt(SpoolError):
    """Bytes that are not a complete, intact spool record."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One accepted message: its envelope, routing decision and stamped bytes."""

    id: str
    received_ms: int
    server_id: int
    snapshot_version: int
    worker: str
    client_address: str
    client_helo: str
    tls: bool
    auth: str  # "auth" (SMTP AUTH) | "trusted" (bound by client network)
    bridge_id: int
    bridge_username: str
    user_id: int
    smtp_id: int
    pool: str  # internal name, as stamped in x-virtual-mta
    ip: str
    ip_hostname: str
    feed_type: str
    zone: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    smtputf8: bool
    message: bytes = field(repr=False)
    attempts: tuple[dict, ...] = ()
    dsn_ret: str = ""  # RFC 3461 4.3 RET: "" (not given), "FULL" or "HDRS"
    dsn_envid: str = ""  # RFC 3461 4.4 ENVID, xtext-decoded; "" = not given
    rcpt_options: tuple[dict, ...] = ()  # per recipient: {"notify": str, "orcpt": [type, address]}
    send_dsns: bool = True  # the Bridge's DSN switch when the message was accepted
    bounce_domain: str = ""  # of its VERP return paths; "" = decided at delivery
    dsn_of: str = ""  # a DSN to a sender: the id of the message it reports on
    dkim: str = ""  # how it was signed: "d=example.com s=sel" or "unsigned: ..." ("" = before DKIM)
    held: bool = False  # put on hold by the operator (queue control): not delivered until released


_META_FIELDS = tuple(f.name for f in fields(SpoolRecord) if f.name != "message")

# An attempt entry's "dsn" while the DSN its bounce calls for is not in the spool yet.
DSN_OWED = "owed"


def owes_dsn(attempts) -> bool:
    """True when an attempt entry still owes its sender a DSN (see DSN_OWED)."""
    return any(entry.get("dsn") == DSN_OWED for entry in attempts)


def encode_meta(record: SpoolRecord) -> bytes:
    """The record's metadata (every field but the message) as msgpack."""
    meta = {name: getattr(record, name) for name in _META_FIELDS}  # not asdict: no deep copies
    meta["schema"] = SCHEMA
    return msgpack.packb(meta, use_bin_type=True)


def decode_meta(packed: bytes | memoryview, message: bytes) -> SpoolRecord:
    """The record of msgpack metadata `packed` and its message; SpoolCorrupt if malformed."""
    try:
        meta = msgpack.unpackb(packed, raw=False)
        if meta.pop("schema") != SCHEMA:
            raise SpoolCorrupt("record schema is not supported")
        meta["rcpt_tos"] = tuple(meta["rcpt_tos"])
        meta["mail_options"] = tuple(meta["mail_options"])
        meta["attempts"] = tuple(meta["attempts"])
        if "rcpt_options" in meta:
            meta["rcpt_options"] = tuple(meta["rcpt_options"])
        return SpoolRecord(message=message, **meta)
    except SpoolCorrupt:
        raise
    except Exception as exc:  # msgpack and the dataclass raise several unrelated types
        raise SpoolCorrupt(f"record metadata is malformed: {exc!r}") from None


def encode_record(record: SpoolRecord) -> list[bytes]:
    """The record's file content (the one-file-per-message format) as a list of byte strings."""
    message = record.message
    packed = encode_meta(record)
    head = MAGIC + _META_LEN.pack(len(packed))
    body_len = _BODY_LEN.pack(len(message))
    crc = zlib.crc32(head)
    crc = zlib.crc32(packed, crc)
    crc = zlib.crc32(body_len, crc)
    crc = zlib.crc32(message, crc)
    return [head, packed, body_len, message, _CRC.pack(crc)]


def decode_record(data: bytes) -> SpoolRecord:
    """Parse a record file's bytes; SpoolCorrupt when truncated, damaged or unknown."""
    view = memoryview(data)
    if len(view) < _HEAD or bytes(view[: len(MAGIC)]) != MAGIC:
        raise SpoolCorrupt("not a poolmta spool record (bad magic)")
    (meta_len,) = _META_LEN.unpack_from(view, len(MAGIC))
    body_at = _HEAD + meta_len + _BODY_LEN.size
    if len(view) < body_at:
        raise SpoolCorrupt("record truncated in its metadata")
    (body_len,) = _BODY_LEN.unpack_from(view, _HEAD + meta_len)
    end = body_at + body_len
    if len(view) != end + _CRC.size:
        raise SpoolCorrupt(f"record is {len(view)} bytes, its lengths say {end + _CRC.size}")
    (crc,) = _CRC.unpack_from(view, end)
    if zlib.crc32(view[:end]) != crc:
        raise SpoolCorrupt("record checksum mismatch")
    return decode_meta(view[_HEAD : _HEAD + meta_len], bytes(view[body_at:end]))


def read_record(path: Path) -> SpoolRecord:
    """Read and verify one record file."""
    return decode_record(Path(path).read_bytes())


def looks_complete(path: Path) -> bool:
    """Cheap start-up check: magic and length fields agree with the file size.

    A full checksum check reads every byte; the delivery engine does it when it
    reads the record. A record that got into `queue/` was fsynced before its
    rename, so this catches only damage from outside.
    """
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        if len(head) < _HEAD or head[: len(MAGIC)] != MAGIC:
            return False
        (meta_len,) = _META_LEN.unpack_from(head, len(MAGIC))
        f.seek(_HEAD + meta_len)
        raw = f.read(_BODY_LEN.size)
        if len(raw) < _BODY_LEN.size:
            return False
        (body_len,) = _BODY_LEN.unpack(raw)
        size = os.fstat(f.fileno()).st_size
    return size == _HEAD + meta_len + _BODY_LEN.size + body_len + _CRC.size
