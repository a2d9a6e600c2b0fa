"""`poolmta demo` (``python -m control.cli.demo``): the whole story on loopback, in one command.

Nothing needs to run before it. In a temporary data directory it starts the
embedded Redis and the control plane in this process, then `poolmta sink` (the
destination MTA) and the data plane (2 workers, every domain routed to the sink)
as child processes (`control` never imports `dataplane`). Then it does what a
customer does, through the gRPC API: the platform admin registers MTA server
US-1 and creates the PRO account `acme`; acme creates three Pools, provisions
127.0.0.2-127.0.0.7 into them and opens one Bridge per Pool. It waits until every
data-plane worker serves that routing, sends a few thousand messages through the
Bridges with SMTP AUTH (some to recipients the sink bounces or defers), waits
until StatsService counts every one of them delivered or bounced, and prints the
product's "Sending stats" panel, a message as the destination received it, and
the destination's view of the source IPs.

Every figure in the panel is read back from StatsService. The demo checks that
they add up to what it sent, and that the sink saw as many messages from each IP
as StatsService says were delivered from it: exit 0 when they do, 1 with the
discrepancy when not (or when a step fails), 130 when interrupted. Whatever it
started is stopped before it exits (also on Ctrl-C, SIGTERM or an error), unless
`--keep-running`, which leaves everything up until Ctrl-C and prints how to reach it.

`Stack` and `provision` are reused by the load harness (`bench/load.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import IO

import aiosmtplib
import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .. import render
from ..._pb.poolmta.v1 import poolmta_pb2 as pb
from ..client import STUBS
from ..children import DATAPLANE_READY, DATAPLANE_STOP_SECONDS
from ..serve import CONTROL_STOP_EXTRA_SECONDS, stop_within
from ...config import ControlConfig
from ...contract.runtime import die_with_parent
from ...embedded_redis import EmbeddedRedis, EmbeddedRedisError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

SINK_READY = "sink ready listen="
# How long a child gets to print its ready line (the data plane spawns fresh interpreters).
START_TIMEOUT = 60.0
SINK_STOP_SECONDS = 5.0
RPC_TIMEOUT = 10.0
STATS_POLL_SECONDS = 0.25
# The sink rewrites its counts file at most every 200 ms.
SINK_COUNTS_SETTLE_SECONDS = 5.0
LOG_TAIL_LINES = 20

SERVER_HOSTNAME = "mta1.demo.poolmta.test"
ZONE = "US-1"
ACCOUNT = "acme"
SENDER_DOMAIN = "acme.example"
RECIPIENT_DOMAIN = "example.net"
# The sink's default rules: bounce* answers 550, defer* 451 twice and then 250.
BOUNCE_LOCAL_PART = "bounce"
DEFER_LOCAL_PART = "defer"
# Every domain goes to the sink; deferred recipients are retried quickly.
RETRY_SCHEDULE = "0.5s,1s,2s"

STAMPED_HEADERS = ("x-virtual-mta", "x-feedtype", "x-zone", "x-serverid")


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


# -- what the demo builds -------------------------------------------------------------


@dataclass(frozen=True)
class PoolPlan:
    """One Pool of the demo account and the Bridge that exposes it.

    share: the part of the messages sent through this Pool's Bridge.
    """

    label: str
    tag: str
    feed_type: str
    addresses: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    bridge: str
    share: float


DEMO_POOLS = (
    PoolPlan("acme-promotional", "promo", "newsletter", ("127.0.0.2", "127.0.0.3", "127.0.0.4"),
             (("X-Brand", "acme"), ("X-Campaign", "black-friday")), "promo-app", 0.60),
    PoolPlan("acme-transactional", "txn", "transactional", ("127.0.0.5", "127.0.0.6"),
             (("X-Brand", "acme"), ("X-Stream", "receipts")), "shop-app", 0.25),
    PoolPlan("acme-drip", "drip", "drip", ("127.0.0.7",),
             (("X-Brand", "acme"), ("X-Journey", "onboarding")), "nurture-app", 0.15),
)


@dataclass(frozen=True)
class DemoOptions:
    """What one run of the demo does (built once from the command line)."""

    messages: int = 3000
    sessions: int = 6
    per_session: int = 25
    bounce_share: float = 0.03
    defer_share: float = 0.02
    workers: int = 2
    timeout: float = 120.0
    keep_running: bool = False
    seed: int = 2024
    pools: tuple[PoolPlan, ...] = DEMO_POOLS

    def __post_init__(self) -> None:
        if self.messages < 1:
            raise ValueError("--messages must be at least 1")
        if self.sessions < 1 or self.per_session < 1 or self.workers < 1:
            raise ValueError("--sessions, --per-session and --workers must be at least 1")
        if not 0 <= self.bounce_share + self.defer_share <= 1:
            raise ValueError("bounce and defer shares must add up to at most 1")
        if self.timeout <= 0:
            raise ValueError("--timeout must be positive")


# -- the running stack ------------------------------------------------------------------


@dataclass(frozen=True)
class StackOptions:
    """The stack `Stack` runs.

    data_dir: holds the SQLite database, admin token, embedded Redis, spool and the
        children's logs (`<data_dir>/logs/`).
    sink_store: the sink keeps each message (`<data_dir>/sink/<n>.eml`) and a JSON
        line per message (`<data_dir>/sink.jsonl`); off for benchmarks.
    dataplane_args: extra data-plane flags.
    """

    data_dir: Path
    workers: int = 2
    retry_schedule: str = RETRY_SCHEDULE
    sink_store: bool = True
    dataplane_args: tuple[str, ...] = ()


class _Child:
    """A child process started with its own session that dies with us (PDEATHSIG), whose
    stderr goes to a log file and whose stdout is read up to a ready line, then to the log."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready_marker: str):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.ready_marker = ready_marker
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._pump: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the child; return its ready line. DemoError (with the end of its log)
        when it exits or stays silent instead."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept for the child's life
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True, preexec_fn=die_with_parent(os.getpid()),
        )
        try:
            line = await asyncio.wait_for(self._ready_line(), timeout)
        except TimeoutError:
            raise DemoError(f"{self.name} printed no ready line within {timeout:g}s{self.log_tail()}") from None
        if line is None:
            await self.proc.wait()
            raise DemoError(f"{self.name} exited with code {self.proc.returncode} while starting{self.log_tail()}")
        self._pump = asyncio.create_task(self._copy_rest())
        return line

    async def _ready_line(self) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None and self._log is not None
        while raw := await self.proc.stdout.readline():
            self._log.write(raw)
            self._log.flush()
            line = raw.decode("utf-8", "replace").strip()
            if self.ready_marker in line:
                return line
        return None

    async def _copy_rest(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self._log is not None
        while raw := await self.proc.stdout.readline():
            self._log.write(raw)
            self._log.flush()

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; waits for the exit either way."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                sys.stderr.write(f"poolmta demo: {self.name} did not stop within {timeout:g}s; killing it\n")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(self._pump, return_exceptions=True), 2.0)
            self._pump = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        lines = [line for line in lines if line.strip()][-LOG_TAIL_LINES:]
        return f"; end of {self.log_path}:\n" + "\n".join(lines) if lines else ""


class Stack:
    """The whole of poolmta for one MTA server on loopback, with a sink as the destination.

        async with Stack(StackOptions(data_dir)) as stack:
            stack.grpc_address, stack.smtp_address, stack.sink_address, stack.admin_token

    The embedded Redis and the control plane run in this process (start it from the
    main thread: the Redis child dies with the thread that forked it); the sink and
    the data plane are child processes. Leaving the block stops all of it, in reverse
    order, whatever happened inside.
    """

    def __init__(self, options: StackOptions):
        self.options = options
        self.data_dir = options.data_dir
        self.redis: EmbeddedRedis | None = None
        self.control = None  # control.server.ControlPlane once started
        self.sink: _Child | None = None
        self.dataplane: _Child | None = None
        self.grpc_address = ""
        self.admin_token = ""
        self.smtp_address: tuple[str, int] = ("", 0)
        self.sink_address: tuple[str, int] = ("", 0)

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def sink_counts_path(self) -> Path:
        return self.data_dir / "sink-counts.json"

    @property
    def sink_log_path(self) -> Path:
        return self.data_dir / "sink.jsonl"

    @property
    def sink_store_dir(self) -> Path:
        return self.data_dir / "sink"

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def start(self) -> None:
        from ...server import ControlPlane

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(self.data_dir)
        try:
            redis_url = self.redis.start()
        except EmbeddedRedisError as exc:
            raise DemoError(f"the embedded Redis did not start: {exc}") from None
        # The children first: forking once gRPC's threads run makes grpc log about its fork handlers.
        self.sink = _Child("the sink", self._sink_command(), self.logs_dir / "sink.log", SINK_READY)
        ready = await self.sink.start()
        self.sink_address = _host_port(ready.split(SINK_READY, 1)[1].split(",")[0])

        self.dataplane = _Child("the data plane", self._dataplane_command(redis_url),
                                self.logs_dir / "dataplane.log", DATAPLANE_READY)
        ready = await self.dataplane.start()
        smtp = next((word.split("=", 1)[1] for word in ready.split() if word.startswith("smtp=")), None)
        if smtp is None:
            raise DemoError(f"the data plane's ready line names no SMTP address: {ready!r}")
        self.smtp_address = _host_port(smtp)

        control = ControlPlane(ControlConfig(data_dir=self.data_dir, redis_url=redis_url, grpc_listen="127.0.0.1:0",
                                             publish_check_interval=0.25, grace_seconds=1.0))
        self.control = control
        try:
            await control.start()
        except (OSError, RuntimeError) as exc:
            raise DemoError(f"the control plane did not start: {exc}") from None
        self.grpc_address = control.grpc_address
        self.admin_token = control.admin_token_path.read_text(encoding="utf-8").strip()

    def _sink_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "dataplane.sink", "--listen", "127.0.0.1:0", "--hostname", "mx.example.net",
               "--counts-file", str(self.sink_counts_path)]
        if self.options.sink_store:
            cmd += ["--store", str(self.sink_store_dir), "--log", str(self.sink_log_path)]
        return cmd

    def _dataplane_command(self, redis_url: str) -> list[str]:
        host, port = self.sink_address
        return [
            sys.executable, "-m", "dataplane", "--server-id", "1", "--data-dir", str(self.data_dir),
            "--redis-url", redis_url, "--smtp-listen", "127.0.0.1:0", "--workers", str(self.options.workers),
            "--log-level", "warning", "--route", f"*={host}:{port}",
            "--retry-schedule", self.options.retry_schedule, *self.options.dataplane_args,
        ]

    async def stop(self) -> None:
        """Stop what runs, newest first; safe to call twice."""
        if self.dataplane is not None:
            await self.dataplane.stop(DATAPLANE_STOP_SECONDS)
        if self.sink is not None:
            await self.sink.stop(SINK_STOP_SECONDS)
        if self.control is not None:
            control, self.control = self.control, None
            await stop_within(control.stop(), control.config.grace_seconds + CONTROL_STOP_EXTRA_SECONDS)
        if self.redis is not None:
            self.redis.stop()

    def sink_counts(self) -> dict:
        """The sink's counts file ({} before its first write)."""
        try:
            return json.loads(self.sink_counts_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def check_children(self) -> None:
        """DemoError when the sink or the data plane has exited."""
        for child in (self.sink, self.dataplane):
            if child is not None and child.proc is not None and not child.running():
                raise DemoError(f"{child.name} exited unexpectedly (code {child.proc.returncode}){child.log_tail()}")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port)


