"""The servers and the sink `bench/postfix_compare.py` and `bench/control_loop.py`
measure with: Postfix's `smtp-sink` (its running counter read as it prints), the
Postfix `bench/postfix/setup.sh` configured, and poolmta's whole stack on loopback
with its Bridge trusting the load tools' network; and the whole-server accounting
(CPU seconds, resident memory) of each.

Postfix's tools are on benchmark machines only: ToolMissing says how to get them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (bench/ is a directory of scripts, not a package)

SINK_HOST, SINK_PORT = "127.0.0.1", 2727  # Postfix's relayhost in bench/postfix/main.cf
SINK_DOMAIN = "sink.bench.example"
# The widest network the control plane lets a Bridge trust by default (/24): the load
# tools connect from 127.0.0.1 (Postfix's mynetworks is 127.0.0.0/8).
TRUSTED_NETWORK = "127.0.0.0/24"
POSTFIX_ADDRESS = ("127.0.0.1", 10025)
POSTFIX_PID_FILE = Path("/var/spool/postfix/pid/master.pid")
TOOL_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix")
INSTALL_HINT = ("Postfix's load tools are needed (benchmark machines only): "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y postfix, then sh bench/postfix/setup.sh")
PAGE = os.sysconf("SC_PAGE_SIZE")


class ToolMissing(RuntimeError):
    """A Postfix tool or the configured Postfix is not there; the message says how to get it."""


def find_tool(name: str) -> str:
    """The path of Postfix's `name` (smtp-source, smtp-sink), or ToolMissing."""
    found = shutil.which(name) or next((str(Path(d) / name) for d in TOOL_DIRS if (Path(d) / name).exists()), None)
    if found is None:
        raise ToolMissing(f"{name} not found. {INSTALL_HINT}")
    return found


# -- process accounting -----------------------------------------------------------------------


def tree_pids(roots: list[int]) -> list[int]:
    """Every live process under `roots`, roots included."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = load._stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    seen, todo = [], [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(children.get(pid, ()))
    return seen


def tree_rss_mb(roots: list[int]) -> float:
    """Resident memory of every process under `roots`, in MB."""
    pages = 0
    for pid in tree_pids(roots):
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
    return pages * PAGE / 1e6


# -- the sink ------------------------------------------------------------------------------------


class CSink:
    """Postfix's `smtp-sink` on 127.0.0.1:2727, its running counter (`-c`) read as it prints."""

    _MESSAGES = re.compile(rb"mesg=(\d+)")

    def __init__(self) -> None:
        self.count = 0
        self.changed_at = 0.0  # wall time the counter last moved
        self._changed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> CSink:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root without -u
        self._proc = await asyncio.create_subprocess_exec(
            find_tool("smtp-sink"), "-c", *user, f"{SINK_HOST}:{SINK_PORT}", "1024",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        self._reader = asyncio.create_task(self._read())
        await asyncio.sleep(0.3)
        if self._proc.returncode is not None:
            error = (await self._proc.stderr.read()).decode(errors="replace").strip()
            raise ToolMissing(f"smtp-sink did not start on {SINK_HOST}:{SINK_PORT}: {error}")
        return self

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while chunk := await self._proc.stdout.read(65536):
            found = self._MESSAGES.findall(chunk)
            if found:
                self.count = int(found[-1])
                self.changed_at = time.time()
                self._changed.set()

    async def wait_for(self, count: int, timeout: float) -> float | None:
        """The wall time at which the counter first reached `count`, None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while self.count < count:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                return None
        return time.time()

    async def __aexit__(self, *exc_info) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()
        if self._reader is not None:
            await self._reader


# -- the servers ---------------------------------------------------------------------------------


class Postfix:
    """The Postfix `bench/postfix/setup.sh` configured, already running."""

    def __init__(self) -> None:
        self.name = "Postfix"
        self.address = POSTFIX_ADDRESS
        try:
            self.pid = int(POSTFIX_PID_FILE.read_text().strip())
        except (OSError, ValueError):
            raise ToolMissing(f"Postfix is not running ({POSTFIX_PID_FILE}). {INSTALL_HINT}") from None
        self.roots = [self.pid]
        self.credentials = ("", "")

    def cpu(self) -> float:
        """CPU seconds of the whole server so far."""
        return load.tree_cpu_seconds(self.roots)


class Poolmta:
    """poolmta's whole stack on loopback (see `load.measure_poolmta`), its Bridge trusting
    TRUSTED_NETWORK and the sink domain routed to the C sink."""

    def __init__(self, workers: int, sessions: int, event_loop: str) -> None:
        self.name = f"poolmta ({event_loop})"
        self.workers = workers
        self.event_loop = event_loop
        self.sessions = sessions
        self._tmp = tempfile.TemporaryDirectory(prefix="poolmta-compare-")
        self._stack = None
        self.address: tuple[str, int] = ("", 0)
        self.roots: list[int] = []
        self.credentials = ("", "")
        self.tenant = None  # control.cli.demo.provision.Tenant, once up
        self.grpc_address = ""
        self.admin_token = ""

    async def __aenter__(self) -> Poolmta:
        import grpc

        from control._pb.poolmta.v1 import poolmta_pb2 as pb
        from control.cli.demo.plan import DEMO_POOLS
        from control.cli.demo.provision import Api, provision, wait_for_routing
        from control.cli.demo.stack import Stack, StackOptions

        # All of one load generator's sessions come from one address; caps stay on.
        room = str(2 * (self.sessions + 1))
        args = ("--max-connections-per-address", room, "--max-connections", str(max(1000, int(room) + 10)),
                "--route", f"{SINK_DOMAIN}={SINK_HOST}:{SINK_PORT}", "--event-loop", self.event_loop)
        self._stack = Stack(StackOptions(data_dir=Path(self._tmp.name), workers=self.workers, sink_store=False,
                                         dataplane_args=args))
        stack = await self._stack.__aenter__()
        async with grpc.aio.insecure_channel(stack.grpc_address) as channel:
            tenant = await provision(channel, stack.admin_token, DEMO_POOLS[:1])
            bridge = tenant.pools[0].bridge
            await Api(channel, tenant.token)("bridges", "SetBridgeTrustedNetworks", pb.SetBridgeTrustedNetworksRequest(
                bridge_id=bridge.bridge_id, trusted_networks=[TRUSTED_NETWORK]))
            await wait_for_routing(channel, stack.admin_token, tenant.server.server_id, self.workers, 60,
                                   stack.check_children)
        self.address = stack.smtp_address
        self.roots = [stack.dataplane.pid, stack.redis.pid]
        self.tenant, self.grpc_address, self.admin_token = tenant, stack.grpc_address, stack.admin_token
        return self

    @property
    def stack(self):
        """The running `control.cli.demo.stack.Stack` (its data dir, Redis, data plane)."""
        return self._stack

    def cpu(self) -> float:
        """CPU seconds of the whole server so far (this process: the control plane)."""
        return load.tree_cpu_seconds(self.roots) + load._self_cpu()

    async def __aexit__(self, *exc_info) -> None:
        if self._stack is not None:
            await self._stack.__aexit__(*exc_info)
        self._tmp.cleanup()
