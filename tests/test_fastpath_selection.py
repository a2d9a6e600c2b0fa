"""Which implementation `_fastpath` serves, and that it stands on its own."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import _fastpath

from tests._fastpath_impls import built_without_extensions

PACKAGE_DIR = Path(_fastpath.__file__).resolve().parent
PROJECT_PACKAGES = {"control", "dataplane", "poolmta"}


def run_python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_normal_install_serves_the_compiled_twins():
    # No silent fallback: a broken compiler must not leave workers (and
    # benchmarks) on the pure-Python twins without anyone noticing.
    expected = "py" if built_without_extensions() else "c"
    assert _fastpath.IMPLEMENTATION == expected
    suffix = "_py" if expected == "py" else "_c"
    assert _fastpath.RotationTable.__module__ == f"_fastpath._rotation{suffix}"
    assert _fastpath.inject.__module__ == f"_fastpath._headers{suffix}"
    assert _fastpath.relaxed_body.__module__ == f"_fastpath._dkim{suffix}"
    assert _fastpath.relaxed_header.__module__ == f"_fastpath._dkim{suffix}"


def test_environment_switch_selects_the_pure_twins():
    probe = run_python(
        "import _fastpath; print(_fastpath.IMPLEMENTATION, "
        "_fastpath.RotationTable.__module__, _fastpath.inject.__module__)",
        POOLMTA_NO_EXTENSIONS="1",
    )
    assert probe.stdout.split() == ["py", "_fastpath._rotation_py", "_fastpath._headers_py"]
    assert probe.stderr == ""  # chosen on purpose: no warning


def test_compiled_import_failure_falls_back_with_a_warning():
    # Any compiled module missing: both routines fall back together, and users
    # get a warning rather than an ImportError.
    probe = run_python(
        "import sys; sys.modules['_fastpath._headers_c'] = None\n"
        "import _fastpath; print(_fastpath.IMPLEMENTATION, _fastpath.RotationTable.__module__)",
        POOLMTA_NO_EXTENSIONS=None,
    )
    assert probe.stdout.split() == ["py", "_fastpath._rotation_py"]
    assert "RuntimeWarning" in probe.stderr
    assert "compiled fast path did not load" in probe.stderr


def test_public_api():
    assert set(_fastpath.__all__) == {
        "IMPLEMENTATION",
        "MAX_WEIGHT",
        "RESERVED_HEADERS",
        "NoUsableIp",
        "RotationTable",
        "inject",
        "relaxed_body",
        "relaxed_header",
    }
    assert _fastpath.RESERVED_HEADERS == (b"x-virtual-mta", b"x-feedtype", b"x-zone", b"x-serverid")
    assert issubclass(_fastpath.NoUsableIp, LookupError)
    table = _fastpath.RotationTable.from_pools([(7, [("192.0.2.1", 1, True)])])
    assert table.pick_key(7) == 0
    assert _fastpath.inject(b"\r\n", [(b"X-Zone", b"US-1")]) == b"X-Zone: US-1\r\n\r\n"


def test_every_compiled_module_has_a_pure_twin():
    compiled = {path.stem.removesuffix("_c") for path in PACKAGE_DIR.glob("*_c.pyx")}
    pure = {path.stem.removesuffix("_py") for path in PACKAGE_DIR.glob("*_py.py")}
    assert compiled - {"_floor"} == pure == {"_rotation", "_headers", "_dkim"}


def imported_top_level_names(path: Path) -> set[str]:
    """Top-level packages a .py or .pyx file imports (cimports included)."""
    names = set()
    for line in path.read_text().splitlines():
        words = line.split()
        if (
            len(words) >= 2
            and words[0] in ("import", "from", "cimport")
            and not words[1].startswith(".")
        ):
            names.add(words[1].split(".")[0].rstrip(","))
    if path.suffix == ".py":  # cross-check the simple reading with the real parser
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_fastpath_imports_nothing_of_the_project():
    sources = [*PACKAGE_DIR.glob("*.py"), *PACKAGE_DIR.glob("*.pyx")]
    assert sources
    for path in sources:
        assert not imported_top_level_names(path) & PROJECT_PACKAGES, path.name
    probe = run_python(
        "import sys, _fastpath; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    assert not set(probe.stdout.split()) & PROJECT_PACKAGES