# -- the product flow through the gRPC API --------------------------------------------


class Api:
    """The gRPC stubs, every call carrying one bearer token and a deadline."""

    def __init__(self, channel: grpc.aio.Channel, token: str):
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._stubs = {name: stub(channel) for name, stub in STUBS.items()}

    async def __call__(self, service: str, method: str, request):
        try:
            return await getattr(self._stubs[service], method)(request, metadata=self._metadata, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise DemoError(f"{method} failed: {exc.code().name}: {exc.details()}") from None


@dataclass(frozen=True)
class ProvisionedPool:
    plan: PoolPlan
    pool: pb.Pool
    bridge: pb.Bridge
    secret: str


@dataclass(frozen=True)
class Tenant:
    """The demo account as provisioned: its token, Pools and Bridges (with their secrets)."""

    server: pb.MtaServer
    account: pb.Account
    token: str
    pools: tuple[ProvisionedPool, ...]


async def provision(channel: grpc.aio.Channel, admin_token: str, pools: Sequence[PoolPlan],
                    account_name: str = ACCOUNT) -> Tenant:
    """The product flow: register the MTA server, create the PRO account, create its
    Pools (the first becomes the default), provision the IPs into them, open a Bridge
    on each."""
    admin = Api(channel, admin_token)
    server = await admin("servers", "RegisterMtaServer", pb.RegisterMtaServerRequest(hostname=SERVER_HOSTNAME,
                                                                                      zone=ZONE))
    created = await admin("accounts", "CreateAccount", pb.CreateAccountRequest(name=account_name, tier=pb.PRO))
    tenant = Api(channel, created.token)
    made = []
    for plan in pools:
        pool = await tenant("pools", "CreatePool", pb.CreatePoolRequest(
            label=plan.label, server_id=server.server_id, tag=plan.tag, feed_type=plan.feed_type,
            headers=[pb.Header(name=name, value=value) for name, value in plan.headers]))
        for address in plan.addresses:
            await tenant("ips", "ProvisionIp", pb.ProvisionIpRequest(address=address, smtp_id=pool.smtp_id,
                                                                     server_id=server.server_id))
        bridge = await tenant("bridges", "CreateBridge", pb.CreateBridgeRequest(
            name=plan.bridge, smtp_id=pool.smtp_id, feed_type=plan.feed_type))
        pool = await tenant("pools", "GetPool", pb.GetPoolRequest(smtp_id=pool.smtp_id))
        made.append(ProvisionedPool(plan, pool, bridge.bridge, bridge.secret))
    return Tenant(server, created.account, created.token, tuple(made))


async def wait_for_routing(channel: grpc.aio.Channel, admin_token: str, server_id: int, workers: int,
                           timeout: float, check=None) -> pb.RoutingStatus:
    """Until `workers` live data-plane workers all serve the server's current routing version."""
    admin = Api(channel, admin_token)
    deadline = time.monotonic() + timeout
    while True:
        status = await admin("servers", "GetRoutingStatus", pb.GetRoutingStatusRequest(server_id=server_id))
        if (len(status.workers) >= workers
                and all(w.version >= status.routing_version for w in status.workers)):
            return status
        if check is not None:
            check()
        if time.monotonic() > deadline:
            serving = ", ".join(f"{w.worker_id} v{w.version}" for w in status.workers) or "no live worker"
            raise DemoError(f"the data plane does not serve routing version {status.routing_version} after "
                            f"{timeout:g}s ({serving})")
        await asyncio.sleep(0.1)


# -- the messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    pool: int  # index into the plan
    recipient: str
    data: bytes


@dataclass
class PoolTally:
    """What the demo sent through one Pool's Bridge, and so what StatsService must say."""

    sent: int = 0
    bounce: int = 0
    defer: int = 0
    refused: int = 0

    @property
    def delivered(self) -> int:
        return self.sent - self.bounce


_PARAGRAPHS = (
    "Our biggest sale of the year starts now: everything in the store is up to 40% off until Monday "
    "midnight, and members get free express shipping on every order over $25.",
    "We picked a few favourites for you below, based on what you looked at last month. Stock is limited "
    "and the best sizes go first, so do not wait too long if something catches your eye.",
    "Thank you for your order. We have received your payment and your parcel is being packed in our "
    "warehouse; you will get another email with the tracking number as soon as it leaves.",
    "Welcome aboard! Over the next two weeks we will send you a short email every few days with one tip "
    "that helps you get more out of your account, starting with setting up your profile.",
    "You are receiving this email because you signed up at acme.example. You can change which emails you "
    "receive, or unsubscribe from all of them, on your preferences page at any time.",
)

_SUBJECTS = {
    "newsletter": "Black Friday starts now: up to 40% off everything",
    "transactional": "Your acme order #{n} is confirmed",
    "drip": "Day 3: make acme yours in two minutes",
}


def _template(plan: PoolPlan, rng: random.Random) -> bytes:
    """One realistic message of the Pool's kind (a few KB, text and HTML), with
    placeholders for the recipient, the number and the Message-ID."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = f"acme <{plan.bridge.split('-')[0]}@{SENDER_DOMAIN}>"
    msg["To"] = "__RCPT__"
    msg["Subject"] = _SUBJECTS.get(plan.feed_type, "News from acme").replace("{n}", "__N__")
    msg["Message-ID"] = f"<__N__.{plan.tag}@{SENDER_DOMAIN}>"
    msg["Date"] = "Fri, 28 Nov 2025 09:00:00 +0000"
    msg["List-Unsubscribe"] = f"<https://{SENDER_DOMAIN}/u/__N__>"
    msg["X-Mailer"] = f"acme-{plan.bridge}/2.3"
    paragraphs = [rng.choice(_PARAGRAPHS) for _ in range(8)]
    text = "\n\n".join(textwrap.fill(p, 72) for p in paragraphs)
    msg.set_content(f"Hello,\n\n{text}\n\n-- \nacme, 1 Market Street, Springfield\n")
    html = "".join(f"<p style=\"font-family:Arial,sans-serif;font-size:15px\">{p}</p>\n" for p in paragraphs)
    msg.add_alternative(f"<!doctype html>\n<html><body>\n<h1>acme</h1>\n{html}</body></html>\n", subtype="html")
    return msg.as_bytes()


def plan_messages(options: DemoOptions) -> tuple[list[list[Message]], list[PoolTally]]:
    """The messages in batches of `per_session` (one SMTP session each, one Pool each),
    shuffled, and what each Pool should count once they are sent."""
    rng = random.Random(options.seed)
    templates = [_template(plan, rng) for plan in options.pools]
    weights = [plan.share for plan in options.pools]
    by_pool: list[list[Message]] = [[] for _ in options.pools]
    for n in range(1, options.messages + 1):
        index = rng.choices(range(len(options.pools)), weights)[0]
        roll = rng.random()
        if roll < options.bounce_share:
            local = f"{BOUNCE_LOCAL_PART}-{n}"
        elif roll < options.bounce_share + options.defer_share:
            local = f"{DEFER_LOCAL_PART}-{n}"
        else:
            local = f"customer-{n}"
        recipient = f"{local}@{RECIPIENT_DOMAIN}"
        data = templates[index].replace(b"__RCPT__", recipient.encode()).replace(b"__N__", str(n).encode())
        by_pool[index].append(Message(index, recipient, data))
    batches = [msgs[i : i + options.per_session] for msgs in by_pool for i in range(0, len(msgs), options.per_session)]
    rng.shuffle(batches)
    return batches, [PoolTally() for _ in options.pools]


async def send_all(tenant: Tenant, smtp: tuple[str, int], batches: list[list[Message]], tallies: list[PoolTally],
                   sessions: int, progress: Progress, task) -> list[str]:
    """Send every batch over `sessions` concurrent authenticated SMTP sessions; count
    each accepted message in `tallies`. Returns what went wrong (empty when nothing did)."""
    queue: asyncio.Queue[list[Message]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    problems: list[str] = []

    async def session_loop() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            provisioned = tenant.pools[batch[0].pool]
            sender = f"{provisioned.plan.bridge.split('-')[0]}@{SENDER_DOMAIN}"
            client = aiosmtplib.SMTP(hostname=smtp[0], port=smtp[1], start_tls=False, timeout=30)
            handled = 0
            try:
                await client.connect()
                await client.login(provisioned.bridge.username, provisioned.secret)
                for message in batch:
                    tally = tallies[message.pool]
                    try:
                        await client.sendmail(sender, [message.recipient], message.data)
                    except aiosmtplib.SMTPResponseException as exc:
                        tally.refused += 1
                        problems.append(f"the Bridge {provisioned.plan.bridge} refused a message to "
                                        f"{message.recipient}: {exc.code} {exc.message}")
                    else:
                        tally.sent += 1
                        tally.bounce += message.recipient.startswith(BOUNCE_LOCAL_PART)
                        tally.defer += message.recipient.startswith(DEFER_LOCAL_PART)
                        progress.advance(task)
                    handled += 1
                with contextlib.suppress(aiosmtplib.SMTPException):
                    await client.quit()
            except (aiosmtplib.SMTPException, OSError) as exc:
                tallies[batch[0].pool].refused += len(batch) - handled
                problems.append(f"an SMTP session through the Bridge {provisioned.plan.bridge} failed after "
                                f"{handled} of {len(batch)} messages: {exc}")
            finally:
                client.close()

    await asyncio.gather(*(session_loop() for _ in range(sessions)))
    return problems


# -- reading it back -------------------------------------------------------------------------


async def pool_stats(api: Api, tenant: Tenant) -> list[pb.PoolStats]:
    return list(await asyncio.gather(*(
        api("stats", "GetPoolStats", pb.GetPoolStatsRequest(smtp_id=p.pool.smtp_id, window=pb.LIFETIME))
        for p in tenant.pools
    )))


async def wait_until_final(api: Api, tenant: Tenant, tallies: list[PoolTally], timeout: float, progress: Progress,
                           stack: Stack) -> list[pb.PoolStats]:
    """Until StatsService counts every message sent as delivered or bounced in every Pool
    (deferred ones are delivered by a retry). DemoError with what is missing at the deadline."""
    total = sum(t.sent for t in tallies)
    task = progress.add_task("Delivering (StatsService)", total=total, rate="")
    deadline = time.monotonic() + timeout
    while True:
        stats = await pool_stats(api, tenant)
        final = sum(s.delivered + s.bounced for s in stats)
        deferred = sum(s.deferred for s in stats)
        progress.update(task, completed=min(final, total), rate=f"{deferred} deferral(s) retried")
        if all(s.delivered + s.bounced >= t.sent and s.sent >= t.sent for s, t in zip(stats, tallies, strict=True)):
            return stats
        stack.check_children()
        if time.monotonic() > deadline:
            missing = "; ".join(
                f"{s.label}: sent {t.sent}, StatsService sent {s.sent}, delivered {s.delivered}, "
                f"bounced {s.bounced}, deferred {s.deferred} ({t.sent - s.delivered - s.bounced} not final)"
                for s, t in zip(stats, tallies, strict=True)
            )
            raise DemoError(f"not every message was delivered or bounced within {timeout:g}s: {missing}")
        await asyncio.sleep(STATS_POLL_SECONDS)


async def settled_sink_counts(stack: Stack, delivered: int) -> dict:
    """The sink's counts once they show `delivered` accepted messages (or after a few seconds)."""
    deadline = time.monotonic() + SINK_COUNTS_SETTLE_SECONDS
    while True:
        counts = stack.sink_counts()
        if counts.get("accepted", 0) >= delivered or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


def received_message(stack: Stack, internal_name: str) -> tuple[dict, bytes] | None:
    """The first message the sink received from the Pool `internal_name`: its log record and bytes."""
    try:
        lines = stack.sink_log_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        record = json.loads(line)
        if record.get("x-virtual-mta") == internal_name:
            try:
                return record, (stack.sink_store_dir / f"{record['n']}.eml").read_bytes()
            except OSError:
                return None
    return None


def header_section(message: bytes) -> str:
    """The message's header lines (unfolded lines kept as sent), CRLF or LF endings."""
    text = message.decode("utf-8", "replace").replace("\r\n", "\n")
    return text.split("\n\n", 1)[0]


# -- the panel ----------------------------------------------------------------------------


def pools_table(tenant: Tenant, pools: list[pb.Pool], stats: list[pb.PoolStats]) -> Table:
    by_id = {p.smtp_id: p for p in pools}
    rows = []
    for s in stats:
        pool = by_id.get(s.smtp_id)
        rows.append((
            s.label, render.pool_status(pool.status) if pool else render.NONE, str(len(s.ips)),
            render.count(s.sent), render.count(s.delivered), render.count(s.bounced),
            render.rate(s.delivery_rate, s.delivered, s.bounced),
        ))
    t = render.table(["Pool", "Status", "IPs", "Total Sent", "Total Delivered", "Total Bounced", "Delivery rate"],
                     rows, title=f"Dedicated Pools of {tenant.account.name} "
                                 f"(user {tenant.account.user_id}, {render.tier(tenant.account.tier)}) "
                                 f"on MTA server {tenant.server.server_id}, zone {tenant.server.zone}")
    for column in t.columns[2:]:
        column.justify = "right"
    return t


def sources_table(tenant: Tenant, stats: list[pb.PoolStats], counts: dict) -> tuple[Table, list[str]]:
    """The sink's view of the source addresses next to StatsService's per-IP figures,
    and the IPs where the sink's accepted count differs from StatsService's delivered."""
    peers = counts.get("peers", {})
    rows, mismatches = [], []
    for s in stats:
        for ip in s.ips:
            seen = peers.get(ip.address, {})
            accepted = int(seen.get("accepted", 0))
            ok = accepted == ip.delivered
            if not ok:
                mismatches.append(f"{ip.address} ({s.label}): the sink accepted {accepted} message(s) from it, "
                                  f"StatsService counts {ip.delivered} delivered")
            rows.append((ip.address, s.label, render.count(int(seen.get("connections", 0))), render.count(accepted),
                         render.count(int(seen.get("rejected", 0))), render.count(int(seen.get("deferred", 0))),
                         render.count(ip.sent), render.count(ip.delivered), render.count(ip.bounced),
                         "ok" if ok else "MISMATCH"))
    known = {ip.address for s in stats for ip in s.ips}
    for address, seen in sorted(peers.items()):
        if address not in known and seen.get("accepted"):
            mismatches.append(f"the sink accepted {seen['accepted']} message(s) from {address}, which is in no Pool")
            rows.append((address, "?", render.count(int(seen.get("connections", 0))),
                         render.count(int(seen["accepted"])), "", "", "", "", "", "MISMATCH"))
    t = render.table(["Source IP", "Pool", "Sink connections", "Sink accepted", "Sink 5xx", "Sink 4xx",
                      "Stats sent", "Stats delivered", "Stats bounced", "Check"], rows,
                     title="Where the mail came from, as the destination saw it (sink) and as StatsService counts it")
    for column in t.columns[2:9]:
        column.justify = "right"
    return t, mismatches


def check_totals(tallies: list[PoolTally], stats: list[pb.PoolStats], counts: dict) -> list[str]:
    """Every discrepancy between what was sent, what StatsService counts and what the sink saw."""
    problems = []
    for tally, s in zip(tallies, stats, strict=True):
        expected = (("sent", tally.sent), ("delivered", tally.delivered), ("bounced", tally.bounce))
        for name, want in expected:
            got = getattr(s, name)
            if got != want:
                problems.append(f"{s.label}: StatsService says {name} {got}, the demo expected {want}")
        for name in ("sent", "delivered", "bounced"):
            per_ip = sum(getattr(ip, name) for ip in s.ips)
            if per_ip != getattr(s, name):
                problems.append(f"{s.label}: its IPs' {name} add up to {per_ip}, "
                                f"the Pool's total is {getattr(s, name)}")
    delivered = sum(s.delivered for s in stats)
    accepted = int(counts.get("accepted", 0))
    if accepted != delivered:
        problems.append(f"the sink accepted {accepted} message(s), StatsService counts {delivered} delivered")
    return problems


def show_panel(console: Console, tenant: Tenant, pools: list[pb.Pool], stats: list[pb.PoolStats]) -> None:
    console.print()
    console.print(pools_table(tenant, pools, stats))
    console.print()
    console.print(render.pool_stats(stats[0], live=True))


def show_received(console: Console, stack: Stack, tenant: Tenant) -> None:
    first = tenant.pools[0]
    found = received_message(stack, first.pool.internal_name)
    console.print()
    if found is None:
        console.print(Text(f"(the sink kept no message from {first.plan.label})", style="dim"))
        return
    record, data = found
    console.print(Text(f"A message of {first.plan.label} as the destination received it "
                       f"(sink message #{record['n']}, {len(data):,} bytes, connected from {record['peer']}; "
                       f"headers only)", style="bold"))
    custom = {name.lower() for name, _ in first.plan.headers}
    body = Text()
    for line in header_section(data).split("\n"):
        name = line.split(":", 1)[0].strip().lower()
        style = "bold cyan" if name in STAMPED_HEADERS or name == "received" else "cyan" if name in custom else ""
        body.append(line + "\n", style=style)
    console.print(body, end="")


# -- the run ----------------------------------------------------------------------------------


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)


