"""How both planes serve Prometheus metrics: prometheus-client's own HTTP server, in a
thread of the serving process, answering every path (`/metrics` included) with the
text exposition format of one registry."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.registry import Collector

__all__ = ["MetricsHttpServer"]


class MetricsHttpServer:
    """`registry` served at `http://host:port/metrics` until `close`; port 0 picks one
    (`port` says which). OSError when the address cannot be bound."""

    def __init__(self, host: str, port: int, registry: Collector) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port: int = self._server.server_port

    @property
    def listen(self) -> str:
        """`HOST:PORT` (brackets around an IPv6 host)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
