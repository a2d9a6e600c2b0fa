"""Control-plane configuration: built once from flags and environment, then passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import validation
from .grpc_tls import ServerTls


@dataclass(frozen=True)
class ControlConfig:
    """What the control plane needs to run.

    data_dir: holds `poolmta.db` (SQLite, the system of record) and `admin.token`.
    redis_url: the Redis snapshots are published to (embedded one's unix-socket URL
        when the CLI started it).
    grpc_listen: host:port to serve gRPC on; port 0 picks a free port.
    admin_token: the platform admin token; None = read or create `<data_dir>/admin.token`.
    publish_check_interval: seconds between checks that Redis still holds every
        server's current snapshot (republishing after a Redis loss).
    reconcile_interval: seconds between passes of the IP reassignment reconciler.
    health_check_interval: seconds between the checks that Redis and SQLite answer,
        which set gRPC health SERVING / NOT_SERVING.
    min_trusted_prefix_v4, min_trusted_prefix_v6: the widest network a bridge may
        trust (/24 and /48 by default); the platform admin lowers them to allow wider.
    grpc_tls: the certificate and key gRPC is served with; None = plaintext, which
        is refused on an address that is not loopback unless grpc_insecure.
    metrics_listen: host:port to serve Prometheus metrics on (`control.metrics`);
        port 0 picks a free port; None = not served.
    """

    data_dir: Path
    redis_url: str
    grpc_listen: str = "127.0.0.1:50051"
    admin_token: str | None = None
    publish_check_interval: float = 1.0
    reconcile_interval: float = 0.2
    health_check_interval: float = 0.5
    grace_seconds: float = 5.0
    min_trusted_prefix_v4: int = validation.MIN_TRUSTED_PREFIX_V4
    min_trusted_prefix_v6: int = validation.MIN_TRUSTED_PREFIX_V6
    grpc_tls: ServerTls | None = None
    grpc_insecure: bool = False
    metrics_listen: str | None = None

    def __post_init__(self) -> None:
        if not self.redis_url:
            raise ValueError("redis_url is required")
        if self.metrics_listen is not None:
            host, sep, port = self.metrics_listen.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ValueError(f"metrics_listen must be host:port, got {self.metrics_listen!r}")
        host, sep, port = self.grpc_listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"grpc_listen must be host:port, got {self.grpc_listen!r}")
        if min(self.publish_check_interval, self.reconcile_interval, self.health_check_interval) <= 0:
            raise ValueError("intervals must be positive")
        if not 0 <= self.min_trusted_prefix_v4 <= 32 or not 0 <= self.min_trusted_prefix_v6 <= 128:
            raise ValueError("minimum trusted prefix lengths must be 0-32 (IPv4) and 0-128 (IPv6)")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "poolmta.db"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"