async def run(options: DemoOptions, data_dir: Path, console: Console) -> int:
    def say(message: str) -> None:
        console.print(Text(message))

    t0 = time.monotonic()
    async with Stack(StackOptions(data_dir=data_dir, workers=options.workers)) as stack:
        say(f"poolmta demo: embedded Redis, control plane (gRPC {stack.grpc_address}), data plane "
            f"({options.workers} workers, SMTP {_join(stack.smtp_address)}) and sink ({_join(stack.sink_address)}) "
            f"up in {time.monotonic() - t0:.1f}s; data in {data_dir}")
        async with grpc.aio.insecure_channel(stack.grpc_address) as channel:
            tenant = await provision(channel, stack.admin_token, options.pools)
            say(f"MTA server {tenant.server.server_id} ({tenant.server.hostname}, zone {tenant.server.zone}); "
                f"account {tenant.account.name} (user {tenant.account.user_id}, PRO)")
            for p in tenant.pools:
                default = ", default" if p.pool.is_default else ""
                say(f"  Pool {p.pool.label} = {p.pool.internal_name} ({_ips(len(p.plan.addresses))}: "
                    f"{', '.join(p.plan.addresses)}{default}); Bridge {p.plan.bridge} (user {p.bridge.username}, "
                    f"feed type {p.bridge.feed_type})")
            status = await wait_for_routing(channel, stack.admin_token, tenant.server.server_id, options.workers,
                                            START_TIMEOUT, stack.check_children)
            say(f"routing version {status.routing_version} served by {len(status.workers)} data-plane workers")

            batches, tallies = plan_messages(options)
            api = Api(channel, tenant.token)
            with _progress(console) as progress:
                task = progress.add_task("Sending through the Bridges", total=options.messages, rate="")
                started = time.monotonic()
                sending = asyncio.create_task(
                    send_all(tenant, stack.smtp_address, batches, tallies, options.sessions, progress, task))
                while not sending.done():
                    await asyncio.wait({sending}, timeout=0.25)
                    done = sum(t.sent for t in tallies)
                    progress.update(task, rate=f"{done / max(time.monotonic() - started, 1e-3):,.0f} msg/s")
                    if not sending.done():
                        stack.check_children()
                send_problems = sending.result()
                stats = await wait_until_final(api, tenant, tallies, options.timeout, progress, stack)
            sent = sum(t.sent for t in tallies)
            say(f"sent {sent:,} messages in {time.monotonic() - started:.1f}s "
                f"({sum(t.bounce for t in tallies)} to bouncing and {sum(t.defer for t in tallies)} to deferring "
                "recipients); every one delivered or bounced")

            pools = list((await api("pools", "ListPools", pb.ListPoolsRequest())).pools)
            counts = await settled_sink_counts(stack, sum(s.delivered for s in stats))
            show_panel(console, tenant, pools, stats)
            show_received(console, stack, tenant)
            console.print()
            sources, mismatches = sources_table(tenant, stats, counts)
            console.print(sources)

            problems = send_problems[:10] + check_totals(tallies, stats, counts) + mismatches
            console.print()
            if problems:
                console.print(Text("CHECK FAILED:", style="bold red"))
                for problem in problems:
                    console.print(Text(f"  - {problem}"))
            else:
                delivered = sum(s.delivered for s in stats)
                bounced = sum(s.bounced for s in stats)
                console.print(Text(
                    f"OK: StatsService counts {sent:,} sent = {delivered:,} delivered + {bounced:,} bounced, "
                    f"exactly what the demo sent, Pool by Pool and IP by IP; the sink accepted "
                    f"{int(counts.get('accepted', 0)):,} messages, as many as were delivered, "
                    f"each from the IP StatsService credits.", style="bold green"))
            if options.keep_running:
                show_endpoints(console, stack, tenant, data_dir)
                try:
                    await asyncio.Event().wait()  # until Ctrl-C / SIGTERM cancels us
                except asyncio.CancelledError:
                    # Stopping here is the normal end of --keep-running: the exit code
                    # stays the checks' verdict.
                    asyncio.current_task().uncancel()
            return EXIT_FAILED if problems else EXIT_OK


