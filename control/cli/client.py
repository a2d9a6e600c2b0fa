"""The `poolmta` command line's side of the gRPC API: the channel, the bearer
token, calls with a deadline, and turning failures into messages a person can act on.

    client = ControlClient(address, token)
    pool = client.call("pools", "GetPool", pb.GetPoolRequest(smtp_id=3))
    for op in client.stream("ips", "WatchOperation", pb.WatchOperationRequest(...)):
        ...

Every failure leaves this module as a `CliError` (message + exit code); callers
never see a grpc exception. Tokens are sent, never logged, and never in clear to a
host that is not loopback unless the caller says `insecure` (control/grpc_tls.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc

from .._pb.poolmta.v1 import poolmta_pb2 as pb
from .._pb.poolmta.v1 import poolmta_pb2_grpc as rpc
from ..grpc_tls import ClientTls, InsecureGrpcError, TlsMaterialError, open_channel

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 30.0
# How long to wait for the channel when deciding whether UNAVAILABLE meant
# "nothing listens there" or "the control plane answered UNAVAILABLE".
_CONNECT_PROBE_SECONDS = 1.0

EXIT_ERROR = 1
EXIT_USAGE = 2

# Every poolmta service stub, by the short name client code uses.
STUBS = {
    "accounts": rpc.AccountServiceStub,
    "servers": rpc.MtaServerServiceStub,
    "pools": rpc.PoolServiceStub,
    "ips": rpc.IpServiceStub,
    "bridges": rpc.BridgeServiceStub,
    "stats": rpc.StatsServiceStub,
    "suppressions": rpc.SuppressionServiceStub,
    "dkim": rpc.DkimServiceStub,
    "queue": rpc.QueueServiceStub,
}

# Which token a service takes, for the hint after PERMISSION_DENIED.
_ADMIN_SERVICES = frozenset({"accounts", "servers"})


class CliError(Exception):
    """A failure to report as `error: <message>` and exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR, hint: str = "",
                 code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.hint = hint
        self.code = code  # the gRPC status of a failed call, None for other failures


def resolve_token(token: str | None, admin_token: str | None, data_dir: Path) -> str:
    """The token client commands send: `token` (--token or POOLMTA_TOKEN), else
    `admin_token` (POOLMTA_ADMIN_TOKEN), else the admin token the control plane
    wrote to `<data_dir>/admin.token` on first start.

    Raises CliError saying where it looked when there is none.
    """
    for given in (token, admin_token):
        if given and given.strip():
            return given.strip()
    path = Path(data_dir) / "admin.token"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise CliError(f"cannot read the admin token at {path}: {exc.strerror}") from None
    if token:
        return token
    raise CliError(
        f"no token: pass --token or set POOLMTA_TOKEN; without one, {path} is used, "
        "which `poolmta up` (or `poolmta control`) writes on first start"
    )


class ControlClient:
    """A channel to the control plane carrying one bearer token.

    `tls` says how to reach it (default: plaintext, to loopback only); a target the
    token may not go to in clear, or an unusable CA file, is a CliError (exit 2)
    raised here, before anything is sent.
    """

    def __init__(self, address: str, token: str, deadline: float = DEFAULT_DEADLINE,
                 tls: ClientTls = ClientTls()):
        self.address = address
        self.deadline = deadline
        self.tls = tls
        try:
            self._channel = open_channel(address, tls)
        except (InsecureGrpcError, TlsMaterialError) as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._stubs: dict[str, object] = {}

    def close(self) -> None:
        """Close the channel (idempotent)."""
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _method(self, service: str, method: str):
        stub = self._stubs.get(service)
        if stub is None:
            stub = self._stubs[service] = STUBS[service](self._channel)
        return getattr(stub, method)

    def call(self, service: str, method: str, request):
        """One unary call with the default deadline; CliError on failure."""
        log.debug("calling %s.%s on %s", service, method, self.address)
        try:
            return self._method(service, method)(request, metadata=self._metadata, timeout=self.deadline)
        except grpc.RpcError as exc:
            raise self._error(service, exc) from None

    def stream(self, service: str, method: str, request) -> Iterator:
        """The replies of a server-streaming call (no deadline: it lasts until the
        server ends it or the caller stops iterating); CliError on failure."""
        log.debug("streaming %s.%s on %s", service, method, self.address)
        replies = self._method(service, method)(request, metadata=self._metadata)
        try:
            yield from replies
        except grpc.RpcError as exc:
            raise self._error(service, exc) from None
        finally:
            replies.cancel()

    def found(self, service: str, method: str, request):
        """`call(...)` of a Get call, None when the object is NOT_FOUND."""
        try:
            return self.call(service, method, request)
        except CliError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            return None

    def _reachable(self) -> bool:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=_CONNECT_PROBE_SECONDS)
        except grpc.FutureTimeoutError:
            return False
        return True

    def _error(self, service: str, exc: grpc.RpcError) -> CliError:
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and not self._reachable():
            return CliError(
                f"cannot reach the poolmta control plane at {self.address} ({details or 'no answer'})",
                hint=(
                    "check that it serves TLS, that --grpc-ca names the CA that signed its certificate, "
                    "that --grpc uses a name the certificate carries and, if it asks for a client "
                    "certificate, that --grpc-client-cert / --grpc-client-key give one its CA signed"
                    if self.tls.uses_tls
                    else "is it running? Start it with `poolmta up` (or `poolmta control`), or point "
                    "--grpc / POOLMTA_GRPC at it; if it serves TLS, give --grpc-ca FILE or --grpc-tls"
                ),
            )
        hint = ""
        if code == grpc.StatusCode.PERMISSION_DENIED:
            hint = (
                "account and server commands take the platform admin token; pool, ip, bridge, "
                "op, stats, dkim and suppression commands take an account token (--token or POOLMTA_TOKEN; "
                "`poolmta account token ID` issues one)"
                if service not in _ADMIN_SERVICES
                else "account and server commands take the platform admin token "
                "(<data-dir>/admin.token, or POOLMTA_ADMIN_TOKEN)"
            )
        elif code == grpc.StatusCode.UNAUTHENTICATED:
            hint = "check --token / POOLMTA_TOKEN (an account token may have been revoked)"
        return CliError(f"{code.name}: {details}", hint=hint, code=code)

    # -- lookups shared by several commands ---------------------------------

    def resolve_pool(self, text: str) -> int:
        """The smtp_id a POOL argument names: an smtp_id of one of the account's pools,
        else an exact label, asked of the control plane (GetPool by id, then by label:
        never a listing); a number no pool has is passed on for the server to judge.

        Raises CliError (exit 1) for an unknown label.
        """
        wanted = text.strip()
        if wanted.isdigit() and self.found("pools", "GetPool", pb.GetPoolRequest(smtp_id=int(wanted))):
            return int(wanted)
        pool = self.found("pools", "GetPool", pb.GetPoolRequest(label=wanted))
        if pool is not None:
            return pool.smtp_id
        if wanted.isdigit():
            return int(wanted)
        raise CliError(f"no pool with the label or id {wanted!r}", hint="`poolmta pool list` shows the account's pools")

    def resolve_optional_pool(self, text: str | None) -> int:
        """`resolve_pool(text)` when a POOL was given, else 0: no pool named, so the server
        chooses (the default pool) or does not filter (list commands)."""
        return self.resolve_pool(text) if text else 0
