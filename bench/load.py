"""The end-to-end load harness: N messages of S bytes over C concurrent SMTP sessions.

    python bench/load.py --messages 5000 --size 5K --concurrency 20 [--per-connection 20]
                         [--baseline aiosmtpd] [--target NAME=HOST:PORT ...] [--json]

Without --target it stands up the whole of poolmta on loopback, as `poolmta demo`
does (embedded Redis and control plane in this process; the data plane with 2
workers routing every domain to `poolmta sink`; the sink), opens one Bridge on a
Pool of three IPs, and drives that Bridge with SMTP AUTH. It reports:

* accept rate: messages answered 250 per second, from the first connection to the
  last 250;
* relayed rate: messages the sink accepted per second over the same start, up to
  the moment its counts file first showed all N (the file is rewritten every
  200 ms, so this is exact to about 0.2 s);
* p50 / p99 accept latency: from the end of DATA (the last byte of `<CRLF>.<CRLF>`
  handed to the kernel) to the 250;
* CPU seconds per 1,000 messages of the poolmta processes, from utime + stime in
  /proc: the data-plane process tree (supervisor, workers and whatever they start,
  reaped children included), the embedded redis-server, and this process, which
  runs the control plane and otherwise only waits. The load generator runs in a
  child process of its own, so it is not counted; the sink is the destination, not
  poolmta, and is not counted either. Measured from the first connection until the
  sink has all N messages.

`--target [NAME=]HOST:PORT` drives any SMTP server instead (no AUTH), e.g. Postfix,
with the same client and workload; `--poolmta` keeps the poolmta run as well. With
`--sink-listen HOST:PORT` the harness also runs a sink there (a fixed port, for a
target configured to relay to it) and reports the target's relayed rate.
`--cpu-pid NAME=PID` adds the CPU of a target's process tree (e.g. Postfix's master).
`--baseline aiosmtpd` adds a bare aiosmtpd that only answers 250, started by the
harness on a free port: the floor of what a Python SMTP server costs.
`--rest` measures poolmta again in the same session through the REST Bridge
(`POST /v1/messages` over C keep-alive HTTP sessions, `bench/load_rest.py`):
its rates against the SMTP run's are what the REST Bridge costs; with
`--accept-only` too, both Bridges are measured with delivery off as well.
`--dkim rsa` / `--dkim ed25519` (repeatable) measures poolmta again in the same
session with a DKIM key of that algorithm on the sender's domain, so every message
is signed: the end-to-end cost of signing is the CPU per message against the run
without a key.

Every loop is bounded (`--timeout`); everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Forking the load generator while the control plane's gRPC threads run makes grpc
# log a line about its fork handlers; the child execs at once, so nothing is lost.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

CLIENT_MODE = "_drive"
BASELINE_MODE = "_baseline"
BASELINE_READY = "baseline ready listen="
SENDER_DOMAIN = "bench.example"
SENDER = f"load@{SENDER_DOMAIN}"
# --dkim: the algorithms a key can be generated with (pb.DkimAlgorithm names).
DKIM_ALGORITHMS = {"rsa": "RSA_SHA256", "ed25519": "ED25519_SHA256"}
RECIPIENT_DOMAIN = "example.net"
LINE = 76  # body line length, CRLF excluded
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_SECONDS = 0.05
CONNECT_TIMEOUT = 10.0
REPLY_TIMEOUT = 60.0


def parse_size(text: str) -> int:
    """Bytes, with an optional K or M suffix (1 K = 1,000 bytes: 5K is 5,000)."""
    value = text.strip().lower().removesuffix("b")
    multiplier = {"k": 1000, "m": 1000**2}.get(value[-1:], 1)
    if multiplier != 1:
        value = value[:-1]
    try:
        size = int(float(value) * multiplier)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or a K / M suffix)") from None
    if size < 200:
        raise argparse.ArgumentTypeError("--size must be at least 200 bytes (the headers alone take ~150)")
    return size


@dataclass(frozen=True)
class Workload:
    messages: int
    size: int
    concurrency: int
    per_connection: int
    timeout: float = 300.0
    recipient_domain: str = RECIPIENT_DOMAIN  # bench/postfix_compare.py routes its own

    def __post_init__(self) -> None:
        if min(self.messages, self.concurrency, self.per_connection) < 1:
            raise ValueError("--messages, --concurrency and --per-connection must be at least 1")


# -- the load generator (runs in its own process) ----------------------------------------


class SmtpFailure(Exception):
    def __init__(self, step: str, reply: str):
        super().__init__(f"{step}: {reply.strip()}")


def message_bytes(n: int, size: int, recipient_domain: str = RECIPIENT_DOMAIN) -> bytes:
    """Message number `n`, exactly `size` bytes as sent (headers, a body of 76-character
    lines, CRLF endings; no line starts with '.', so no dot-stuffing), without the
    terminating `.<CRLF>`."""
    head = (
        f"From: Load <{SENDER}>\r\nTo: <user{n}@{recipient_domain}>\r\nSubject: load test message {n}\r\n"
        f"Message-ID: <{n}.{os.getpid()}@bench.example>\r\nDate: Fri, 28 Nov 2025 09:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    room = max(size - len(head), 2)
    line = (b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:LINE] + b"\r\n"
    body = line * (room // len(line))
    rest = room - len(body)
    if rest >= 2:
        body += b"x" * (rest - 2) + b"\r\n"
    return head + body


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        if not line:
            raise ConnectionError("the server closed the connection")
        lines.append(line)
        if line[3:4] != b"-":
            break
    return int(lines[-1][:3]), b"".join(lines).decode("utf-8", "replace")


async def _step(reader, writer, command: bytes, expect: int, step: str) -> None:
    writer.write(command)
    code, text = await _reply(reader)
    if code != expect:
        raise SmtpFailure(step, text)


async def run_sessions(workload: Workload, session: Callable[[list[int], list[float], list[str]], Awaitable[None]]
                       ) -> dict:
    """Run `workload.concurrency` sessions, `session(remaining, latencies, errors)`, each
    taking message numbers from `remaining` until none are left, within --timeout; the
    result as a JSON-able dict (latencies in seconds)."""
    remaining = list(range(workload.messages, 0, -1))
    latencies: list[float] = []
    errors: list[str] = []
    started = time.time()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(session(remaining, latencies, errors)) for _ in range(workload.concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=workload.timeout)
    elapsed = time.perf_counter() - t0
    if pending:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        errors.append(f"stopped after --timeout {workload.timeout:g}s with messages left to send")
    return {"accepted": len(latencies), "failed": workload.messages - len(latencies), "errors": errors,
            "started": started, "elapsed": elapsed, "latencies": latencies}


async def drive(host: str, port: int, username: str, secret: str, workload: Workload) -> dict:
    """Send the workload over SMTP; the result as `run_sessions` gives it."""
    auth = b"AUTH PLAIN " + base64.b64encode(f"\0{username}\0{secret}".encode()) + b"\r\n" if username else b""

    async def session(remaining: list[int], latencies: list[float], errors: list[str]) -> None:
        while remaining:
            writer = None
            batch = [remaining.pop() for _ in range(min(workload.per_connection, len(remaining)))]
            done = 0
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
                code, text = await _reply(reader)
                if code != 220:
                    raise SmtpFailure("banner", text)
                await _step(reader, writer, b"EHLO load.bench.example\r\n", 250, "EHLO")
                if auth:
                    await _step(reader, writer, auth, 235, "AUTH")
                for n in batch:
                    await _step(reader, writer, f"MAIL FROM:<{SENDER}>\r\n".encode(), 250, "MAIL")
                    rcpt = f"RCPT TO:<user{n}@{workload.recipient_domain}>\r\n"
                    await _step(reader, writer, rcpt.encode(), 250, "RCPT")
                    await _step(reader, writer, b"DATA\r\n", 354, "DATA")
                    writer.write(message_bytes(n, workload.size, workload.recipient_domain) + b".\r\n")
                    await writer.drain()
                    t0 = time.perf_counter()
                    code, text = await _reply(reader)
                    if code != 250:
                        raise SmtpFailure("end of DATA", text)
                    latencies.append(time.perf_counter() - t0)
                    done += 1
                writer.write(b"QUIT\r\n")
                await writer.drain()
            except (OSError, TimeoutError, ValueError, SmtpFailure) as exc:
                if len(errors) < 10:
                    errors.append(f"{type(exc).__name__}: {exc} ({len(batch) - done} message(s) of the "
                                  "connection not accepted)")
            finally:
                if writer is not None:
                    writer.close()

    return await run_sessions(workload, session)


def client_main(spec: str) -> int:
    request = json.loads(spec)
    workload = Workload(**request["workload"])
    if request.get("rest"):
        from load_rest import drive_rest  # bench/ is this script's directory

        result = asyncio.run(drive_rest(request["host"], request["port"], request["username"], request["secret"],
                                        workload, run_sessions, message_bytes, SENDER, RECIPIENT_DOMAIN,
                                        CONNECT_TIMEOUT, REPLY_TIMEOUT))
    else:
        result = asyncio.run(drive(request["host"], request["port"], request.get("username", ""),
                                   request.get("secret", ""), workload))
    json.dump(result, sys.stdout)
    return 0


async def run_client(host: str, port: int, workload: Workload, username: str = "", secret: str = "",
                     rest: bool = False) -> dict:
    """Run the load generator in a child process (so its CPU is not the server's);
    `rest`: through the REST Bridge at host:port instead of SMTP."""
    spec = json.dumps({"host": host, "port": port, "username": username, "secret": secret, "rest": rest,
                       "workload": asdict(workload)})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, CLIENT_MODE, spec, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), workload.timeout + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator exited with code {proc.returncode}")
    return json.loads(out)


# -- the bare aiosmtpd baseline (runs in its own process) ------------------------------------


class _Accept:
    async def handle_DATA(self, server, session, envelope) -> str:
        return "250 2.0.0 Ok"


def baseline_main() -> int:
    from aiosmtpd.smtp import SMTP

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(_Accept(), hostname="baseline.bench.example"), "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        print(f"{BASELINE_READY}{host}:{port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


# -- CPU accounting ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, list[str]] | None:
    """(ppid, fields after the command name) of a live process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].decode().split()
    return int(fields[1]), fields