def show_endpoints(console: Console, stack: Stack, tenant: Tenant, data_dir: Path) -> None:
    grpc_flags = f"--grpc {stack.grpc_address}"
    lines = [
        "",
        "Everything keeps running until Ctrl-C:",
        f"  control plane (gRPC)  {stack.grpc_address}",
        f"  admin token           {stack.admin_token}",
        f"  acme's account token  {tenant.token}",
        f"  SMTP Bridge           {_join(stack.smtp_address)} (AUTH PLAIN/LOGIN without STARTTLS on loopback)",
    ]
    for p in tenant.pools:
        lines.append(f"    {p.plan.bridge:<12} {p.pool.label:<20} user {p.bridge.username}  secret {p.secret}")
    lines += [
        f"  sink (destination)    {_join(stack.sink_address)}; counts in {stack.sink_counts_path}",
        f"  data directory        {data_dir} (removed on exit)",
        "",
        "Try:",
        f"  poolmta {grpc_flags} --token {tenant.token} pool list",
        f"  poolmta {grpc_flags} --token {tenant.token} stats pool {tenant.pools[0].pool.label} --watch",
        f"  poolmta {grpc_flags} --token {stack.admin_token} server status 1",
    ]
    for line in lines:
        console.print(Text(line))


def _ips(n: int) -> str:
    return "1 IP" if n == 1 else f"{n} IPs"


