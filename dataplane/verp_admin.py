"""`python -m dataplane.verp_admin` (what `poolmta verp` runs): the VERP signing keys
of a data directory (`<data_dir>/verp.keys`, see `dataplane.verp_keyring`).

    poolmta verp list                      the keys: id, current, created, superseded, expires
    poolmta verp rotate                    a new current key; the old ones keep verifying
    poolmta verp prune [--max-age 30d]     remove keys superseded longer ago than that
    poolmta verp retire ID                 remove one key now (a leaked key)

Rotating never breaks mail in flight: the bounce addresses of mail sent before
carry the old key's id and still verify until the key is pruned, which happens
only once every address it signed is older than the codec's maximum age (30
days) and so refused anyway. The data plane's workers see a rotation within a
second (`dataplane.return_path`). Secrets are never printed.

--data-dir (env POOLMTA_DATA_DIR) defaults as for the data plane; --json prints
the keys (or the pruned ids) as JSON. Exit status 0, 1 when the keyring cannot
be read or changed as asked (the message says why), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import IO

from control.contract.runtime import default_data_dir

from .config import argument_type, format_duration, parse_duration
from .return_path import keyring_path
from .verp import DEFAULT_MAX_AGE
from .verp_keyring import KeyringError, VerpKey, VerpKeyring

EXIT_OK = 0
EXIT_ERROR = 1


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _key_json(key: VerpKey, current: int, max_age: float) -> dict:
    return {"id": key.id, "current": key.id == current, "created": key.created, "superseded": key.superseded,
            "expires": None if key.superseded is None else key.superseded + max_age}


def _print_keys(keyring: VerpKeyring, max_age: float, as_json: bool, out: IO[str]) -> None:
    current = keyring.current.id
    keys = [_key_json(keyring.key(key_id), current, max_age) for key_id in keyring.ids]
    if as_json:
        out.write(json.dumps({"path": str(keyring.path), "keys": keys}) + "\n")
        return
    out.write(f"VERP keys in {keyring.path} (addresses expire {format_duration(max_age)} after their message)\n")
    out.write(f"{'ID':>3}  {'CURRENT':<7}  {'CREATED':<20}  {'SUPERSEDED':<20}  PRUNABLE FROM\n")
    for key in keys:
        out.write(f"{key['id']:>3}  {'yes' if key['current'] else '':<7}  {_when(key['created']):<20}  "
                  f"{_when(key['superseded']):<20}  {_when(key['expires'])}\n")


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    """The `poolmta verp` parser; --data-dir and --json go before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                        help=f"state directory (env POOLMTA_DATA_DIR; default {default_data_dir(env)})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p = argparse.ArgumentParser(
        prog="poolmta verp", parents=[common],
        description="The VERP signing keys of a data directory (<data_dir>/verp.keys): list them, rotate "
        "(a new current key; earlier keys keep verifying, so mail in flight is not broken), prune the "
        "ones whose addresses have all expired, or retire a leaked one now.")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("list", help="the keys (never their secrets)", parents=[common])
    commands.add_parser("rotate", help="add a new current key; earlier keys keep verifying", parents=[common])
    prune = commands.add_parser("prune", help="remove keys superseded longer ago than --max-age", parents=[common])
    prune.add_argument("--max-age", type=argument_type(parse_duration), default=DEFAULT_MAX_AGE, metavar="DURATION",
                       help=f"how long an address is honoured (default {format_duration(DEFAULT_MAX_AGE)}, "
                            "the data plane's)")
    retire = commands.add_parser("retire", help="remove one key now: addresses it signed are refused from here on",
                                 parents=[common])
    retire.add_argument("id", type=int, metavar="ID")
    return p


def main(argv: list[str] | None = None, env: dict[str, str] | None = None, out: IO[str] = sys.stdout) -> int:
    """Run one `poolmta verp` command; the exit status."""
    env = dict(os.environ) if env is None else env
    args = build_parser(env).parse_args(argv)
    data_dir = getattr(args, "data_dir", None) or env.get("POOLMTA_DATA_DIR") or default_data_dir(env)
    path = keyring_path(Path(data_dir).expanduser())
    as_json = getattr(args, "json", False)
    max_age = getattr(args, "max_age", DEFAULT_MAX_AGE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        keyring = VerpKeyring.load_or_create(path)
        if args.command == "rotate":
            key = keyring.rotate()
            if not as_json:
                out.write(f"Key {key.id} now signs new return paths; earlier keys keep verifying.\n")
        elif args.command == "retire":
            keyring.retire(args.id)
            if not as_json:
                out.write(f"Key {args.id} retired: bounce addresses it signed are refused from now on.\n")
        elif args.command == "prune":
            gone = keyring.prune(max_age)
            if as_json:
                out.write(json.dumps({"pruned": list(gone)}) + "\n")
                return EXIT_OK
            out.write(f"Pruned key(s) {', '.join(map(str, gone))}.\n" if gone else "No key to prune.\n")
        _print_keys(keyring, max_age, as_json, out)
    except (KeyringError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
