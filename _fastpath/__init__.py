"""The per-message hot path: source-IP rotation, header injection and DKIM
canonicalisation.

Each routine is a Cython module with a pure-Python twin of identical behaviour
(`_rotation_c` / `_rotation_py`, `_headers_c` / `_headers_py`, `_dkim_c` /
`_dkim_py`). This module picks
one pair: the compiled one unless `POOLMTA_NO_EXTENSIONS=1` (the same switch that
skips the Cython build) or the compiled modules fail to import, in which case the
twins serve and a RuntimeWarning says why. `IMPLEMENTATION` is "c" or "py".

`RESERVED_HEADERS` names the attribution headers poolmta stamps (defined in
`_stamped`, used by both twins): the one definition the planes share, through
`control.contract.headers`.
"""

from __future__ import annotations

import os
import warnings

from ._errors import MAX_WEIGHT, NoUsableIp
from ._stamped import STAMPED_HEADERS as RESERVED_HEADERS

__all__ = [
    "IMPLEMENTATION",
    "MAX_WEIGHT",
    "RESERVED_HEADERS",
    "NoUsableIp",
    "RotationTable",
    "inject",
    "relaxed_body",
    "relaxed_header",
]

IMPLEMENTATION: str

if os.environ.get("POOLMTA_NO_EXTENSIONS") == "1":
    from ._dkim_py import relaxed_body, relaxed_header
    from ._headers_py import inject
    from ._rotation_py import RotationTable

    IMPLEMENTATION = "py"
else:
    try:
        from ._dkim_c import relaxed_body, relaxed_header
        from ._headers_c import inject
        from ._rotation_c import RotationTable

        IMPLEMENTATION = "c"
    except ImportError as exc:
        warnings.warn(
            f"poolmta: the compiled fast path did not load ({exc}); using the pure-Python "
            "twins, which are several times slower. Reinstall with a C compiler and Cython, "
            "or set POOLMTA_NO_EXTENSIONS=1 to choose them on purpose.",
            RuntimeWarning,
            stacklevel=2,
        )
        from ._dkim_py import relaxed_body, relaxed_header
        from ._headers_py import inject
        from ._rotation_py import RotationTable

        IMPLEMENTATION = "py"
