"""Every bound the report parser keeps, in one place.

The inbound listener hands the parser whatever a stranger sent to a bounce or
FBL address, so each piece of work has a ceiling chosen well above any real
report and far below what would hurt a worker.
"""

from __future__ import annotations

MAX_PARSED_BYTES = 2 * 1024 * 1024
"""Only the first 2 MiB of a message are parsed. A report puts its human-readable
and machine-readable parts before the returned message (RFC 6522 section 3), and
a nonstandard bounce its text before the copy, so the prefix holds all that is
needed even when the returned message is huge; the rest is ignored (noted)."""

MAX_PARTS = 256
"""MIME parts walked (depth-first). Real reports have 3 to a few dozen."""

MAX_CONTAINERS = 64
"""Multipart and message/* parts a message may declare before it is not parsed at
all: the stdlib parser nests a level of recursion per container, at a cost that
grows with the depth. A bounce has a handful (report, alternative, returned
message and its own parts)."""

MAX_DEPTH = 12
"""MIME nesting levels walked. Parts deeper than this are ignored."""

MAX_RECIPIENTS = 1000
"""Recipients returned per report (the data plane accepts at most 1000 RCPT TOs
per message by default, so one DSN never names more)."""

MAX_FIELD_BLOCKS = MAX_RECIPIENTS + 2
"""Field blocks read from a delivery-status part: the per-message block, one per
recipient (RFC 3464 section 2.1), and one more to see that the cap was passed."""

MAX_FIELDS_PER_BLOCK = 64
"""Header fields read per block (a per-recipient block defines 10, RFC 3464 2.3)."""

MAX_HEADER_FIELDS = 500
"""Header fields kept per MIME part (a real message has well under 100)."""

MAX_HEADER_VALUE = 16 * 1024
"""Longest header value kept in a MIME part. The stdlib's address and parameter
parsers, which flufl.bounce's detectors call, take about 0.05 s on 16 KiB and
grow with the length; an Exim X-Failed-Recipients of a few hundred addresses fits."""

MAX_RETURNED_HEADERS = 200
"""Header fields kept from the returned original message."""

MAX_ADDRESS = 320
"""Longest address kept: 64 local-part + '@' + 255 domain (RFC 5321 4.5.3.1),
rounded. A longer one is not an address and its recipient is dropped."""

MAX_VALUE = 998
"""Longest field value kept (the RFC 5322 2.1.1 line limit); longer values are cut."""

MAX_DIAGNOSTIC = 1000
"""Longest diagnostic text kept per recipient."""

MAX_SCANNED_TEXT = 256 * 1024
"""Characters of a nonstandard bounce's human-readable text searched for a
recipient's status code."""

MAX_DETECTOR_TEXT = 64 * 1024
"""Characters of body text handed to flufl.bounce's detectors, over all parts.
They try some 60 patterns on every line; a bounce's own text is a few KiB, and
64 KiB keeps the worst case (garbage) near a tenth of a second."""

MAX_NOTES = 16
"""Notes kept per report."""
