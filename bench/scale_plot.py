"""Draw the scale bench's rows (`python -m bench.scale --json-out results.json`) as
the PNGs bench/SCALE.md shows, issue 14's goals as dashed lines:

    .venv/bin/python -m bench.scale_plot results.json [--out-dir bench]

* scale_latency.png: CreatePool / ProvisionIp p50 and p99, change -> every worker
  acked p99, a read's p99 during the write storm, against pools (log x);
* scale_memory.png: worker RSS, control-plane RSS and Redis's routing memory
  (with one full snapshot's size beside it), against pools (log x).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# Issue 14's goals, in the plots' units.
RPC_P99_GOAL_MS = 20
ACKED_P99_GOAL_MS = 250
WORKER_RSS_GOAL_MB = 200

LATENCY_SERIES = (
    ("create_p50_ms", "CreatePool p50", "C0", ":"),
    ("create_p99_ms", "CreatePool p99", "C0", "-"),
    ("provision_p50_ms", "ProvisionIp p50", "C1", ":"),
    ("provision_p99_ms", "ProvisionIp p99", "C1", "-"),
    ("storm_read_p99_ms", "read p99 during 50 writes/s", "C2", "-"),
    ("storm_write_p99_ms", "the storm's writes p99", "C4", "-."),
    ("acked_p99_ms", "change → all workers acked p99", "C3", "-"),
)


def _axes(title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_xscale("log")
    ax.set_xlabel("pools on the server (10 IPs and 1 Bridge each)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _goal(ax, value: float, label: str, color: str) -> None:
    ax.axhline(value, color=color, linestyle="--", linewidth=1, label=label)


def _save(fig, ax, path: Path) -> None:
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(rows: list[dict], path: Path) -> None:
    """RPC and propagation latencies against pools."""
    pools = [r["pools"] for r in rows]
    fig, ax = _axes("Control plane: write and read latency, change propagation", "ms")
    for key, label, color, style in LATENCY_SERIES:
        ax.plot(pools, [r[key] for r in rows], marker="o", color=color, linestyle=style, label=label)
    _goal(ax, RPC_P99_GOAL_MS, f"goal: RPC p99 ≤ {RPC_P99_GOAL_MS} ms", "C0")
    _goal(ax, ACKED_P99_GOAL_MS, f"goal: acked p99 ≤ {ACKED_P99_GOAL_MS} ms", "C3")
    _save(fig, ax, path)


def plot_memory(rows: list[dict], path: Path) -> None:
    """Worker RSS, control-plane RSS and Redis routing memory against pools."""
    pools = [r["pools"] for r in rows]
    mb = 1024 * 1024
    fig, ax = _axes("Memory at scale", "MB")
    ax.plot(pools, [r["worker_rss_mb"] for r in rows], marker="o", color="C0", label="worker RSS (peak)")
    ax.plot(pools, [r["control_rss_mb"] for r in rows], marker="o", color="C1", label="control-plane RSS")
    ax.plot(pools, [r["redis_routing_bytes"] / mb for r in rows], marker="o", color="C2",
            label="Redis routing memory after the bench's changes")
    ax.plot(pools, [2 * r["full_snapshot_bytes"] / mb for r in rows], color="C2", linestyle="--",
            label="goal: Redis routing ≤ 2 × one full snapshot")
    _goal(ax, WORKER_RSS_GOAL_MB, f"goal: worker RSS ≤ {WORKER_RSS_GOAL_MB} MB", "C0")
    _save(fig, ax, path)


def main() -> None:
    """Read the rows, write both PNGs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    rows = sorted(json.loads(args.results.read_text()), key=lambda r: r["pools"])
    plot_latency(rows, args.out_dir / "scale_latency.png")
    plot_memory(rows, args.out_dir / "scale_memory.png")


if __name__ == "__main__":
    main()
