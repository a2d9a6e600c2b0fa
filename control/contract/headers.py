"""The attribution headers poolmta stamps on every message: x-virtual-mta,
x-feedtype, x-zone, x-serverid.

The data plane writes them (in this order, before a pool's custom headers), the
fast path removes client-sent copies, and the control plane refuses them as a
pool's custom headers. The names are defined once, in `_fastpath` (which imports
nothing of the project, so the definition cannot live here); this module is where
both planes take them from. Importing `_fastpath` here is cheap and pulls in
nothing of `control` or `dataplane`.
"""

from __future__ import annotations

from _fastpath import RESERVED_HEADERS

__all__ = ["STAMPED_HEADERS", "STAMPED_HEADER_NAMES"]

# As written on the wire: lower-case bytes, with each header's role as a field
# (`STAMPED_HEADERS.virtual_mta` is b"x-virtual-mta", and so on).
STAMPED_HEADERS = RESERVED_HEADERS

# The same names as str, with the same fields, for code that handles text (input
# validation, the demo reading the sink's log).
STAMPED_HEADER_NAMES = STAMPED_HEADERS._make(name.decode("ascii") for name in STAMPED_HEADERS)
