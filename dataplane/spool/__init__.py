"""The durable spool: one file per accepted message, fsynced before the client hears 250.

Three parts, each with the specification it implements:

* `record`: the record format (bytes in a file <-> `SpoolRecord`);
* `durable`: writing, rewriting and removing a file crash safely (group commit);
* `directory`: the layout on disk, message ids and which worker owns them,
  start-up recovery, the lock, and `Spool`, a worker's asyncio API.

What the rest of the data plane uses is named here: `from dataplane import spool`.
"""

from .directory import (
    CORRUPT_DIR,
    QUEUE_DIR,
    RECORD_SUFFIX,
    TEMP_SUFFIX,
    TMP_DIR,
    RecoveryReport,
    Spool,
    SpoolLocked,
    SpoolWriteError,
    iter_records,
    lock,
    owner_of,
    prepare,
    queued_ids,
    record_path,
    recover,
    remove_temp_files,
)
from .record import (
    DSN_OWED,
    MAGIC,
    SCHEMA,
    SpoolCorrupt,
    SpoolError,
    SpoolRecord,
    decode_record,
    encode_record,
    owes_dsn,
    read_record,
)

__all__ = [
    "CORRUPT_DIR",
    "DSN_OWED",
    "MAGIC",
    "QUEUE_DIR",
    "RECORD_SUFFIX",
    "SCHEMA",
    "TEMP_SUFFIX",
    "TMP_DIR",
    "RecoveryReport",
    "Spool",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolLocked",
    "SpoolRecord",
    "SpoolWriteError",
    "decode_record",
    "encode_record",
    "iter_records",
    "lock",
    "owes_dsn",
    "owner_of",
    "prepare",
    "queued_ids",
    "read_record",
    "record_path",
    "recover",
    "remove_temp_files",
]
