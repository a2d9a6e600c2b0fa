"""`python -m dataplane.spool_inspect`: look at the spool of an MTA server.

    python -m dataplane.spool_inspect --server-id 1            one line per queued message
    python -m dataplane.spool_inspect --server-id 1 ID [ID...]  each record in full, message included

--data-dir (env POOLMTA_DATA_DIR) defaults as for the data plane.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from control.contract.runtime import default_data_dir

from . import spool


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _list(root: Path, out) -> int:
    view = spool.view_of(root)
    ids = view.live_ids()
    for message_id in ids:
        try:
            r = view.record(message_id)
        except FileNotFoundError:
            continue
        except spool.SpoolCorrupt as exc:
            out.write(f"{message_id}  CORRUPT: {exc}\n")
            continue
        rcpts = ",".join(r.rcpt_tos[:3]) + (f" (+{len(r.rcpt_tos) - 3})" if len(r.rcpt_tos) > 3 else "")
        out.write(f"{r.id}  {_when(r.received_ms)}  bridge={r.bridge_id} pool={r.pool} ip={r.ip} "
                  f"from=<{r.mail_from}> to={rcpts} size={len(r.message)} attempts={len(r.attempts)}\n")
    out.write(f"{len(ids)} message(s) queued in {root}\n")
    return 0


def _show(root: Path, ids: list[str], out) -> int:
    status = 0
    for message_id in ids:
        try:
            r = spool.find_record(root, message_id)
        except (OSError, spool.SpoolCorrupt) as exc:
            sys.stderr.write(f"{message_id}: {exc}\n")
            status = 1
            continue
        for name in spool.SpoolRecord.__dataclass_fields__:
            if name != "message":
                out.write(f"{name}: {getattr(r, name)}\n")
        out.write("\n")
        out.write(r.message.decode("utf-8", "replace"))
        out.write("\n")
    return status


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    p = argparse.ArgumentParser(prog="python -m dataplane.spool_inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=env.get("POOLMTA_DATA_DIR") or default_data_dir(env))
    p.add_argument("--server-id", type=int, default=env.get("POOLMTA_SERVER_ID"), required="POOLMTA_SERVER_ID" not in env)
    p.add_argument("ids", nargs="*", metavar="ID", help="message ids to show in full")
    args = p.parse_args(argv)
    root = Path(args.data_dir) / "spool" / f"server-{args.server_id}"
    return _show(root, args.ids, sys.stdout) if args.ids else _list(root, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
