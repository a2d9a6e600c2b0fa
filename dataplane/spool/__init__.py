"""The durable spool: each worker appends accepted messages to its own journal of
segment files, one fdatasync covering every message that arrived while the previous
one ran, before the client hears 250.

The parts, each with the specification it implements:

* `record`: a message's record (`SpoolRecord`), and the old one-file-per-message format;
* `journal`: the frames in a segment, reading one back (torn tail, damage), and the
  writer thread (group commit);
* `index`: what the frames say (live messages, where, their state), for the owner and,
  read-only, for other processes (`JournalView`);
* `worker_spool`: `Spool`, a worker's asyncio API, reclaim and compaction;
* `directory`: the layout on disk, message ids and which worker owns them, start-up
  recovery and adoption, the lock, and lookups from other processes;
* `durable`: replacing small files crash safely (used elsewhere too).

What the rest of the data plane uses is named here: `from dataplane import spool`.
"""

from .directory import (
    TEMP_SUFFIX,
    TMP_DIR,
    RecoveryReport,
    find_record,
    iter_records,
    lock,
    owner_of,
    prepare,
    queued_ids,
    record_path,
    recover,
    remove_temp_files,
    view_of,
)
from .durable import SpoolLocked
from .index import CORRUPT_DIR, QUEUE_DIR, RECORD_SUFFIX
from .journal import JOURNAL_DIR
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
from .worker_spool import Spool, SpoolWriteError

__all__ = [
    "CORRUPT_DIR",
    "DSN_OWED",
    "JOURNAL_DIR",
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
    "find_record",
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
    "view_of",
]
