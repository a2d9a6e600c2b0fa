"""Helpers and fixtures for the data-plane tests: snapshots written straight into
Redis (no control plane), real `python -m dataplane` and `python -m dataplane.sink`
processes, concurrent senders, spool, stats and event readers.

Its fixtures (`start_dataplane`, `start_sink`) reach every test module through
`pytest_plugins` in `tests/conftest.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.parser
import email.policy
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiosmtplib
import pytest
import redis

from control.contract import event_log, rediskeys
from control.contract.delivery_event import decode_list
from control.contract.secrets import hash_secret
from control.contract.snapshot import (
    IP_ACTIVE,
    BridgeRoute,
    IpRoute,
    PoolRoute,
    Snapshot,
    encode,
)
from dataplane import spool
from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"dataplane ready server_id=(\d+) smtp=(\S+) workers=(\d+) snapshot=(\S+)(?: inbound=(\S+))?"
                   r"(?: metrics=(\S+))?(?: http=(\S+))?")
LISTENING = re.compile(r"worker (\d+) pid (\d+) listening")
QUEUED = re.compile(r"queued as ([0-9a-f]{26})")

ZONE = "US-1"
HOSTNAME = "mta-test.example"


# ---------------------------------------------------------------------------
# Snapshots
# ---------------------------------------------------------------------------


def make_pool(smtp_id: int, ips, *, user_id: int = 3, tag: str = "promo", server_id: int = 1,
              feed_type: str = "newsletter", headers=()) -> PoolRoute:
    """A pool; `ips` is [(address, weight)] or [(address, weight, state)]."""
    routes = []
    for entry in ips:
        address, weight, state = (*entry, IP_ACTIVE)[:3]
        routes.append(IpRoute(address, weight, state, f"out-{address.replace('.', '-')}.example"))
    return PoolRoute(
        smtp_id=smtp_id, user_id=user_id, internal_name=f"{tag}-{user_id}-{server_id}-pool-{smtp_id}",
        feed_type=feed_type, headers=tuple(headers), ips=tuple(routes),
    )


def make_bridge(bridge_id: int, smtp_id: int, secret: str, *, username: str | None = None,
                feed_type: str = "", trusted=(), user_id: int = 3) -> BridgeRoute:
    return BridgeRoute(
        bridge_id=bridge_id, user_id=user_id, name=f"bridge-{bridge_id}",
        username=username or f"br-test{bridge_id}", secret_hash=hash_secret(secret),
        smtp_id=smtp_id, feed_type=feed_type, trusted_networks=tuple(trusted),
    )


def make_snapshot(server_id: int, version: int, pools, bridges, *, zone: str = ZONE) -> Snapshot:
    return Snapshot(server_id=server_id, version=version, hostname=HOSTNAME, zone=zone,
                    pools=tuple(pools), bridges=tuple(bridges), published_at_ms=int(time.time() * 1000))


def publish(client: redis.Redis, snap: Snapshot, *, notify: bool = True) -> None:
    """Publish as the control plane does: immutable version key, `current`, then the notice."""
    client.set(rediskeys.snapshot_key(snap.server_id, snap.version), encode(snap))
    client.set(rediskeys.snapshot_current_key(snap.server_id), snap.version)
    if notify:
        client.publish(rediskeys.snapshot_channel(snap.server_id), str(snap.version))


def acked_versions(client: redis.Redis, server_id: int, supervisor_pid: int) -> dict[str, int]:
    """worker id -> acked version, for the live workers of one data-plane process."""
    now_ms = int(time.time() * 1000)
    found = {}
    for field, value in client.hgetall(rediskeys.worker_acks_key(server_id)).items():
        worker_id = field.decode()
        if worker_id.split(":")[1] != str(supervisor_pid):
            continue
        version, _, heartbeat = value.decode().partition(":")
        if now_ms - int(heartbeat) <= rediskeys.WORKER_HEARTBEAT_TTL_MS:
            found[worker_id] = int(version)
    return found


# ---------------------------------------------------------------------------
# Data-plane processes
# ---------------------------------------------------------------------------


class Dataplane:
    """A real `python -m dataplane` process; its stdout and stderr are collected.

    `delivery=False` (the default) adds `--no-delivery`: tests of the accept path
    read the spool records the delivery engine would consume. The inbound listener
    gets a free port (`inbound_port`) unless `args` give `--inbound-listen`, and so do
    the metrics (`metrics_port`) and the REST Bridge (`http_port`) unless they give
    `--metrics-listen` / `--http-listen`.
    """

    def __init__(self, data_dir: Path, redis_url: str, server_id: int, *, workers: int = 1,
                 listen: str = "127.0.0.1:0", args=(), env=None, delivery: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.redis_url = redis_url
        self.server_id = server_id
        self.workers = workers
        self.cmd = [
            sys.executable, "-m", "dataplane", "--server-id", str(server_id), "--data-dir", str(data_dir),
            "--smtp-listen", listen, "--workers", str(workers), *args,
        ]
        if "--inbound-listen" not in args:
            self.cmd += ["--inbound-listen", "127.0.0.1:0"]
        if "--metrics-listen" not in args:
            self.cmd += ["--metrics-listen", "127.0.0.1:0"]
        if "--http-listen" not in args:  # never the fixed default port: tests run side by side
            self.cmd += ["--http-listen", "127.0.0.1:0"]
        if not delivery:  # tests of the accept path read the records the delivery engine would consume
            self.cmd.append("--no-delivery")
        if redis_url:
            self.cmd += ["--redis-url", redis_url]
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self.host = ""
        self.port = 0
        self.inbound_port = 0
        self.metrics_port = 0
        self.http_port = 0

    def _pump(self, stream) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line.rstrip("\n"))
        stream.close()

    def start(self, timeout: float = 60.0) -> Dataplane:
        env = dict(os.environ if self.env is None else self.env)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        self._readers = [threading.Thread(target=self._pump, args=(s,), daemon=True)
                         for s in (self.proc.stdout, self.proc.stderr)]
        for reader in self._readers:
            reader.start()
        if not wait_until(lambda: self.ready_match() or self.proc.poll() is not None, timeout):
            raise AssertionError(f"data plane not ready within {timeout}s:\n{self.log()}")
        match = self.ready_match()
        if match is None:
            raise AssertionError(f"data plane exited with {self.proc.returncode}:\n{self.log()}")
        host, _, port = match.group(2).rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        if match.group(5):
            self.inbound_port = int(match.group(5).rpartition(":")[2])
        if match.group(6):
            self.metrics_port = int(match.group(6).rpartition(":")[2])
        if match.group(7):
            self.http_port = int(match.group(7).rpartition(":")[2])
        return self

    def ready_match(self):
        with self._lock:
            for line in self.lines:
                match = READY.search(line)
                if match:
                    return match
        return None

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> dict[int, int]:
        """worker index -> pid of its newest process that reported listening."""
        pids = {}
        with self._lock:
            for line in self.lines:
                match = LISTENING.search(line)
                if match:
                    pids[int(match.group(1))] = int(match.group(2))
        return pids

    def wait_version(self, client: redis.Redis, version: int, timeout: float = 15.0) -> None:
        """Until every worker of this process acks `version` (or newer)."""
        def done():
            acks = acked_versions(client, self.server_id, self.pid)
            return len(acks) == self.workers and all(v >= version for v in acks.values())

        assert wait_until(done, timeout, 0.02), (
            f"workers did not ack version {version}: {acked_versions(client, self.server_id, self.pid)}\n{self.log()}"
        )

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"data plane did not stop within {timeout}s:\n{self.log()}") from None
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool" / f"server-{self.server_id}"

    def record(self, message_id: str) -> spool.SpoolRecord:
        return spool.find_record(self.spool_dir, message_id)


@contextlib.contextmanager
def running(*args, **kwargs) -> Iterator[Dataplane]:
    plane = Dataplane(*args, **kwargs)
    try:
        yield plane.start()
    finally:
        try:
            plane.stop()
        finally:
            plane.kill()


@pytest.fixture
def start_dataplane(tmp_path: Path):
    """Factory: start_dataplane(redis_url, server_id, **kwargs) -> a started Dataplane,
    stopped (then killed if need be) after the test. `data_dir` defaults to tmp_path/"dp"."""
    started: list[Dataplane] = []

    def start(redis_url: str, server_id: int = 1, *, data_dir: Path | None = None, **kwargs) -> Dataplane:
        plane = Dataplane(data_dir or tmp_path / "dp", redis_url, server_id, **kwargs)
        started.append(plane)
        return plane.start()

    yield start
    for plane in started:
        try:
            plane.stop()
        finally:
            plane.kill()


# ---------------------------------------------------------------------------
# Messages and the spool
# ---------------------------------------------------------------------------


def message(n: int, *, extra_headers: bytes = b"", body: bytes | None = None) -> bytes:
    """A small RFC 5322 message with CRLF line ends, unique by `n`."""
    body = body if body is not None else f"Message number {n}.\r\n".encode()
    return (
        b"From: Sender <sender@example.com>\r\n"
        b"To: Rcpt <rcpt@example.net>\r\n"
        + f"Subject: test {n}\r\nMessage-ID: <{n}.{time.time_ns()}@example.com>\r\n".encode()
        + extra_headers
        + b"\r\n"
        + body
    )


def dot_stuffed(lines: list[bytes]) -> bytes:
    """What a client puts on the wire for these lines in DATA (RFC 5321 section
    4.5.2), each with its CRLF, before the end-of-data line."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def queued_id(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    match = QUEUED.search(text)
    assert match, f"no message id in reply {text!r}"
    return match.group(1)


