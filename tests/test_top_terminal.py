"""Interactive `poolmta top` as a person runs it: in a real terminal (a pseudo-terminal
that is the command's controlling terminal, 160 columns wide), against a real control
plane and a real data plane that delivered mail to a real sink (one message deferred
for ever, so it waits in the queue). The screen it draws shows the pool and its IP with
their rates and queue; `q` quits, and so does Ctrl-C; either way it exits 0, leaves
the alternate screen, shows the cursor again, and gives the terminal back in the mode
it found it (not cbreak)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import select
import signal
import smtplib
import struct
import sys
import termios
import time

import pytest

from tests.control_support import sending_account

pytestmark = pytest.mark.slow

SOURCE_IP = "127.0.0.2"
ROWS, COLUMNS = 40, 160
LEAVE_ALT_SCREEN = b"\x1b[?1049l"
SHOW_CURSOR = b"\x1b[?25h"
DEADLINE = 60.0


class Terminal:
    """`poolmta ARGS` in a pseudo-terminal of its own; `screen` is all it wrote so far."""

    def __init__(self, args: list[str]) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.mode_before = termios.tcgetattr(self.slave)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POOLMTA_", "COLUMNS", "LINES"))}
        env["TERM"] = "xterm-256color"
        argv = [sys.executable, "-m", "control.cli", *args]
        self.pid = os.fork()
        if self.pid == 0:  # the child: a session whose controlling terminal is the pty, then exec
            try:
                os.setsid()
                fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(self.slave, fd)
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        self.screen = b""
        self.status: int | None = None

    def read_until(self, predicate, timeout: float = DEADLINE) -> bytes:
        """Read the terminal until `predicate(screen)` holds; the screen."""
        deadline = time.monotonic() + timeout
        while not predicate(self.screen):
            assert time.monotonic() < deadline, f"not on the screen within {timeout}s:\n{self.text()}"
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # EIO: the child closed its side
                    assert predicate(self.screen), f"the terminal closed first:\n{self.text()}"
        return self.screen

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status, reading what is left on the way (so it never blocks on a full pty)."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            assert time.monotonic() < deadline, f"still running after {timeout}s:\n{self.text()}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:
                    pass
        return self.status

    def text(self) -> str:
        """The screen without escape sequences."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]", "", self.screen.decode("utf-8", "replace"))

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
        os.close(self.master)
        os.close(self.slave)


def _send(port: int, username: str, secret: str, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.login(username, secret)
        smtp.sendmail("sender@acme.example", [rcpt], f"From: sender@acme.example\r\nTo: {rcpt}\r\nSubject: t\r\n\r\nhi\r\n")


def _frame_with_rates(screen: bytes) -> bool:
    """A whole frame is drawn, and the pool's row shows a sent rate above zero."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace"))
    row = re.search(r"acme-promo\s+(\d+\.\d)\s+(\d+\.\d)", text)
    return bool(row) and float(row.group(1)) > 0 and SOURCE_IP in text and "q quits" in text


def _restored(terminal: Terminal) -> None:
    assert terminal.screen.rfind(LEAVE_ALT_SCREEN) > terminal.screen.rfind(b"\x1b[?1049h"), terminal.text()
    assert SHOW_CURSOR in terminal.screen[terminal.screen.rfind(b"q quits"):]
    mode = termios.tcgetattr(terminal.slave)
    assert mode == terminal.mode_before  # ICANON and ECHO back: not left in cbreak mode
    assert mode[3] & termios.ICANON and mode[3] & termios.ECHO


async def test_top_in_a_terminal_shows_pools_ips_rates_and_quits_cleanly(
        control_plane, admin, server, make_account, redis_url, start_dataplane, start_sink):
    _, token, _, bridge = await sending_account(admin, make_account, server, label="acme-promo",
                                                address=SOURCE_IP)
    sink = await asyncio.to_thread(start_sink, "--rule", "stuck*=451")
    plane = await asyncio.to_thread(start_dataplane, redis_url, server.server_id, delivery=True,
                                    args=("--route", f"*={sink.address}", "--retry-schedule", "1h"))
    for rcpt in ("ann@example.net", "bob@example.net", "stuck@example.net"):
        await asyncio.to_thread(_send, plane.port, bridge.bridge.username, bridge.secret, rcpt)

    args = ["--grpc", control_plane.grpc_address, "--token", token, "top", "--interval", "1"]
    for quit_with in (b"q", b"\x03"):  # the q key, then Ctrl-C (SIGINT from the terminal)
        terminal = Terminal(args)
        try:
            await asyncio.to_thread(terminal.read_until, _frame_with_rates)
            text = terminal.text()
            for heading in ("POOL", "IP", "SENT/MIN", "DELIVERED/MIN", "BOUNCED/MIN", "DEFERRED/MIN", "QUEUED"):
                assert heading in text, text
            # The deferred message waits in the queue of its pool and of its IP.
            await asyncio.to_thread(terminal.read_until, lambda s: re.search(
                rb"acme-promo(?:\s+\d+\.\d){5}\s+1\s", re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", s)))
            frames = terminal.screen.count(b"q quits")
            # It refreshes itself: a later frame comes without a key.
            await asyncio.to_thread(terminal.read_until, lambda s, seen=frames: s.count(b"q quits") > seen)
            terminal.type(quit_with)
            assert await asyncio.to_thread(terminal.wait) == 0, terminal.text()
            _restored(terminal)
        finally:
            terminal.close()
