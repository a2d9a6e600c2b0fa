"""Which event loop a data-plane worker runs on: uvloop when it is installed (the
`fast` extra, `pip install 'poolmta[fast]'`), else asyncio's own; `--event-loop`
chooses one (benchmarks measure both in one run, `bench/postfix_compare.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

CHOICES = ("auto", "asyncio", "uvloop")


def uvloop_installed() -> bool:
    """True when uvloop can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(choice: str) -> str:
    """The loop `choice` means here: "asyncio" or "uvloop"; ValueError when it names
    uvloop and uvloop is not installed, or is not one of CHOICES."""
    if choice not in CHOICES:
        raise ValueError(f"--event-loop must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if choice == "uvloop" and not uvloop_installed():
        raise ValueError("--event-loop uvloop: uvloop is not installed (pip install 'poolmta[fast]')")
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `asyncio.Runner` makes the loop with (None: asyncio's default)."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, Any], choice: str) -> Any:
    """`asyncio.run(main)` on the loop `choice` resolves to."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
