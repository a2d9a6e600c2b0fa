"""poolmta against Postfix under Postfix's own C load tools, alternating in one run (issue 12).

    python bench/postfix_compare.py --quick             # < 8 minutes: 5 KB and 50 KB, new and reused connections
    python bench/postfix_compare.py --messages 10000 --repeat 4 --size 5K --size 50K --mode new --mode reused

`smtp-source` sends N messages over C sessions into each server; both relay to one
`smtp-sink` on 127.0.0.1:2727 (Postfix as its relayhost, poolmta with
`--route sink.bench.example=127.0.0.1:2727`), which counts what arrives. poolmta is the
whole stack as `bench/load.py` stands it up (embedded Redis and control plane in this
process, a data plane of 2 workers, one Pool of three IPs), its Bridge trusting
127.0.0.0/24 so `smtp-source` needs no AUTH, as Postfix's `mynetworks` does. Each round
measures every workload on every system, the order of the systems reversed every
other round; the report gives medians over the rounds.

Per run:
* relayed msg/s: messages `smtp-sink` counted, from the start of `smtp-source` until
  the sink's counter showed them all;
* p50 / p99 accept ms: `smtp-source` does not time replies, so one more session of
  `bench/load.py`'s client runs beside it (its share of the messages, 1 per connection
  for `new`, all on one for `reused`) and times end of DATA -> 250;
* CPU ms per relayed message of the whole server: utime + stime of all its processes
  (poolmta: data-plane tree, redis-server, this process; Postfix: its `master` tree,
  reaped children included), as `bench/LOAD.md` defines it;
* peak RSS of the whole server during the run, and the idle RSS before it: memory
  per session is (peak - idle) / C.

The tools are on a benchmark machine only, never in CI or the install:
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix      # "No configuration"
    sudo sh bench/postfix/setup.sh          # main.cf / master.cf of bench/postfix/, starts Postfix
`--no-postfix` measures poolmta alone (the tools are still needed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (bench/ is a directory of scripts, not a package)
from compare_stack import (  # noqa: E402
    SINK_DOMAIN,
    CSink,
    Poolmta,
    Postfix,
    ToolMissing,
    find_tool,
    tree_rss_mb,
)

MODES = {"new": 1, "reused": 0}  # 0: every message of a session on one connection (smtp-source -d)
RSS_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Case:
    """One workload: message payload bytes, concurrent sessions, new or reused connections."""

    size: int
    sessions: int
    mode: str

    @property
    def label(self) -> str:
        return f"{self.size / 1000:g} KB, {self.sessions} sessions, {self.mode} connections"


@dataclass
class Run:
    """One measured run of one system on one case."""

    system: str
    size: int
    sessions: int
    mode: str
    messages: int
    relayed: int
    seconds: float
    relayed_rate: float
    accepted_rate: float  # smtp-source's messages over the time it ran
    p50_ms: float
    p99_ms: float
    cpu_ms_per_msg: float
    rss_idle_mb: float
    rss_peak_mb: float
    mb_per_session: float
    errors: list[str] = field(default_factory=list)


# -- one run -------------------------------------------------------------------------------------


async def _peak_rss(roots: list[int], stop: asyncio.Event) -> float:
    peak = 0.0
    while not stop.is_set():
        peak = max(peak, tree_rss_mb(roots))
        try:
            await asyncio.wait_for(stop.wait(), RSS_POLL_SECONDS)
        except TimeoutError:
            pass
    return peak


async def measure(server, sink: CSink, case: Case, messages: int, timeout: float) -> Run:
    """Drive `server` with smtp-source (and the latency probe beside it) until the sink has it all."""
    host, port = server.address
    source_args = ["-s", str(case.sessions), "-m", str(messages), "-l", str(case.size), "-N",
                   "-f", load.SENDER, "-t", f"user@{SINK_DOMAIN}", "-M", "source.bench.example"]
    if MODES[case.mode] == 0:
        source_args.append("-d")
    probe_messages = max(messages // case.sessions, 20)
    probe = load.Workload(probe_messages, case.size, 1, MODES[case.mode] or probe_messages, timeout,
                          recipient_domain=SINK_DOMAIN)
    idle = tree_rss_mb(server.roots)
    before = sink.count
    cpu0 = server.cpu()
    stop = asyncio.Event()
    rss = asyncio.create_task(_peak_rss(server.roots, stop))
    started = time.time()
    source = await asyncio.create_subprocess_exec(
        find_tool("smtp-source"), *source_args, f"{host}:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    client = await load.run_client(host, port, probe, *server.credentials)
    try:
        _, stderr = await asyncio.wait_for(source.communicate(), timeout)
    except TimeoutError:
        source.kill()
        _, stderr = await source.communicate()
    source_seconds = time.time() - started
    errors = list(client["errors"])
    if source.returncode != 0:
        errors.append(f"smtp-source exited {source.returncode}: {stderr.decode(errors='replace').strip()[:300]}")
    expected = messages + client["accepted"] if source.returncode == 0 else client["accepted"]
    done = await sink.wait_for(before + expected, timeout)
    cpu = server.cpu() - cpu0
    stop.set()
    peak = await rss
    relayed = sink.count - before
    seconds = (done or time.time()) - started
    if done is None:
        errors.append(f"only {relayed} of {expected} messages reached the sink within {timeout:g}s")
    latencies = client["latencies"]
    return Run(
        system=server.name, size=case.size, sessions=case.sessions, mode=case.mode, messages=expected,
        relayed=relayed, seconds=round(seconds, 3), relayed_rate=round(relayed / seconds, 1),
        accepted_rate=round(messages / source_seconds, 1),
        p50_ms=round(load._percentile(latencies, 50) * 1000, 2),
        p99_ms=round(load._percentile(latencies, 99) * 1000, 2),
        cpu_ms_per_msg=round(cpu / max(relayed, 1) * 1000, 3), rss_idle_mb=round(idle, 1), rss_peak_mb=round(peak, 1),
        mb_per_session=round(max(peak - idle, 0.0) / case.sessions, 3), errors=errors)


# -- the report ----------------------------------------------------------------------------------


def _median(values: list[float]) -> str:
    """The median, and the range in brackets when the runs differ."""
    if not values:
        return "-"
    med = statistics.median(values)

    def text(value: float) -> str:
        return f"{value:,.3g}" if med < 10 else f"{value:,.0f}"

    low, high = min(values), max(values)
    return text(med) if text(low) == text(high) else f"{text(med)} ({text(low)}-{text(high)})"


def render(runs: list[Run]) -> str:
    """Markdown: per case, each system's medians (ranges in brackets), then the ratios."""
    out = []
    cases = list(dict.fromkeys(Case(r.size, r.sessions, r.mode) for r in runs))
    for case in cases:
        mine = [r for r in runs if Case(r.size, r.sessions, r.mode) == case]
        systems = list(dict.fromkeys(r.system for r in mine))
        out += [f"#### {case.label}", "",
                "| system | relayed msg/s | p50 accept ms | p99 accept ms | CPU ms / msg | MB / session |",
                "|---|---:|---:|---:|---:|---:|"]
        for system in systems:
            rs = [r for r in mine if r.system == system]
            out.append(f"| {system} | " + " | ".join(_median([getattr(r, k) for r in rs]) for k in (
                "relayed_rate", "p50_ms", "p99_ms", "cpu_ms_per_msg", "mb_per_session")) + " |")
        postfix = [r.relayed_rate for r in mine if r.system == "Postfix"]
        for system in systems:
            ours = [r.relayed_rate for r in mine if r.system == system]
            if system != "Postfix" and postfix and ours:
                out.append(f"\n{system} / Postfix, relayed: "
                           f"**{statistics.median(ours) / statistics.median(postfix):.2f}x** (medians)")
        out.append("")
    failures = [f"{r.system}, {Case(r.size, r.sessions, r.mode).label}: {'; '.join(r.errors[:3])}"
                for r in runs if r.errors]
    return "\n".join(out + (["Errors:"] + failures if failures else []))


