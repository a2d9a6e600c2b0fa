"""Helpers shared by the test suite (fixtures live in conftest.py and import these)."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that was free a moment ago (the OS picked it for port 0).

    Something else may take it before the caller binds it; use it only for
    servers whose address must be chosen up front (e.g. a Redis restarted on the
    same port). Prefer binding port 0 and asking the server for its port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# Polling: the suite's one way to wait for something that happens "soon" without
# asserting how soon. One rule in two forms, because a test on an event loop must
# not block it (its in-process servers run there): `wait_until` for plain code,
# `eventually` inside a coroutine.


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> object:
    """Poll `predicate` until it is truthy: its value, or False once `timeout` seconds pass.

    `assert wait_until(lambda: ..., timeout=5)`, with a message that says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return value


async def eventually(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> object:
    """Poll `predicate` (plain or async) until it is truthy, without blocking the event
    loop: its value; AssertionError once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await asyncio.sleep(interval)


def process_gone(pid: int) -> bool:
    """True when `pid` no longer exists or is a zombie (exited, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat_line[stat_line.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def scrape_metrics(address: str) -> dict[str, dict[tuple, float]]:
    """The Prometheus metrics served at `http://address/metrics`, read with
    prometheus-client's own parser: {sample name: {sorted (label, value) pairs: value}}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples
