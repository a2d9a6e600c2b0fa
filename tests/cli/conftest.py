"""Fixtures of the CLI tests (`tests/cli/`): a control plane in its own thread (the
CLI runs in the test's thread and blocks on gRPC), the CLI harness on it, and the
account `acme`. They override `control_plane` and `acme` of `tests/control_support.py`
for this directory only; the helpers are in `tests/cli/cli_support.py`."""

from __future__ import annotations

import pytest

from tests.cli.cli_support import POOLMTA_ENV, Cli, ThreadedControlPlane, control_config, token_after


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in POOLMTA_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def start_control_plane(tmp_path, redis_url):
    """start_control_plane(**config overrides) -> ThreadedControlPlane, stopped after the test."""
    started: list[ThreadedControlPlane] = []

    def start(**overrides) -> ThreadedControlPlane:
        plane = ThreadedControlPlane(control_config(tmp_path / "data", redis_url, **overrides)).start()
        started.append(plane)
        return plane

    yield start
    for plane in started:
        plane.stop()


@pytest.fixture
def control_plane(start_control_plane) -> ThreadedControlPlane:
    return start_control_plane()


@pytest.fixture
def cli(capsys, control_plane) -> Cli:
    return Cli(capsys, control_plane.address, control_plane.config.data_dir)


@pytest.fixture
def acme(cli) -> str:
    """MTA server 1 (US-1) registered and a PRO account 'acme'; returns its token."""
    cli.ok("server", "register", "--hostname", "mta1.example.net", "--zone", "US-1")
    return token_after(cli.ok("account", "create", "acme", "--tier", "PRO").out, "API token")
