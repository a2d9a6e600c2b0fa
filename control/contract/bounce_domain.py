"""What a bounce domain may be: the one rule both planes hold.

A bounce domain is the domain of the VERP return paths a Pool's mail is sent
with (`dataplane.verp`): the MTA server's (by default its hostname), or the Pool's
own (e.g. `bounces.acme.example`, for SPF and DMARC alignment). The control plane
checks a server's or a Pool's bounce domain with it when one is set; the data plane
checks the domain it signs addresses on with it. Stdlib only (the contract).
"""

from __future__ import annotations

import re

# RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets, so an
# address at most 254; a VERP local part is 42 characters ("b-" and 40 of base32)
# and the "@": 254 - 42 - 1.
MAX_BOUNCE_DOMAIN_LENGTH = 211
# What an error message quotes of a refused name.
_QUOTED = 64

# RFC 5321 4.1.2: Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = re.compile(rf"{LABEL}(?:\.{LABEL})*")


class BounceDomainError(ValueError):
    """A name that cannot be a bounce domain; the message says why, quoting at most a short
    ASCII-escaped prefix of it."""


def _quote(text: str) -> str:
    # Escaped to ASCII (no CR/LF) and short: the message may reach a log, an SMTP reply
    # or a gRPC status.
    quoted = ascii(text[:_QUOTED])
    return quoted if len(quoted) <= 80 else quoted[:80] + "..."


def check_bounce_domain(domain: str) -> str:
    """`domain` as a bounce domain: lowercased, one trailing dot removed, RFC 5321 4.1.2
    syntax (LDH labels of 1-63 octets, ASCII: IDNs as A-labels), at most
    MAX_BOUNCE_DOMAIN_LENGTH (211) octets. BounceDomainError otherwise."""
    if not isinstance(domain, str):
        raise BounceDomainError(f"a bounce domain is a string, not {type(domain).__name__}")
    name = domain[:-1] if domain.endswith(".") else domain
    name = name.lower()
    if not name.isascii():
        raise BounceDomainError(f"bounce domain {_quote(domain)} is not ASCII; give its A-label (xn--) form")
    if len(name) > MAX_BOUNCE_DOMAIN_LENGTH:
        raise BounceDomainError(
            f"bounce domain is {len(name)} octets; the limit is {MAX_BOUNCE_DOMAIN_LENGTH}")
    if not DOMAIN.fullmatch(name):
        raise BounceDomainError(f"{_quote(domain)} is not a valid domain name")
    return name