def _join(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


async def _main(options: DemoOptions, data_dir: Path, console: Console) -> int:
    """Run the demo; the first SIGINT / SIGTERM cancels it (everything is still stopped),
    later ones are ignored while it stops."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            sys.stderr.write("\npoolmta demo: stopping everything it started...\n")
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        return await run(options, data_dir, console)
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return EXIT_INTERRUPTED
    except DemoError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"poolmta demo: error: {exc}\n")
        return EXIT_FAILED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = argparse.ArgumentParser(
        prog="poolmta demo",
        description="The whole of poolmta on loopback in one command: Redis, control plane, data plane and a "
        "destination MTA; an account with three Pools and their Bridges; a few thousand messages; the per-Pool "
        "stats panel read back from StatsService. Exit 0 when the figures add up to what was sent.",
    )
    p.add_argument("--messages", type=int, default=d.messages, metavar="N",
                   help=f"messages to send (default {d.messages})")
    p.add_argument("--sessions", type=int, default=d.sessions, metavar="C",
                   help=f"concurrent SMTP sessions (default {d.sessions})")
    p.add_argument("--per-session", type=int, default=d.per_session, metavar="K",
                   help=f"messages per SMTP session (default {d.per_session})")
    p.add_argument("--workers", type=int, default=d.workers, metavar="K",
                   help=f"data-plane worker processes (default {d.workers})")
    p.add_argument("--timeout", type=float, default=d.timeout, metavar="SECONDS",
                   help=f"how long to wait for every message to be delivered or bounced (default {d.timeout:g})")
    p.add_argument("--keep-running", action="store_true",
                   help="leave everything running after the panel, print how to reach it, stop on Ctrl-C")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        options = DemoOptions(messages=args.messages, sessions=args.sessions, per_session=args.per_session,
                              workers=args.workers, timeout=args.timeout, keep_running=args.keep_running)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"poolmta demo: error: {exc}\n")
        return 2
    console = render.Printer(json_mode=False).console
    data_dir = Path(tempfile.mkdtemp(prefix="poolmta-demo-"))
    try:
        return asyncio.run(_main(options, data_dir, console))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

