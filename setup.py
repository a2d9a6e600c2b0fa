"""Build steps pyproject.toml cannot express: the Cython fast path and the gRPC stubs.

`POOLMTA_NO_EXTENSIONS=1` skips the Cython build; `_fastpath` then selects its
pure-Python twins. The stubs are generated from `proto/` into `control/_pb/`
(imports made package-relative) for both `pip install .` and `pip install -e .`.
"""

import os
import re
from pathlib import Path

from setuptools import Extension, find_packages, setup

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
STUB_ROOT = ROOT / "control" / "_pb"
PROTO_PACKAGE = "poolmta.v1"


def generate_stubs() -> None:
    """Regenerate control/_pb from every .proto under proto/, with relative imports."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise SystemExit("no .proto files under proto/")
    STUB_ROOT.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={STUB_ROOT}",
        f"--pyi_out={STUB_ROOT}",
        f"--grpc_python_out={STUB_ROOT}",
        *protos,
    ]
    cwd = os.getcwd()
    os.chdir(PROTO_ROOT)
    try:
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + " ".join(protos))
    finally:
        os.chdir(cwd)
    # protoc writes absolute imports (`from poolmta.v1 import x_pb2`); the stubs live
    # inside control._pb, so make them relative to their own package.
    absolute = re.compile(rf"^from {re.escape(PROTO_PACKAGE)} import ", re.M)
    stub_dir = STUB_ROOT.joinpath(*PROTO_PACKAGE.split("."))
    for path in stub_dir.glob("*_pb2*.py*"):
        text = path.read_text()
        path.write_text(absolute.sub("from . import ", text))
    for package_dir in (STUB_ROOT, *STUB_ROOT.joinpath("poolmta").rglob("*")):
        if package_dir.is_dir():
            (package_dir / "__init__.py").touch()
    (STUB_ROOT / "poolmta" / "__init__.py").touch()


def extensions() -> list:
    if os.environ.get("POOLMTA_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "_fastpath").glob("*.pyx"))
    modules = [
        Extension(f"_fastpath.{Path(src).stem}", [src], extra_compile_args=["-O3"])
        for src in sources
    ]
    return cythonize(
        modules,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


# Every setuptools step (egg_info, build_py, editable) needs the stub package to
# exist, and grpcio-tools is a build requirement, so generate before setup().
generate_stubs()

setup(
    # Every package and subpackage of the three trees (control._pb exists by now).
    packages=find_packages(include=["control", "control.*", "dataplane", "dataplane.*", "_fastpath"]),
    package_data={"_fastpath": ["*.pyx", "*.pxd"]},
    ext_modules=extensions(),
)
