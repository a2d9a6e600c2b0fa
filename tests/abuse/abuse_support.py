"""What the abuse suite's fixtures (`tests/abuse/conftest.py`) hand to its tests:
the data plane under attack with its credentials and client addresses, and a
collector of the ERROR records in-process servers log."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from dataplane import spool
from tests.dataplane_support import Dataplane

TRUSTED_NETWORK = "127.0.200.0/24"
AUTH_USERNAME = "br-fuzz"
AUTH_SECRET = "fuzz-secret-0123456789"
TRUSTED_USERNAME = "br-trusted"
# Failed AUTHs before 421: low, so the fuzz reaches the block; no delays before it,
# so examples stay fast. Each example connects from its own address.
AUTH_BLOCK_AFTER = 4

_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ |dataplane ready ")


@dataclass
class FuzzBridge:
    """The data plane under attack, and what tests need to know about it."""

    plane: Dataplane
    redis: redis.Redis
    _addresses: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def port(self) -> int:
        return self.plane.port

    def untrusted_source(self) -> str:
        """A loopback address no earlier session used (AUTH throttling is per address)."""
        n = next(self._addresses)
        return str(ipaddress.ip_address("127.1.0.0") + n)

    def trusted_source(self) -> str:
        n = next(self._addresses)
        return str(ipaddress.ip_network(TRUSTED_NETWORK)[1 + n % 250])

    def queued_ids(self) -> set[str]:
        return set(spool.queued_ids(self.plane.spool_dir))

    def record(self, message_id: str) -> spool.SpoolRecord:
        return self.plane.record(message_id)

    def log_mark(self) -> int:
        """A position in the data plane's log, for `problems_since`."""
        with self.plane._lock:
            return len(self.plane.lines)

    def problems_since(self, mark: int) -> list[str]:
        """What the data plane logged at ERROR or CRITICAL after `mark`, and any
        traceback: one string per log record, its traceback lines included."""
        with self.plane._lock:
            lines = self.plane.lines[mark:]
        problems: list[str] = []
        collecting = False
        for line in lines:
            if _LOG_LINE.match(line):
                collecting = " ERROR " in line or " CRITICAL " in line
                if collecting:
                    problems.append(line)
            elif line.startswith("Traceback") or (collecting and problems):
                if not collecting:
                    problems.append("")
                    collecting = True
                problems[-1] += "\n" + line
        return problems


class ErrorLog(logging.Handler):
    """Collects the records of ERROR and above logged in this process."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
