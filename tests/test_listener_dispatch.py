"""aiosmtpd builds a session's command, AUTH and hook tables from `dir()` on every
connection; poolmta's sessions and handlers answer it with just the names those
tables come from (`dataplane.smtp_listener.dispatch_names`). The tables must be
exactly the ones the full `dir()` gives, for both listeners' real classes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dataplane.config import DataplaneConfig
from dataplane.inbound.listener import InboundHandler, InboundSMTP
from dataplane.smtp_bridge import BridgeHandler, BridgeSMTP
from dataplane.smtp_listener import ListenerHandler, ListenerSMTP, dispatch_names


def _tables(session) -> tuple:
    return (
        {name: method.__func__ for name, method in session._smtp_methods.items()},
        {name: (impl.method.__func__, impl.is_builtin) for name, impl in session._auth_methods.items()},
        {name: hook.__func__ for name, hook in session._handle_hooks.items()},
    )


class _Handler(ListenerHandler):
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        return responses

    async def handle_DATA(self, server, session, envelope):
        return "250 Ok"

    async def auth_CUSTOM(self, server, args):
        return None


def _full_dir(cls: type) -> type:
    """`cls` answering dir() in full, as aiosmtpd expects of any object."""
    return type(f"Full{cls.__name__}", (cls,), {"__dir__": object.__dir__})


async def test_sessions_get_the_tables_the_full_dir_gives():
    loop = asyncio.get_running_loop()
    config = DataplaneConfig(server_id=1, data_dir=Path("/nonexistent"), redis_url="unix:///nonexistent")
    fast = ListenerSMTP(_Handler(config, loader=None), hostname="h", tls_context=None, data_size_limit=1000,
                        ident="t", loop=loop)
    full = _full_dir(ListenerSMTP)(_full_dir(_Handler)(config, loader=None), hostname="h", tls_context=None,
                                   data_size_limit=1000, ident="t", loop=loop)
    assert _tables(fast) == _tables(full)
    assert {"EHLO", "DATA"} <= set(fast._handle_hooks) and "CUSTOM" in fast._auth_methods
    assert "MAIL" in fast._smtp_methods and "STARTTLS" in fast._smtp_methods


def test_the_real_listeners_answer_dir_with_their_dispatch_names():
    # Their sessions and handlers inherit the short dir() (and so get the same tables
    # as ListenerSMTP above); every SMTP command aiosmtpd dispatches is among them.
    for cls in (BridgeSMTP, BridgeHandler, InboundSMTP, InboundHandler):
        assert cls.__dir__ in (ListenerSMTP.__dir__, ListenerHandler.__dir__), cls
    commands = {n for n in type.__dir__(BridgeSMTP) if n.startswith("smtp_")}
    assert {"smtp_EHLO", "smtp_MAIL", "smtp_RCPT", "smtp_DATA", "smtp_AUTH", "smtp_STARTTLS", "smtp_QUIT"} <= commands


def test_the_names_are_found_once_per_class():
    class Handler(ListenerHandler):
        async def handle_DATA(self, server, session, envelope):
            return "250 Ok"

    config = DataplaneConfig(server_id=1, data_dir=Path("/nonexistent"), redis_url="unix:///nonexistent")
    first, second = Handler(config, loader=None), Handler(config, loader=None)
    assert dispatch_names(first) is dispatch_names(second)
    assert dir(first) == ["handle_DATA"]
