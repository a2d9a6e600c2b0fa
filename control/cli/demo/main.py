"""`poolmta demo` (``python -m control.cli.demo``): the whole story on loopback, in one command.

Nothing needs to run before it. In a temporary data directory it starts the
embedded Redis and the control plane in this process, then `poolmta sink` (the
destination MTA) and the data plane (2 workers, every domain routed to the sink)
as child processes (`control` never imports `dataplane`). Then it does what a
customer does, through the gRPC API: the platform admin registers MTA server
US-1 and creates the PRO account `acme`; acme generates a DKIM key (RSA-2048) for its
sending domain acme.example, creates three Pools, provisions 127.0.0.2-127.0.0.7 into
them and opens one Bridge per Pool. It waits until every
data-plane worker serves that routing, sends a few thousand messages through the
Bridges, two thirds with SMTP AUTH and a third through the REST Bridge (JSON messages
one per request or in batch requests, and raw messages; some to recipients the sink
bounces or defers), waits
until StatsService counts every one of them delivered or bounced, and prints the
product's "Sending stats" panel, a message as the destination received it, the
destination's view of the source IPs and of each channel's mail (SMTP and REST
delivered, rotated and counted alike), and dkimpy verifying that message's DKIM
signature against the TXT record the API returned. Then it feeds the data plane's inbound
listener one asynchronous bounce (a DSN) and one complaint (an ARF report) about
two of the messages the sink accepted, as a receiving MTA and a feedback loop
would, and shows StatsService counting both.

Every figure in the panel is read back from StatsService. The demo checks that
they add up to what it sent, and that the sink saw as many messages from each IP
as StatsService says were delivered from it: exit 0 when they do, 1 with the
discrepancy when not (or when a step fails), 130 when interrupted. Whatever it
started is stopped before it exits (also on Ctrl-C, SIGTERM or an error), unless
`--keep-running`, which leaves everything up until Ctrl-C and prints how to reach it.

The run is told here; the package's other modules do each step (see `control.cli.demo`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from rich.console import Console

from ..._pb.poolmta.v1 import poolmta_pb2 as pb
from .. import render
from . import DemoError, report
from .channels import RestSender, check_channels, rest_session
from .feedback import feed_reports
from .plan import DemoOptions
from .provision import Api, provision, wait_for_routing
from .stack import START_TIMEOUT, Stack, StackOptions
from .traffic import plan_messages, send_with_progress
from .verify import check_dkim, check_sources, check_totals, settled_sink_counts, wait_until_final

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


async def run(options: DemoOptions, data_dir: Path, console: Console) -> int:
    """One run of the demo in `data_dir`, told on `console`: EXIT_OK when every check
    passes, EXIT_FAILED when one does not; DemoError when a step fails."""
    t0 = time.monotonic()
    async with Stack(StackOptions(data_dir=data_dir, workers=options.workers)) as stack:
        report.show_stack(console, stack, options.workers, time.monotonic() - t0, data_dir)
        async with grpc.aio.insecure_channel(stack.grpc_address) as channel:
            tenant = await provision(channel, stack.admin_token, options.pools, dkim_algorithm=pb.RSA_SHA256)
            report.show_tenant(console, tenant)
            status = await wait_for_routing(channel, stack.admin_token, tenant.server.server_id, options.workers,
                                            START_TIMEOUT, stack.check_children)
            report.say(console, f"routing version {status.routing_version} served by {len(status.workers)} "
                                "data-plane workers")

            batches, tallies = plan_messages(options)
            api = Api(channel, tenant.token)
            with report.progress(console) as progress:
                started = time.monotonic()
                async with rest_session() as session:
                    rest = RestSender(stack.http_address, session)
                    send_problems = await send_with_progress(tenant, stack.smtp_address, rest, batches, tallies,
                                                             options.sessions, progress, stack.check_children)
                stats = await wait_until_final(api, tenant, tallies, options.timeout, progress, stack)
            report.say(console, f"sent {sum(t.sent for t in tallies):,} messages in {time.monotonic() - started:.1f}s "
                                f"({sum(t.bounce for t in tallies)} to bouncing and {sum(t.defer for t in tallies)} "
                                "to deferring recipients); every one delivered or bounced")
            report.show_rest_requests(console, stack, rest, tallies)

            pools = list((await api("pools", "ListPools", pb.ListPoolsRequest())).pools)
            counts = await settled_sink_counts(stack, sum(s.delivered for s in stats))
            sources = check_sources(stats, counts)
            report.show_panel(console, tenant, pools, stats)
            report.show_received(console, stack, tenant)
            signature = check_dkim(stack, tenant)
            report.show_dkim(console, signature)
            console.print()
            console.print(report.sources_table(sources))
            channels = check_channels(stack, tenant, tallies)
            console.print()
            console.print(report.channels_table(channels))

            problems = (send_problems[:10] + check_totals(tallies, stats, counts)
                        + [source.problem for source in sources if source.problem]
                        + [problem for channel in channels for problem in channel.problems[:5]]
                        + ([f"DKIM: {signature.problem}"] if signature and signature.problem else []))
            # After the checks above: the reports move figures the sink cannot see.
            reports = []
            try:
                reports = await feed_reports(stack, api, tenant.pools[0])
            except DemoError as exc:
                problems.append(f"the feedback loop: {exc}")
            report.show_feedback(console, reports)
            report.show_verdict(console, problems, stats, counts, reports)
            if options.keep_running:
                report.show_endpoints(console, stack, tenant, data_dir)
                try:
                    await asyncio.Event().wait()  # until Ctrl-C / SIGTERM cancels us
                except asyncio.CancelledError:
                    # Stopping here is the normal end of --keep-running: the exit code
                    # stays the checks' verdict.
                    asyncio.current_task().uncancel()
            return EXIT_FAILED if problems else EXIT_OK


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
    """`poolmta demo`'s options, defaulting to `DemoOptions()`."""
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
    """Run `poolmta demo ARGV...` in a fresh temporary data directory (removed after);
    returns the exit code: 0 the checks pass, 1 they fail or a step does, 2 a usage
    error, 130 interrupted."""
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
