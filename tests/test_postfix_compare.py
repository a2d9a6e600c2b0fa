"""bench/postfix_compare.py without Postfix (CI never has it): its presets, and the
report it renders from runs (medians, ranges, the ratio to Postfix)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("postfix_compare", BENCH / "postfix_compare.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


compare = _module()


def _run(system: str, rate: float, cpu: float, mode: str = "new") -> object:
    return compare.Run(system=system, size=5000, sessions=20, mode=mode, messages=100, relayed=100, seconds=1.0,
                       relayed_rate=rate, accepted_rate=rate, p50_ms=5.0, p99_ms=20.0, cpu_ms_per_msg=cpu,
                       rss_idle_mb=100.0, rss_peak_mb=110.0, mb_per_session=0.5)


def _args(*argv: str):
    args = compare.build_parser().parse_args(list(argv))
    compare._defaults(args)
    return args


def test_quick_preset_and_defaults():
    quick = _args("--quick", "--event-loop", "asyncio")
    assert (quick.messages, quick.repeat, quick.size, quick.sessions, quick.mode) == (
        1000, 2, [5000, 50000], [20], ["new", "reused"])
    full = _args("--size", "1K", "--sessions", "200", "--mode", "reused", "--event-loop", "uvloop")
    assert (full.messages, full.repeat, full.size, full.sessions, full.mode, full.event_loop) == (
        10000, 4, [1000], [200], ["reused"], ["uvloop"])


def test_report_gives_medians_ranges_and_the_ratio_to_postfix():
    runs = [_run("Postfix", 100, 5.0), _run("poolmta (asyncio)", 150, 3.0),
            _run("Postfix", 120, 5.5), _run("poolmta (asyncio)", 170, 3.2),
            _run("Postfix", 140, 6.0), _run("poolmta (asyncio)", 210, 3.4)]
    report = compare.render(runs)
    assert "#### 5 KB, 20 sessions, new connections" in report
    assert "| Postfix | 120 (100-140) | 5 | 20 | 5.5 (5-6) | 0.5 |" in report
    assert "| poolmta (asyncio) | 170 (150-210) |" in report
    assert "poolmta (asyncio) / Postfix, relayed: **1.42x** (medians)" in report
    assert "Errors:" not in report


def test_report_lists_failed_runs():
    failed = _run("poolmta (uvloop)", 10, 1.0, mode="reused")
    failed.errors.append("only 3 of 100 messages reached the sink within 1s")
    report = compare.render([failed])
    assert report.endswith("poolmta (uvloop), 5 KB, 20 sessions, reused connections: only 3 of 100 messages "
                           "reached the sink within 1s")
