"""The data-plane options `poolmta up` takes and hands, as given, to the data plane it
starts (`python -m dataplane`): the README's table lists them on `up`, and the data
plane checks them and says what is wrong (control never imports dataplane)."""

from __future__ import annotations

import argparse

# (flag, metavar or None for a switch, repeatable, help)
UP_DATAPLANE_OPTIONS = (
    ("--route", "DOMAIN=HOST:PORT", True, "deliver DOMAIN's mail to HOST:PORT instead of its MX ('*' = every "
                                          "domain; repeatable)"),
    ("--smarthost", "HOST:PORT", False, "relay every domain without a --route through HOST:PORT"),
    ("--tls-cert", "FILE", False, "PEM certificate (chain) for the SMTP Bridge's STARTTLS (default self-signed)"),
    ("--tls-key", "FILE", False, "PEM private key of --tls-cert"),
    ("--allow-insecure-auth", None, False, "accept AUTH before STARTTLS from any client"),
)


def _dest(flag: str) -> str:
    return "dp_" + flag.removeprefix("--").replace("-", "_")


def add_dataplane_args(p: argparse.ArgumentParser) -> None:
    """Add UP_DATAPLANE_OPTIONS to `poolmta up`'s parser, in a group of their own."""
    g = p.add_argument_group("data plane (passed to it; `poolmta dataplane --help` tells more)")
    for flag, metavar, repeatable, help_text in UP_DATAPLANE_OPTIONS:
        if metavar is None:
            g.add_argument(flag, dest=_dest(flag), action="store_true", help=help_text)
        else:
            g.add_argument(flag, dest=_dest(flag), action="append" if repeatable else "store", metavar=metavar,
                           help=help_text)


def dataplane_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The data-plane options given to `up`, as the data plane's own arguments, in
    UP_DATAPLANE_OPTIONS order."""
    out: list[str] = []
    for flag, metavar, _, _ in UP_DATAPLANE_OPTIONS:
        given = getattr(args, _dest(flag), None)
        if not given:
            continue
        if metavar is None:
            out.append(flag)
        else:
            for item in given if isinstance(given, list) else [given]:
                out += [flag, str(item)]
    return tuple(out)