def headers_of(raw: bytes) -> email.message.Message:
    """The parsed header block (tests only: the stdlib parser is off the hot path)."""
    return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)


def stamped_prefix_and_original(record: spool.SpoolRecord, original: bytes) -> bytes:
    """The bytes stamped above `original` in the record; asserts the client's bytes follow unchanged."""
    assert record.message.endswith(original), "the spooled message does not end with the client's bytes"
    return record.message[: len(record.message) - len(original)]


# ---------------------------------------------------------------------------
# The destination: `python -m dataplane.sink`
# ---------------------------------------------------------------------------


class Sink:
    """A real `python -m dataplane.sink` process with its --log and --counts-file."""

    def __init__(self, run_dir: Path, *args: str, listen: str = "127.0.0.1:0") -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = run_dir / "log.jsonl"
        self.counts_path = run_dir / "counts.json"
        command = [sys.executable, "-m", "dataplane.sink", "--listen", listen,
                   "--log", str(self.log_path), "--counts-file", str(self.counts_path), *args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT, stdin=subprocess.DEVNULL)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("sink ready listen="):
            self.proc.kill()
            raise AssertionError(f"the sink did not start: {line!r} {self.proc.communicate(timeout=10)}")
        host, _, port = line.strip().removeprefix("sink ready listen=").split(",")[0].rpartition(":")
        self.host, self.port = host, int(port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> list[dict]:
        """One entry per accepted message (complete lines only)."""
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text()
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def counts(self) -> dict:
        try:
            return json.loads(self.counts_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_counts(self, reached: Callable[[dict], object], what: str, timeout: float = 30.0) -> dict:
        """The counts once `reached(counts)` holds. The sink rewrites the file within
        200 ms of every event it counts, so this waits for what the test expects, never
        for a quiet spell (which a loaded machine can fake). AssertionError naming
        `what`, with the last counts read, when they do not get there in `timeout`."""
        last: dict = {}

        def check() -> object:
            nonlocal last
            last = self.counts()
            return reached(last)

        if not wait_until(check, timeout, 0.05):
            raise AssertionError(f"the sink's counts did not reach {what} within {timeout:g}s; last read: {last}")
        return last

    def wait_rcpt_replies(self, n: int, timeout: float = 30.0) -> dict:
        """The counts once they include `n` answered recipients (see `rcpt_replies`)."""
        return self.wait_counts(lambda counts: rcpt_replies(counts) >= n,
                                f"{n} recipient replies (accepted_rcpts + rejected + deferred)", timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return self.proc.returncode


@pytest.fixture
def start_sink(tmp_path: Path):
    """Factory: start_sink(*args) -> a started Sink (stopped after the test)."""
    started: list[Sink] = []

    def start(*args: str, listen: str = "127.0.0.1:0") -> Sink:
        sink = Sink(tmp_path / f"sink{len(started)}", *args, listen=listen)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


def rcpt_replies(counts: dict) -> int:
    """Recipients the sink has answered in `counts`: each accepted recipient of an
    accepted message, each 5xx (rejected) and each 4xx (deferred) RCPT reply."""
    return counts.get("accepted_rcpts", 0) + counts.get("rejected", 0) + counts.get("deferred", 0)


def is_notice(entry: dict) -> bool:
    """True for a sink log entry of a message from the null sender (a DSN poolmta sent)."""
    return entry["mail_from"] in ("", "<>")


def sink_outcomes(sink_log: list[dict]) -> tuple[Counter, Counter]:
    """From a sink's log, the senders' own mail only (DSNs from <> left out): (accepted
    recipients per peer IP, messages per Message-ID)."""
    per_peer: Counter = Counter()
    per_message: Counter = Counter()
    for entry in sink_log:
        if is_notice(entry):
            continue
        per_peer[entry["peer"]] += len(entry["rcpts"])
        per_message[entry["message_id"]] += 1
    return per_peer, per_message


# ---------------------------------------------------------------------------
# Sending through the Bridge, concurrently
# ---------------------------------------------------------------------------


async def _send_session(port: int, username: str, secret: str, batch, accepted: dict, attempts: int = 20) -> None:
    """Send `batch` [(key, rcpts, bytes)] over one session, reconnecting after a lost
    connection (a message without a 250 is sent again, as a real client would)."""
    pending = list(batch)
    client = None
    failures = 0
    while pending:
        try:
            if client is None:
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
                await client.connect()
                await client.login(username, secret)
            key, rcpts, raw = pending[0]
            errors, reply = await client.sendmail("sender@example.com", rcpts, raw)
            assert not errors, errors
            accepted[key] = queued_id(reply)
            pending.pop(0)
        except (aiosmtplib.SMTPException, OSError):
            failures += 1
            assert failures < attempts, "too many failed sends"
            if client is not None:
                client.close()
            client = None
            await asyncio.sleep(0.1)
    if client is not None:
        await client.quit()


def send_all(port: int, username: str, secret: str, messages, *, sessions: int = 10) -> dict:
    """Send [(key, rcpts, bytes)] over `sessions` concurrent SMTP sessions; {key: message id}."""
    accepted: dict = {}

    async def run() -> None:
        await asyncio.gather(*(_send_session(port, username, secret, messages[i::sessions], accepted)
                               for i in range(sessions)))

    asyncio.run(run())
    return accepted


# ---------------------------------------------------------------------------
# Stats and events in Redis
# ---------------------------------------------------------------------------


def stat(client: redis.Redis, key: str, field: str) -> int:
    return int(client.hget(key, field) or 0)


def stats_of(client: redis.Redis, server_id: int, smtp_id: int, ips, *,
             resolution: rediskeys.Resolution | None = None, at: float | None = None) -> dict:
    """{"pool": {field: n}, ip: {field: n}, ("pool", ip): {field: n}} for the stats fields
    of MTA server `server_id`: the lifetime totals, or the `resolution` bucket holding `at`."""
    def read(key: str) -> dict:
        return {f: stat(client, key, f) for f in rediskeys.STATS_FIELDS}

    found = {"pool": read(rediskeys.pool_stats_key(server_id, smtp_id, resolution, at))}
    for ip in ips:
        found[ip] = read(rediskeys.ip_stats_key(server_id, ip, resolution, at))
        found[("pool", ip)] = read(rediskeys.pool_ip_stats_key(server_id, smtp_id, ip, resolution, at))
    return found


def bucket_sums(client: redis.Redis, server_id: int, smtp_id: int, ips, resolution: rediskeys.Resolution,
                since: float) -> dict:
    """stats_of, summed over every `resolution` bucket from the one holding `since` to now."""
    sums: dict = {}
    for at in range(resolution.start(since), int(time.time()) + 1, resolution.seconds):
        for scope, figures in stats_of(client, server_id, smtp_id, ips, resolution=resolution, at=at).items():
            total = sums.setdefault(scope, dict.fromkeys(rediskeys.STATS_FIELDS, 0))
            for field, n in figures.items():
                total[field] += n
    return sums


def events_of(client: redis.Redis, message_id: str) -> list[dict]:
    """A message's delivery events (as dicts of their fields, oldest first) in every
    server's event log (found by a SCAN: a test helper), and in its list from before
    the log."""
    raw = list(client.lrange(rediskeys.message_events_key(message_id), 0, -1))
    read = client.register_script(event_log.READ_EVENTS_LUA)
    for stream in client.scan_iter(match=rediskeys.event_stream_key(0).replace("{stats:0}", "{stats:*}")):
        server_id = int(stream.decode().split("{stats:")[1].split("}")[0])
        raw += read(*event_log.read_events_input(server_id, message_id))
    return [dataclasses.asdict(event) for event in sorted(decode_list(raw), key=lambda event: event.ts_ms)]


async def logged_events(client, server_id: int, message_id: str) -> list[bytes]:
    """The bytes of a message's events in MTA server `server_id`'s event log, oldest
    first, as written (with an asyncio client; no decoding)."""
    read = client.register_script(event_log.READ_EVENTS_LUA)
    return list(await read(*event_log.read_events_input(server_id, message_id)))


def queue_empty(plane: Dataplane) -> bool:
    return not spool.queued_ids(plane.spool_dir)


