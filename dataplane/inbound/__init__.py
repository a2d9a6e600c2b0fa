"""The inbound listener: asynchronous bounces (RFC 3464 DSNs and nonstandard ones)
and complaints (RFC 5965 ARF) for the mail this MTA server sent, taken over SMTP in
every data-plane worker (`--inbound-listen`, SO_REUSEPORT like the Bridge) and
counted back to the message, recipient, pool and IP that sent it, exactly once.

    addresses    which recipients it takes: VERP return paths on the bounce domains,
                 FBL / abuse / postmaster addresses; anything else 550 (never a relay)
    listener     the SMTP side (aiosmtpd, the Bridge's wire handling and limits)
    intake       one report: parse (`dataplane.reports`), attribute, count or keep; the reply
    attribution  VERP, then the returned headers (message index, Received, x-virtual-mta,
                 Source-IP), else unattributed
    accounting   one Lua script per report: markers, counter moves, events, suppression;
                 the bounded store of unattributed reports
"""

from .accounting import Accounting, counter_keys
from .attribution import Attribution, Attributor, Target
from .intake import ReportIntake
from .listener import InboundHandler, InboundSMTP

__all__ = [
    "Accounting",
    "Attribution",
    "Attributor",
    "InboundHandler",
    "InboundSMTP",
    "ReportIntake",
    "Target",
    "counter_keys",
]
