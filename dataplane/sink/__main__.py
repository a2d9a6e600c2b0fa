"""``python -m dataplane.sink`` (what `poolmta sink` execs): parse the flags, run the sink."""

from __future__ import annotations

import asyncio
import logging
import sys

from .config import parse_args
from .server import serve


def main(argv: list[str] | None = None) -> int:
    """Run `poolmta sink` with `argv` (default: the command line); the exit code."""
    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sink: %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