def tree_cpu_seconds(roots: list[int]) -> float:
    """utime + stime of every live process under `roots` (roots included), plus
    cutime + cstime (the children each of them has reaped)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    ticks = 0
    seen = set()
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        fields = table[pid][1]
        # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
        todo.extend(children.get(pid, ()))
    return ticks / CLK_TCK


# -- one measured run -------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    messages: int
    size: int
    concurrency: int
    per_connection: int
    accepted: int
    failed: int
    accept_seconds: float
    accept_rate: float
    p50_ms: float
    p99_ms: float
    relayed: int | None = None
    relayed_rate: float | None = None
    cpu_seconds: float | None = None
    cpu_per_1000: float | None = None
    cpu_includes: str = ""
    errors: list[str] = field(default_factory=list)
    # Redis growth over the run (issue 14), per 10k messages accepted: keys, used
    # memory (MB) and the AOF on disk (MB); poolmta only.
    redis_keys_per_10k: float | None = None
    redis_mb_per_10k: float | None = None
    aof_mb_per_10k: float | None = None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarise(system: str, workload: Workload, client: dict) -> Result:
    latencies = client["latencies"]
    elapsed = client["elapsed"]
    return Result(
        system=system, messages=workload.messages, size=workload.size, concurrency=workload.concurrency,
        per_connection=workload.per_connection, accepted=client["accepted"], failed=client["failed"],
        accept_seconds=round(elapsed, 3), accept_rate=round(client["accepted"] / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(_percentile(latencies, 50) * 1000, 2), p99_ms=round(_percentile(latencies, 99) * 1000, 2),
        errors=client["errors"],
    )


def read_counts(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


async def wait_relayed(counts_path: Path, before: int, expected: int, timeout: float) -> tuple[int, float | None]:
    """(messages the sink accepted since `before`, the wall time its counts first showed
    all `expected`, or None when they did not within `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = read_counts(counts_path)
        relayed = int(counts.get("accepted", 0)) - before
        if relayed >= expected:
            return relayed, float(counts.get("updated_at", time.time()))
        if time.monotonic() > deadline:
            return relayed, None
        await asyncio.sleep(POLL_SECONDS)


def _with_relay(result: Result, client: dict, relayed: int, relayed_at: float | None) -> None:
    result.relayed = relayed
    if relayed_at is not None and relayed:
        result.relayed_rate = round(relayed / max(relayed_at - client["started"], 1e-3), 1)


def _with_cpu(result: Result, seconds: float, includes: str) -> None:
    result.cpu_seconds = round(seconds, 2)
    result.cpu_per_1000 = round(seconds / max(result.accepted, 1) * 1000, 3)
    result.cpu_includes = includes


def redis_footprint(url: str, aof_dir: Path) -> tuple[int, int, int]:
    """(keys, used memory bytes, bytes of the AOF files) of the Redis at `url`."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        aof = sum(p.stat().st_size for p in aof_dir.glob("*.aof*") if p.is_file())
        return client.dbsize(), client.info("memory")["used_memory"], aof
    finally:
        client.close()


async def settled_footprint(url: str, aof_dir: Path, timeout: float = 30.0) -> tuple[int, int, int]:
    """The footprint once the data plane's stats flushes stop changing the key count
    (the last events and counts of the run are in), checked every second."""
    last = await asyncio.to_thread(redis_footprint, url, aof_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = await asyncio.to_thread(redis_footprint, url, aof_dir)
        if now[0] == last[0]:
            return now
        last = now
    return last


def _with_redis(result: Result, before: tuple[int, int, int], after: tuple[int, int, int]) -> None:
    per = 10_000 / max(result.accepted, 1)
    result.redis_keys_per_10k = round((after[0] - before[0]) * per, 1)
    result.redis_mb_per_10k = round((after[1] - before[1]) * per / 1e6, 2)
    result.aof_mb_per_10k = round((after[2] - before[2]) * per / 1e6, 2)


async def measure_poolmta(workload: Workload, workers: int, accept_only: bool = False,
                          dkim: str | None = None, rest: bool = False) -> Result:
    """Stand up poolmta (as the demo does), drive one Bridge with AUTH, measure.
    `accept_only`: the data plane spools and delivers nothing (`--no-delivery`).
    `rest`: send through the REST Bridge (`bench/load_rest.py`) instead of SMTP.
    `dkim`: a key of DKIM_ALGORITHMS on the sender's domain, so every message is signed."""
    import grpc

    from control._pb.poolmta.v1 import poolmta_pb2 as pb

    from control.cli.demo.plan import DEMO_POOLS
    from control.cli.demo.provision import Api, provision, wait_for_routing
    from control.cli.demo.stack import Stack, StackOptions

    with tempfile.TemporaryDirectory(prefix="poolmta-load-") as tmp:
        # One load generator is one client address: let all its sessions in, with room
        # for a closed session's slot that the other workers have not seen freed yet.
        cap = ("--max-connections-per-address", str(2 * workload.concurrency))
        options = StackOptions(data_dir=Path(tmp), workers=workers, sink_store=False,
                               dataplane_args=(*cap, "--no-delivery") if accept_only else cap)
        async with Stack(options) as stack:
            async with grpc.aio.insecure_channel(stack.grpc_address) as channel:
                algorithm = None if dkim is None else pb.DkimAlgorithm.Value(DKIM_ALGORITHMS[dkim])
                tenant = await provision(channel, stack.admin_token, DEMO_POOLS[:1], dkim_algorithm=algorithm,
                                         dkim_domain=SENDER_DOMAIN)
                await wait_for_routing(channel, stack.admin_token, tenant.server.server_id, workers, 60,
                                       stack.check_children)
            pool = tenant.pools[0]
            roots = [stack.dataplane.pid, stack.redis.pid, os.getpid()]
            before = int(read_counts(stack.sink_counts_path).get("accepted", 0))
            redis_dir = stack.redis.redis_dir
            footprint0 = await settled_footprint(stack.redis.url, redis_dir)
            cpu0 = tree_cpu_seconds(roots[:2]) + _self_cpu()
            client = await run_client(*(stack.http_address if rest else stack.smtp_address), workload,
                                      pool.bridge.username, pool.secret, rest=rest)
            if not accept_only:
                relayed, relayed_at = await wait_relayed(stack.sink_counts_path, before, client["accepted"],
                                                         workload.timeout)
            cpu = tree_cpu_seconds(roots[:2]) + _self_cpu() - cpu0
            name = "poolmta (accept only)" if accept_only else "poolmta"
            name = f"{name} REST" if rest else name
            result = summarise(name if dkim is None else f"{name} DKIM {dkim}", workload, client)
            if not accept_only:
                _with_relay(result, client, relayed, relayed_at)
            _with_cpu(result, cpu, f"data plane tree ({workers} workers), redis-server, control plane process")
            _with_redis(result, footprint0, await settled_footprint(stack.redis.url, redis_dir))
            if dkim is not None:  # never report signing costs of mail that went unsigned
                async with grpc.aio.insecure_channel(stack.grpc_address) as channel:
                    stats = await Api(channel, tenant.token)("stats", "GetPoolStats",
                                                             pb.GetPoolStatsRequest(smtp_id=pool.pool.smtp_id))
                if stats.dkim_unsigned:
                    result.failed += stats.dkim_unsigned
                    result.errors.append(f"{stats.dkim_unsigned} message(s) went unsigned")
            return result


def _self_cpu() -> float:
    """This process's own CPU (threads included), not its reaped children's (the clients)."""
    times = os.times()
    return times.user + times.system


async def measure_target(name: str, host: str, port: int, workload: Workload, counts_path: Path | None,
                         cpu_pid: int | None) -> Result:
    before = int(read_counts(counts_path).get("accepted", 0)) if counts_path else 0
    cpu0 = tree_cpu_seconds([cpu_pid]) if cpu_pid else 0.0
    client = await run_client(host, port, workload)
    result = summarise(name, workload, client)
    if counts_path is not None:
        relayed, relayed_at = await wait_relayed(counts_path, before, client["accepted"], workload.timeout)
        _with_relay(result, client, relayed, relayed_at)
    if cpu_pid:
        _with_cpu(result, tree_cpu_seconds([cpu_pid]) - cpu0, f"process tree of pid {cpu_pid}")
    return result


async def measure_baseline(workload: Workload) -> Result:
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, BASELINE_MODE, stdout=subprocess.PIPE,
                                                stdin=subprocess.DEVNULL)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if BASELINE_READY not in line:
            raise RuntimeError("the aiosmtpd baseline did not start")
        host, _, port = line.split(BASELINE_READY, 1)[1].strip().rpartition(":")
        cpu0 = tree_cpu_seconds([proc.pid])
        client = await run_client(host, int(port), workload)
        result = summarise("bare aiosmtpd (250 only)", workload, client)
        _with_cpu(result, tree_cpu_seconds([proc.pid]) - cpu0, "the aiosmtpd process")
        return result
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class _TargetSink:
    """A sink on a fixed address for targets that relay to it (e.g. Postfix's relayhost)."""

    def __init__(self, listen: str, directory: Path):
        self.listen = listen
        self.counts_path = directory / "target-sink-counts.json"
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> _TargetSink:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dataplane.sink", "--listen", self.listen, "--counts-file", str(self.counts_path),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        if "sink ready" not in line:
            await self.__aexit__()
            raise RuntimeError(f"the sink did not start on {self.listen}")
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- the report -------------------------------------------------------------------------------


def _num(value: float | int | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def render(results: list[Result]) -> str:
    header = ("system", "msgs", "size", "C", "K", "accepted", "accept/s", "relayed", "relayed/s", "p50 ms",
              "p99 ms", "CPU s/1k")
    rows = [header] + [
        (r.system, _num(r.messages), f"{r.size / 1000:g}K", str(r.concurrency), str(r.per_connection),
         _num(r.accepted), _num(r.accept_rate), _num(r.relayed), _num(r.relayed_rate), _num(r.p50_ms, ".1f"),
         _num(r.p99_ms, ".1f"), _num(r.cpu_per_1000, ".2f"))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"CPU of {r.system}: {r.cpu_includes}" for r in results if r.cpu_includes]
    notes += [f"Redis growth of {r.system} per 10k messages: {r.redis_keys_per_10k:g} keys, "
              f"{r.redis_mb_per_10k:g} MB used memory, {r.aof_mb_per_10k:g} MB of AOF"
              for r in results if r.redis_keys_per_10k is not None]
    for r in results:
        if r.failed:
            notes.append(f"{r.system}: {r.failed} message(s) not accepted; first errors: {'; '.join(r.errors[:3])}")
        if r.relayed is not None and r.relayed < r.accepted:
            notes.append(f"{r.system}: only {r.relayed} of {r.accepted} accepted messages reached the sink in time")
    return "\n".join(lines + [""] + list(dict.fromkeys(notes)))


# -- command line -----------------------------------------------------------------------------


def _named_address(text: str) -> tuple[str, str, int]:
    name, sep, address = text.rpartition("=")
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected [NAME=]HOST:PORT, got {text!r}")
    return (name if sep else address), host, int(port)


def _named_pid(text: str) -> tuple[str, int]:
    name, sep, pid = text.rpartition("=")
    if not sep or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PID, got {text!r}")
    return name, int(pid)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/load.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2000, metavar="N", help="messages per system (default 2000)")
    p.add_argument("--size", type=parse_size, default=5000, metavar="S", help="bytes per message, e.g. 5K (default)")
    p.add_argument("--concurrency", type=int, default=20, metavar="C", help="concurrent SMTP sessions (default 20)")
    p.add_argument("--per-connection", type=int, default=1, metavar="K",
                   help="messages per connection; 1 = a connection per message, like smtp-source (default 1)")
    p.add_argument("--target", type=_named_address, action="append", default=[], metavar="[NAME=]HOST:PORT",
                   help="drive this SMTP server instead of poolmta (no AUTH); repeatable")
    p.add_argument("--poolmta", action="store_true", help="with --target: measure poolmta too")
    p.add_argument("--accept-only", action="store_true",
                   help="also measure poolmta with delivery off (data plane --no-delivery): the Bridge alone")
    p.add_argument("--baseline", choices=["aiosmtpd"], help="also measure a bare aiosmtpd that only answers 250")
    p.add_argument("--rest", action="store_true",
                   help="also measure poolmta through the REST Bridge (POST /v1/messages, C keep-alive sessions)")
    p.add_argument("--dkim", choices=sorted(DKIM_ALGORITHMS), action="append", default=[],
                   help="also measure poolmta signing every message with a DKIM key of this algorithm; repeatable")
    p.add_argument("--sink-listen", metavar="HOST:PORT",
                   help="run a sink here for the targets to relay to, and report their relayed rate")
    p.add_argument("--cpu-pid", type=_named_pid, action="append", default=[], metavar="NAME=PID",
                   help="count the CPU of this process tree for the target NAME (e.g. Postfix's master)")
    p.add_argument("--workers", type=int, default=2, metavar="K", help="poolmta data-plane workers (default 2)")
    p.add_argument("--repeat", type=int, default=1, metavar="R", help="measure every system R times (default 1)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="bound on each run's sending and on waiting for the sink (default 300)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


async def run(args: argparse.Namespace) -> list[Result]:
    workload = Workload(args.messages, args.size, args.concurrency, args.per_connection, args.timeout)
    pids = dict(args.cpu_pid)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="poolmta-load-sink-") as tmp:
        sink = _TargetSink(args.sink_listen, Path(tmp)) if args.sink_listen and args.target else None
        if sink is not None:
            await sink.__aenter__()
        try:
            for _ in range(args.repeat):
                if not args.target or args.poolmta:
                    results.append(await measure_poolmta(workload, args.workers))
                if args.rest:
                    results.append(await measure_poolmta(workload, args.workers, rest=True))
                for algorithm in args.dkim:
                    results.append(await measure_poolmta(workload, args.workers, dkim=algorithm))
                if args.accept_only:
                    results.append(await measure_poolmta(workload, args.workers, accept_only=True))
                    if args.rest:
                        results.append(await measure_poolmta(workload, args.workers, accept_only=True, rest=True))
                for name, host, port in args.target:
                    results.append(await measure_target(name, host, port, workload,
                                                        sink.counts_path if sink else None, pids.get(name)))
                if args.baseline:
                    results.append(await measure_baseline(workload))
        finally:
            if sink is not None:
                await sink.__aexit__()
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CLIENT_MODE]:
        return client_main(argv[1])
    if argv[:1] == [BASELINE_MODE]:
        return baseline_main()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        Workload(args.messages, args.size, args.concurrency, args.per_connection, args.timeout)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        results = asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(render(results))
    return 0 if all(r.failed == 0 and (r.relayed is None or r.relayed >= r.accepted) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
