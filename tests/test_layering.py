"""Layering: which of the project's packages may import which (ARCHITECTURE.md, "Layout").

* `dataplane` imports, of the project, only `_fastpath` and `control.contract`;
* `control` (`control.contract` included) never imports `dataplane`;
* `control.contract` imports nothing else of `control`;
* `_fastpath` imports nothing of the project.

Imports are read from the source with `ast`, never by importing it: module-level
and function-level imports, relative imports resolved to the module they name,
`importlib.import_module` / `__import__` of a constant name, and the Python-level
imports of Cython files.
"""

from __future__ import annotations

import ast
import gc
import io
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("_fastpath", "control", "dataplane")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    """True when `name` is a module or package of the project's source tree."""
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or base.with_suffix(".pyx").is_file() or base.is_dir()


def _python_statements(path: Path) -> str:
    """The source of `path` as Python; for a Cython file, its Python-level import
    statements (cimports and C declarations are not Python and import nothing)."""
    text = path.read_text()
    if path.suffix == ".py":
        return text
    statements, line = [], []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            words = [t.string for t in line if t.type == tokenize.NAME]
            if words and words[0] in ("import", "from") and "cimport" not in words:
                first, last = line[0].start[0], line[-1].end[0]
                statements.append(textwrap.dedent("\n".join(text.splitlines()[first - 1:last])))
            line = []
        elif token.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            line.append(token)
    return "\n".join(statements)


def _parse(path: Path) -> ast.Module:
    # CPython 3.11 can fail ast.parse with "SystemError: AST constructor recursion
    # depth mismatch" when a garbage collection runs a finalizer (an earlier test's
    # leftover asyncio task) in the middle of building the tree; no collection, no
    # finalizer.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(_python_statements(path), str(path))
    finally:
        if enabled:
            gc.enable()


def _imports_of(path: Path) -> set[str]:
    """Every module `path` imports, as absolute dotted names."""
    module = _module_name(path)
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod.
                submodule = f"{source}.{alias.name}"
                found.add(submodule if _is_module(submodule) else source)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def project_imports(package: str) -> set[tuple[str, str]]:
    """(file, module) for every import of the project's own modules in `package`."""
    found = set()
    for path in sorted([*(ROOT / package).rglob("*.py"), *(ROOT / package).rglob("*.pyx")]):
        for name in _imports_of(path):
            if name.split(".")[0] in PROJECT:
                found.add((path.relative_to(ROOT).as_posix(), name))
    return found


def within(module: str, *packages: str) -> bool:
    """True when `module` is one of `packages` or inside one."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_dataplane_imports_only_the_fast_path_and_the_contract():
    imports = project_imports("dataplane")
    assert any(within(module, "control.contract") for _, module in imports), "the reader sees no imports"
    allowed = ("dataplane", "_fastpath", "control.contract")
    outside = {(path, module) for path, module in imports if not within(module, *allowed)}
    assert not outside, f"dataplane imports {sorted(outside)}"


def test_control_never_imports_dataplane():
    imports = project_imports("control")
    assert any(within(module, "control.contract") for _, module in imports), "the reader sees no imports"
    wrong = {(path, module) for path, module in imports if within(module, "dataplane")}
    assert not wrong, f"control imports the data plane: {sorted(wrong)}"


def test_the_contract_imports_nothing_else_of_control():
    imports = project_imports("control/contract")
    allowed = ("control.contract", "_fastpath")
    wrong = {(path, module) for path, module in imports if not within(module, *allowed)}
    assert not wrong, f"control.contract imports {sorted(wrong)}"


def test_fastpath_imports_nothing_of_the_project():
    imports = project_imports("_fastpath")
    assert ("_fastpath/_headers_c.pyx", "_fastpath._stamped") in imports, "the reader sees no Cython imports"
    wrong = {(path, module) for path, module in imports if not within(module, "_fastpath")}
    assert not wrong, f"_fastpath imports {sorted(wrong)}"
