"""RFC 3461 DSN parameters from the Bridge to the next hop: how the spool record
keeps what a sender asked for, and what delivery passes on.

At acceptance (`dataplane.smtp_bridge`) the parameters `dataplane.dsn_request`
parsed go into the record: `dsn_ret` and `dsn_envid` from MAIL (`mail_fields`),
and per recipient a map of its NOTIFY and ORCPT (`rcpt_option`) in
`rcpt_options`, in the order of `rcpt_tos`. So they survive a crash with the
message, and `mail_params` / `rcpt_params` read them back.

Relaying (RFC 3461 4 and 5.2): when the next hop advertises DSN, MAIL carries
RET and ENVID and each RCPT its NOTIFY and ORCPT, as the sender gave them
(`next_hop_mail_params`, `next_hop_rcpt_params`), so the hop that finally
delivers or fails honours them. To a hop without DSN nothing is passed (it
would refuse the command, RFC 5321 4.1.1.11); this MTA then acts on them itself:
a failure it learns of becomes a DSN to the sender (`dataplane.delivery.notices`).
"""

from __future__ import annotations

from .dsn_request import (
    MailDsnParams,
    OriginalRecipient,
    RcptDsnParams,
    Ret,
    parse_notify,
    xtext_encode,
)
from .spool import SpoolRecord

# RFC 6533 3: QCHAR, the printable ASCII of a utf-8-addr-xtext, without "\", "+" and "=".
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"\\", "+", "="}


def mail_fields(params: MailDsnParams) -> dict[str, str]:
    """The record fields (`dsn_ret`, `dsn_envid`) for the MAIL parameters a sender gave."""
    return {"dsn_ret": params.ret.value if params.ret is not None else "", "dsn_envid": params.envid or ""}


def rcpt_option(params: RcptDsnParams) -> dict:
    """One recipient's entry of the record's `rcpt_options`: "notify" and "orcpt" as given."""
    option: dict = {}
    if params.notify is not None:
        option["notify"] = str(params.notify)
    if params.orcpt is not None:
        option["orcpt"] = [params.orcpt.addr_type, params.orcpt.address]
    return option


def rcpt_options(params: list[RcptDsnParams]) -> tuple[dict, ...]:
    """The record's `rcpt_options` for these recipients' parameters; () when no recipient
    has any (the common case costs nothing in the record)."""
    options = tuple(rcpt_option(p) for p in params)
    return options if any(options) else ()


def mail_params(record: SpoolRecord) -> MailDsnParams:
    """The RET and ENVID the sender gave, read back from the record."""
    return MailDsnParams(ret=Ret(record.dsn_ret) if record.dsn_ret else None, envid=record.dsn_envid or None)


def rcpt_params(record: SpoolRecord, index: int) -> RcptDsnParams:
    """The NOTIFY and ORCPT of recipient `index` (its place in `rcpt_tos`), read back from
    the record; none for a record without them. An entry that does not read (a damaged
    or foreign record) counts as none: the defaults then apply, never a crash."""
    if not 0 <= index < len(record.rcpt_options):
        return RcptDsnParams()
    option = record.rcpt_options[index]
    try:
        notify = parse_notify(option["notify"]) if "notify" in option else None
        orcpt = OriginalRecipient(*map(str, option["orcpt"])) if "orcpt" in option else None
    except (TypeError, ValueError):
        return RcptDsnParams()
    return RcptDsnParams(notify=notify, orcpt=orcpt)


def next_hop_mail_params(record: SpoolRecord) -> list[str]:
    """RET and ENVID for the MAIL command to a next hop that advertises DSN."""
    params = []
    if record.dsn_ret:
        params.append(f"RET={record.dsn_ret}")
    if record.dsn_envid:
        params.append(f"ENVID={xtext_encode(record.dsn_envid)}")
    return params


def next_hop_rcpt_params(record: SpoolRecord, index: int, *, utf8: bool) -> list[str]:
    """NOTIFY and ORCPT of recipient `index` for its RCPT command to a next hop that
    advertises DSN. A "utf-8" ORCPT goes as RFC 6533 3 utf-8-addr-unitext in an SMTPUTF8
    transaction (`utf8`), as utf-8-addr-xtext (\\x{HEX} escapes) otherwise."""
    params = rcpt_params(record, index)
    found = []
    if params.notify is not None:
        found.append(f"NOTIFY={params.notify}")
    if params.orcpt is not None:
        addr_type, address = params.orcpt.addr_type, params.orcpt.address
        if addr_type == "utf-8":
            encoded = "".join(c if c in _QCHAR or (utf8 and ord(c) > 0x7F) else f"\\x{{{ord(c):X}}}" for c in address)
        else:
            encoded = xtext_encode(address)
        found.append(f"ORCPT={addr_type};{encoded}")
    return found
