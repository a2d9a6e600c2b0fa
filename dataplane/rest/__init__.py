"""The REST Bridge and the health endpoints of a data-plane worker (aiohttp), served
on the `--http-listen` port every worker shares; `build_app` composes them."""

from .app import RestBridge, body_limit, build_app
from .health import Health

__all__ = ["Health", "RestBridge", "body_limit", "build_app"]
