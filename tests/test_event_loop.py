"""The workers' event loop (`dataplane.event_loop`, `--event-loop`): uvloop when
installed and asked for (or "auto"), asyncio's own otherwise, a clear error when
uvloop is asked for and missing."""

from __future__ import annotations

import asyncio

import pytest

from dataplane import event_loop
from dataplane.__main__ import build_config, build_parser


def _config(argv: list[str], env: dict[str, str] | None = None):
    return build_config(build_parser(env or {}).parse_args(["--server-id", "1", *argv]), "redis://127.0.0.1:1/0")


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_runs_on_asyncios_own_loop():
    assert event_loop.resolve("asyncio") == "asyncio"
    assert event_loop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_auto_is_uvloop_exactly_when_it_is_installed():
    expected = "uvloop" if event_loop.uvloop_installed() else "asyncio"
    assert event_loop.resolve("auto") == expected
    assert event_loop.run(_loop_module(), "auto").startswith(expected)


def test_uvloop_runs_on_uvloop_or_says_how_to_install_it():
    if event_loop.uvloop_installed():
        assert event_loop.run(_loop_module(), "uvloop").startswith("uvloop")
    else:
        with pytest.raises(ValueError, match=r"uvloop is not installed \(pip install 'poolmta\[fast\]'\)"):
            event_loop.resolve("uvloop")


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="--event-loop must be one of auto, asyncio, uvloop, got 'trio'"):
        event_loop.resolve("trio")


def test_option_and_environment_give_the_resolved_loop():
    assert _config([]).event_loop == event_loop.resolve("auto")
    assert _config(["--event-loop", "asyncio"]).event_loop == "asyncio"
    assert _config([], {"POOLMTA_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(SystemExit):
        _config(["--event-loop", "trio"])
