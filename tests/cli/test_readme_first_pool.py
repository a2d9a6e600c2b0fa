"""The README's "A first pool, step by step", run as written (issue 10), so the README
cannot drift from the CLI: every command of its shell block runs against a real
`poolmta sink` and `poolmta up`, exits 0 and has the effect it claims. Only what a
person types by hand changes: the placeholders (<acme's token>, <username>, ...),
free ports instead of the defaults, and `swaks` sent with smtplib."""

from __future__ import annotations

import json
import re
import shlex
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.cli_support import Lines, start_up, stop_process, subprocess_env, token_after
from tests.support import free_port, wait_until

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## A first pool, step by step"
SINK_DEFAULT = "127.0.0.1:2626"


def readme_commands() -> list[str]:
    """The section's shell commands, continuation lines joined, comments dropped."""
    text = README.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert blocks, f"no ```sh block under {SECTION!r}"
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def test_the_readme_section_is_what_this_test_expects():
    commands = readme_commands()
    assert commands[0].startswith(f"poolmta sink --listen {SINK_DEFAULT}") and commands[1].startswith("poolmta up --route")
    assert any(c.startswith("swaks ") for c in commands)
    assert all(c.split()[0] in ("poolmta", "export", "swaks") for c in commands), commands


class Walkthrough:
    """The state a person carries from one README command to the next."""

    def __init__(self, tmp_path: Path):
        self.data_dir = tmp_path / "data"
        self.sink_listen = f"127.0.0.1:{free_port()}"
        self.sink_log = tmp_path / "sink.jsonl"
        self.env = subprocess_env()
        self.env["POOLMTA_DATA_DIR"] = str(self.data_dir)
        self.values: dict[str, str] = {}
        self.processes: list[subprocess.Popen] = []
        self.smtp_port = 0

    def substitute(self, line: str) -> str:
        line = line.replace(SINK_DEFAULT, self.sink_listen)
        for placeholder, value in self.values.items():
            line = line.replace(placeholder, value)
        assert "<" not in line, f"a placeholder this test does not know: {line}"
        return line

    def poolmta(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "control.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        assert done.returncode == 0, f"poolmta {shlex.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        return done

    def background(self, args: list[str]) -> None:
        if args[0] == "sink":
            proc = subprocess.Popen([sys.executable, "-m", "control.cli", *args, "--log", str(self.sink_log)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
            self.processes.append(proc)
            Lines(proc.stdout).until(r"listening|sink", timeout=30)
            return
        assert args[0] == "up"
        proc, lines, _ = start_up(self.data_dir, *args[1:], "--smtp-listen", "127.0.0.1:0", "--workers", "1")
        self.processes.append(proc)
        self.env["POOLMTA_GRPC"] = lines.until(r"listening on (\S+)").group(1)
        self.smtp_port = int(lines.until(r"data plane ready \(SMTP bridge on 127.0.0.1:(\d+)\)", timeout=90).group(1))

    def swaks(self, args: list[str]) -> None:
        options = dict(zip(args[::2], args[1::2], strict=True))
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.login(options["--auth-user"], options["--auth-password"])
            client.mail(options["--from"])
            client.rcpt(options["--to"])
            code, reply = client.data(b"From: " + options["--from"].encode() + b"\r\nSubject: hello\r\n\r\nHi.\r\n")
        assert code == 250, reply
        self.values["<message id>"] = re.search(r"queued as (\S+)", reply.decode()).group(1)

    def watch(self, args: list[str]) -> str:
        """A command that redraws until Ctrl-C: its first picture, then stopped."""
        proc = subprocess.Popen([sys.executable, "-m", "control.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env)
        try:
            return Lines(proc.stdout).until(r"Sending stats of", timeout=60).string
        finally:
            stop_process(proc)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            stop_process(proc)


@pytest.mark.slow
def test_the_readme_first_pool_runs_as_written(tmp_path):
    walk = Walkthrough(tmp_path)
    outputs: dict[str, str] = {}
    try:
        for line in readme_commands():
            words = shlex.split(walk.substitute(line))
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                walk.env[name] = value
            elif words[0] == "swaks":
                walk.swaks(words[1:])
            elif words[-1] == "&":
                walk.background(words[1:-1])
            elif "--watch" in words:
                outputs["watch"] = walk.watch(words[1:])
            else:
                out = walk.poolmta(words[1:]).stdout
                outputs[" ".join(words[1:3])] = out
                if words[1:3] == ["account", "create"]:
                    walk.values["<acme's token>"] = token_after(out, "API token")
                elif words[1:3] == ["bridge", "create"]:
                    walk.values["<username>"] = re.search(r"SMTP username: (\S+)", out).group(1)
                    walk.values["<secret>"] = token_after(out, "shown once")
                elif words[1:3] == ["message", "status"]:
                    # The effect: the message reached the sink, from the pool's IP.
                    assert wait_until(lambda: _delivered(walk), timeout=60), f"the README's message never arrived:\n{out}"
                    entry = _delivered(walk)
                    assert entry["peer"].startswith("127.0.0.2"), entry
    finally:
        walk.stop()

    assert "Account acme (user 1, PRO)." in outputs["whoami"]
    assert "acme-promotional" in outputs["pool list"] and "acme-transactional" in outputs["pool list"]
    assert "done" in outputs["ip assign"].lower()
    assert "127.0.0.3" in outputs["op list"]


def _delivered(walk: Walkthrough) -> dict | None:
    if not walk.sink_log.exists():
        return None
    entries = [json.loads(line) for line in walk.sink_log.read_text().splitlines() if line.strip()]
    return entries[0] if entries else None
