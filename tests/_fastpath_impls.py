"""Both fast-path implementations as fixtures, for the tests/test_fastpath_*.py files.

Every behavioural test takes `rotation`, `headers` or `dkim` and so runs once against the
compiled module and once against its pure-Python twin. The compiled module must
load; the only time it may be absent is a build made with POOLMTA_NO_EXTENSIONS=1,
where its tests are skipped (tests/test_fastpath_selection.py asserts which
implementation a normal install serves).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

IMPLEMENTATIONS = ("c", "py")


def built_without_extensions() -> bool:
    """True when this run asked for the pure-Python twins (same switch as setup.py)."""
    return os.environ.get("POOLMTA_NO_EXTENSIONS") == "1"


def load(routine: str, implementation: str) -> ModuleType:
    """`_fastpath._<routine>_<implementation>`, e.g. load("rotation", "c")."""
    try:
        return importlib.import_module(f"_fastpath._{routine}_{implementation}")
    except ImportError:
        if implementation == "c" and built_without_extensions():
            pytest.skip("POOLMTA_NO_EXTENSIONS=1: the compiled twin is not built")
        raise


def load_both(routine: str) -> tuple[ModuleType, ModuleType]:
    """(compiled, pure) modules of `routine`, for tests that compare the twins."""
    return load(routine, "c"), load(routine, "py")


def outcome(function, *args):
    """What a call did, comparable across the twins: its result or (error type, message)."""
    try:
        return ("ok", function(*args))
    except Exception as exc:  # noqa: BLE001 - any difference between the twins counts
        return ("raised", type(exc), str(exc))


@pytest.fixture(params=IMPLEMENTATIONS, scope="session")
def rotation(request: pytest.FixtureRequest) -> ModuleType:
    """`_fastpath._rotation_c`, then `_fastpath._rotation_py`."""
    return load("rotation", request.param)


@pytest.fixture(params=IMPLEMENTATIONS, scope="session")
def headers(request: pytest.FixtureRequest) -> ModuleType:
    """`_fastpath._headers_c`, then `_fastpath._headers_py`."""
    return load("headers", request.param)


@pytest.fixture(params=IMPLEMENTATIONS, scope="session")
def dkim(request: pytest.FixtureRequest) -> ModuleType:
    """`_fastpath._dkim_c`, then `_fastpath._dkim_py`."""
    return load("dkim", request.param)