def plot(runs: list[Run], directory: Path) -> list[Path]:
    """PNG curves (matplotlib, the `bench` extra): msg/s and CPU/msg by size, p99 accept and
    MB/session by sessions; one line per system, medians of the runs without errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if not r.errors]  # a run cut short measured something else
    written = []
    for x_name, fixed, charts in (("size", "sessions", (("relayed_rate", "relayed msg/s"),
                                                         ("cpu_ms_per_msg", "CPU ms / relayed message"))),
                                  ("sessions", "size", (("p99_ms", "p99 accept ms"),
                                                        ("mb_per_session", "MB per session")))):
        groups = {(r.system, r.mode, getattr(r, fixed)) for r in runs}
        xs_all = {getattr(r, x_name) for r in runs}
        if len(xs_all) < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (key, title) in zip(axes, charts, strict=True):
            for system, mode, fixed_value in sorted(groups):
                rs = [r for r in runs if (r.system, r.mode, getattr(r, fixed)) == (system, mode, fixed_value)]
                xs = sorted({getattr(r, x_name) for r in rs})
                if len(xs) < 2:
                    continue
                ys = [statistics.median(getattr(r, key) for r in rs if getattr(r, x_name) == x) for x in xs]
                ax.plot([x / 1000 if x_name == "size" else x for x in xs], ys, marker="o",
                        label=f"{system}, {mode}")
            ax.set_xscale("log")
            ax.set_xlabel("message KB" if x_name == "size" else "concurrent sessions")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = directory / f"curve_by_{x_name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/postfix_compare.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1,000 messages, 2 rounds, 5K and 50K, new and reused connections (< 8 minutes)")
    p.add_argument("--messages", type=int, default=10000, metavar="N", help="messages per run (default 10000)")
    p.add_argument("--size", type=load.parse_size, action="append", metavar="S",
                   help="payload bytes per message, e.g. 5K; repeatable (default 5K and 50K)")
    p.add_argument("--sessions", type=int, action="append", metavar="C",
                   help="concurrent smtp-source sessions; repeatable (default 20)")
    p.add_argument("--mode", choices=sorted(MODES), action="append",
                   help="a new connection per message, or reused connections; repeatable (default both)")
    p.add_argument("--event-loop", choices=["asyncio", "uvloop"], action="append",
                   help="poolmta's workers' event loop; repeatable (default asyncio, and uvloop when installed)")
    p.add_argument("--no-postfix", action="store_true", help="poolmta alone (curves of its own cost)")
    p.add_argument("--workers", type=int, default=2, help="poolmta data-plane workers (default 2)")
    p.add_argument("--repeat", type=int, default=4, metavar="R", help="rounds (default 4)")
    p.add_argument("--timeout", type=float, default=600.0, help="bound on each run (default 600 s)")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write PNG curves here (needs matplotlib)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every run as JSON")
    p.add_argument("--merge", type=Path, action="append", default=[], metavar="FILE",
                   help="report and plot the runs of an earlier --json FILE too; repeatable")
    return p


def _defaults(args: argparse.Namespace) -> None:
    if args.quick:
        args.messages, args.repeat = 1000, 2
    args.size = args.size or [5000, 50000]
    args.sessions = args.sessions or [20]
    args.mode = args.mode or ["new", "reused"]
    if not args.event_loop:
        try:
            import uvloop  # noqa: F401
            args.event_loop = ["asyncio", "uvloop"]
        except ImportError:
            args.event_loop = ["asyncio"]


async def run(args: argparse.Namespace) -> list[Run]:
    """Every round: every case on every system, the systems' order reversed every other round."""
    cases = [Case(size, sessions, mode) for size in args.size for sessions in args.sessions for mode in args.mode]
    servers: list = [] if args.no_postfix else [Postfix()]
    find_tool("smtp-source")
    runs: list[Run] = []
    async with CSink() as sink:
        pools = [Poolmta(args.workers, max(args.sessions), loop) for loop in args.event_loop]
        try:
            for pool in pools:
                servers.append(await pool.__aenter__())
            for round_no in range(args.repeat):
                order = servers if round_no % 2 == 0 else servers[::-1]
                for case in cases:
                    for server in order:
                        result = await measure(server, sink, case, args.messages, args.timeout)
                        print(f"round {round_no + 1}/{args.repeat} {case.label}: {server.name} "
                              f"{result.relayed_rate:,.0f} msg/s (smtp-source {result.accepted_rate:,.0f}), "
                              f"p99 {result.p99_ms:.1f} ms, "
                              f"{result.cpu_ms_per_msg:.2f} CPU ms/msg", file=sys.stderr, flush=True)
                        runs.append(result)
        finally:
            for pool in pools:
                await pool.__aexit__(None, None, None)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _defaults(args)
    # A SIGTERM stops the runs like Ctrl-C, so the stack and the sink are stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        runs = asyncio.run(run(args))
    except ToolMissing as exc:
        print(f"postfix_compare: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    runs = [Run(**run) for path in args.merge for run in json.loads(path.read_text(encoding="utf-8"))] + runs
    print(render(runs))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1), encoding="utf-8")
    if args.plot:
        args.plot.mkdir(parents=True, exist_ok=True)
        for path in plot(runs, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if all(not r.errors for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
