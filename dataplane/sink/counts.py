"""What the sink has seen: the counts, the counts file other processes read, and
the report it prints.

``--counts-file PATH``: one JSON object, replaced atomically (readers see the old
    file or the new, never half) at most every 200 ms when something changed, at
    start and on exit. ``seq`` increases by one with every event the counts record
    (a connection, a RCPT that matched a rule, a message held by a ``hang`` rule, an
    accepted message), and the file shows every event up to its ``seq``: a reader
    waits for the figure it expects, or for the ``seq`` of an accepted message in
    the ``--log``, never for the file to stop changing. Then ``accepted``
    (messages), ``accepted_rcpts``, ``notices`` (of the accepted messages, those
    from the null reverse-path ``<>``: DSNs and other notifications), ``rejected``
    (5xx RCPT replies), ``deferred`` (4xx RCPT replies), ``hung`` (messages held
    by a ``hang`` rule),
    ``connections``, ``bytes``, ``by_peer`` ({peer: accepted messages}), ``peers``
    ({peer: {connections, accepted, rejected, deferred, hung, notices}}), ``rcpt_attempts``
    ({recipient, lower-cased: RCPTs that matched a rule}), ``listen``, ``pid``,
    ``updated_at`` and ``final`` (true in the copy written on exit).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .rules import Rule

log = logging.getLogger("poolmta.sink")

# How often the counts file is rewritten (when something changed).
COUNTS_INTERVAL = 0.2
SHOW_LAST_MAX_BYTES = 16 * 1024
SHOW_RCPT_ATTEMPTS = 20
# Console width when stdout is not a terminal (as the `poolmta` CLI's tables).
PIPE_WIDTH = 200


class PeerCounts:
    """The counts of one client address."""

    __slots__ = ("connections", "accepted", "rejected", "deferred", "hung", "notices")  # the table's column order

    def __init__(self) -> None:
        self.connections = self.accepted = self.rejected = self.deferred = self.hung = self.notices = 0

    def as_json(self) -> dict[str, int]:
        """{field: count} in the order of `__slots__`."""
        return {name: getattr(self, name) for name in self.__slots__}


class SinkCounts:
    """What the sink has seen. Each `record_*` method is one event: it adds one to
    `seq`, so `seq` names a point in the sink's history the counts file can show."""

    def __init__(self) -> None:
        self.seq = 0
        self.accepted = 0
        self.accepted_rcpts = 0
        self.notices = 0
        self.rejected = 0
        self.deferred = 0
        self.hung = 0
        self.connections = 0
        self.bytes = 0
        self.peers: dict[str, PeerCounts] = {}
        # Only recipients that matched a rule: bounded even in a benchmark.
        self.rcpt_attempts: dict[str, int] = {}

    def record_connection(self, peer: str) -> PeerCounts:
        """A client connected from `peer`; the counts of that address, for the session."""
        counts = self.peers.get(peer)
        if counts is None:
            counts = self.peers[peer] = PeerCounts()
        counts.connections += 1
        self.connections += 1
        self.seq += 1
        return counts

    def record_rule_match(self, peer: PeerCounts, address: str, rule: Rule) -> str | None:
        """A RCPT of `address` matched `rule`: counts the attempt and returns the
        rule's reply to it, a 4xx/5xx (counted as deferred/rejected) or None (accept)."""
        key = address.lower()
        attempt = self.rcpt_attempts[key] = self.rcpt_attempts.get(key, 0) + 1
        reply = rule.rcpt_reply(attempt)
        if reply is not None:
            if reply[0] == "5":
                self.rejected += 1
                peer.rejected += 1
            else:
                self.deferred += 1
                peer.deferred += 1
        self.seq += 1
        return reply

    def record_hung(self, peer: PeerCounts) -> None:
        """A message is held without a reply by a ``hang`` rule."""
        self.hung += 1
        peer.hung += 1
        self.seq += 1

    def record_accepted(self, peer: PeerCounts, rcpts: int, size: int, notice: bool = False) -> None:
        """A message of `size` bytes for `rcpts` recipients was accepted (number
        `accepted`, at `seq`, once this returns); `notice`: from the null reverse-path."""
        self.accepted += 1
        self.accepted_rcpts += rcpts
        self.bytes += size
        peer.accepted += 1
        if notice:
            self.notices += 1
            peer.notices += 1
        self.seq += 1

    def as_json(self) -> dict[str, Any]:
        """The counts as the counts file holds them (without the process fields)."""
        return {
            "seq": self.seq,
            "accepted": self.accepted,
            "accepted_rcpts": self.accepted_rcpts,
            "notices": self.notices,
            "rejected": self.rejected,
            "deferred": self.deferred,
            "hung": self.hung,
            "connections": self.connections,
            "bytes": self.bytes,
            "by_peer": {address: peer.accepted for address, peer in self.peers.items() if peer.accepted},
            "peers": {address: peer.as_json() for address, peer in self.peers.items()},
            "rcpt_attempts": dict(self.rcpt_attempts),
        }


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` so readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


class CountsFile:
    """The ``--counts-file`` (see the module docstring) of one sink process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written_seq = -1

    def write(self, counts: SinkCounts, listen: list[str], final: bool = False) -> None:
        """Replace the file with `counts` now; a failure is logged, and retried at
        the next `write_if_changed`."""
        data = counts.as_json()
        data.update(listen=listen, pid=os.getpid(), updated_at=time.time(), final=final)
        try:
            write_json_atomic(self.path, data)
        except OSError as exc:
            log.warning("could not write %s: %s", self.path, exc)
            return
        self._written_seq = counts.seq

    def write_if_changed(self, counts: SinkCounts, listen: list[str]) -> None:
        """`write`, if an event was recorded since the last write."""
        if counts.seq != self._written_seq:
            self.write(counts, listen)


# ---------------------------------------------------------------------------
# The report (--print-counts, --print-every, SIGUSR1)
# ---------------------------------------------------------------------------


def report_console(file: TextIO | None = None) -> Console:
    """A console for the report on `file` (stdout): styled on a terminal, plain text
    on a pipe a parent reads."""
    out = file if file is not None else sys.stdout
    is_tty = hasattr(out, "isatty") and out.isatty()
    return Console(file=out, highlight=False, markup=False, emoji=False, width=None if is_tty else PIPE_WIDTH)


def _table(*columns: str) -> Table:
    """A table in the `poolmta` CLI's style, numbers (every column but the first) on the right."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column(columns[0])
    for column in columns[1:]:
        table.add_column(column, justify="right")
    return table


def print_report(console: Console, counts: SinkCounts, last: Iterable[tuple[int, str, bytes]] = ()) -> None:
    """Print the counts (a line of totals, a table per peer, the rule-matched
    recipients) and then `last`, (n, peer, bytes) of recent messages, as received."""
    console.out(
        f"sink counts at {time.strftime('%H:%M:%S')}: accepted {counts.accepted} "
        f"({counts.accepted_rcpts} rcpts, {counts.bytes} bytes; {counts.notices} from <>), rejected {counts.rejected}, "
        f"deferred {counts.deferred}, hung {counts.hung}, connections {counts.connections}"
    )
    peers = _table("peer", *PeerCounts.__slots__)
    for address, peer in sorted(counts.peers.items()):
        peers.add_row(Text(address), *(str(getattr(peer, name)) for name in PeerCounts.__slots__))
    console.print(peers)
    if counts.rcpt_attempts:
        attempts = sorted(counts.rcpt_attempts.items())
        recipients = _table("rule-matched recipient", "attempts")
        for rcpt, n in attempts[:SHOW_RCPT_ATTEMPTS]:
            recipients.add_row(Text(rcpt), str(n))
        console.print(recipients)
        if len(attempts) > SHOW_RCPT_ATTEMPTS:
            console.out(f"... and {len(attempts) - SHOW_RCPT_ATTEMPTS} more (see --counts-file)")
    for n, peer_address, content in last:
        # Written as received (rich would drop a message's control characters).
        shown = content[:SHOW_LAST_MAX_BYTES].decode("utf-8", "replace")
        lines = [f"--- message {n} from {peer_address}, {len(content)} bytes ---", shown.rstrip()]
        if len(content) > SHOW_LAST_MAX_BYTES:
            lines.append(f"--- ({len(content) - SHOW_LAST_MAX_BYTES} more bytes not shown) ---")
        console.file.write("\n".join(lines) + "\n")
    console.file.flush()
