"""TLS for the control plane's gRPC, and the rule that keeps bearer tokens off a
network in clear: the certificate and key the server presents, the CA a client
verifies it with, and the loopback check both sides make.

    tls = load_server_tls(cert_file, key_file)          # TlsMaterialError if unusable
    check_listen("0.0.0.0:50051", tls=tls is not None, insecure=False)   # InsecureGrpcError
    port = bind(server, "0.0.0.0:50051", tls, insecure=False)
    channel = open_channel("mta-control.example:50051", ClientTls(ca_file=Path("ca.pem")))

Without TLS, gRPC is refused on every address that is not loopback (127.0.0.0/8,
::1): a token sent there could be read by anyone on the path. `insecure` is the
operator's explicit opt-out (a private network they trust, a TLS-terminating
proxy in front). Messages name files and reasons, never key material.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

# What the refusals tell the operator to do; the CLI's flags.
SERVER_TLS_FLAGS = "--grpc-tls-cert FILE --grpc-tls-key FILE"
CLIENT_TLS_FLAGS = "--grpc-ca FILE (or --grpc-tls for the default roots)"

# Target schemes of a gRPC channel that never leave the host.
_LOCAL_SCHEMES = ("unix:", "unix-abstract:")


class TlsMaterialError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file and why."""


class InsecureGrpcError(ValueError):
    """Plaintext gRPC off loopback without the operator's --insecure."""


@dataclass(frozen=True)
class ServerTls:
    """The PEM certificate chain and private key the control plane presents, read and
    checked once at start (the key is never logged or echoed), and, for mutual TLS,
    the CA certificates a client's certificate must chain to (None: no client
    certificate asked for; the bearer token alone authenticates)."""

    cert_file: Path
    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)  # a config dump must not carry the key
    client_ca: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ClientTls:
    """How a client reaches the control plane: `ca_file` (verify the server with this
    CA; implies TLS), `enabled` (TLS with gRPC's default roots), `cert_file` and
    `key_file` (the client certificate a mutual-TLS server asks for; implies TLS),
    `insecure` (allow a bearer token in clear to a host that is not loopback)."""

    enabled: bool = False
    ca_file: Path | None = None
    insecure: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.enabled or self.ca_file is not None or self.cert_file is not None


def load_server_tls(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> ServerTls:
    """The certificate chain and key in these PEM files, checked to belong together,
    and the CA certificates of `client_ca_file` when given (mutual TLS).

    Raises TlsMaterialError naming the file and the reason (unreadable, not PEM,
    encrypted key, key not matching the certificate).
    """
    cert_chain, private_key = _load_pair(Path(cert_file), Path(key_file))
    client_ca = load_ca(client_ca_file) if client_ca_file is not None else None
    return ServerTls(cert_file=Path(cert_file), cert_chain=cert_chain, private_key=private_key, client_ca=client_ca)


def _load_pair(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    """(certificate chain, private key) from PEM files checked to belong together."""
    cert_chain = _read(cert_file, "certificate")
    private_key = _read(key_file, "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # The password callback keeps OpenSSL from prompting on a terminal for an
        # encrypted key: gRPC cannot use one, so it is an error like any other.
        context.load_cert_chain(str(cert_file), str(key_file), password=lambda: b"")
    except ssl.SSLError as exc:
        reason = ("the key does not belong to the certificate" if exc.reason == "KEY_VALUES_MISMATCH"
                  else "expected a PEM certificate and an unencrypted PEM private key")
        detail = f" ({exc.reason})" if exc.reason else ""
        raise TlsMaterialError(
            f"cannot use the gRPC TLS certificate {cert_file} with the key {key_file}: {reason}{detail}"
        ) from None
    return cert_chain, private_key


def load_ca(ca_file: Path) -> bytes:
    """The PEM CA certificates in `ca_file`; TlsMaterialError when it holds none or cannot be read."""
    ca_file = Path(ca_file)
    pem = _read(ca_file, "CA certificate")
    try:
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise TlsMaterialError(f"cannot use the gRPC CA file {ca_file}: expected PEM certificates") from None
    return pem


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsMaterialError(f"cannot read the gRPC TLS {what} {path}: {exc.strerror}") from None


# -- where plaintext is allowed -----------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """True when `host` (an address, `[v6]`, or a name) means this host only: every
    address it resolves to is in 127.0.0.0/8 or ::1. The wildcard addresses (0.0.0.0,
    ::) listen on every interface, so they are not loopback; a name that does not
    resolve is not either."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return False  # "" binds every interface
    try:
        return _loopback_address(ipaddress.ip_address(host.partition("%")[0]))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(_loopback_address(ipaddress.ip_address(info[4][0].partition("%")[0]))
                               for info in infos)


def _loopback_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def target_hosts(target: str) -> list[str] | None:
    """The hosts a gRPC channel target connects to (`host:port`, `[v6]:port`,
    `dns:///host:port`, `ipv4:a:p,b:p`, `ipv6:[a]:p`), or None for a target that
    stays on this host (`unix:`); an unknown scheme gives [target] (not loopback)."""
    target = target.strip()
    if target.startswith(_LOCAL_SCHEMES):
        return None
    if target.startswith("dns:"):
        rest = target[4:]
        if rest.startswith("//"):
            rest = rest[2:].partition("/")[2]  # dns://authority/host:port
        return [_host_of(rest)]
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return [_host_of(part) for part in target[len(scheme):].split(",")]
    if "://" in target or target.partition(":")[0] in ("xds", "google-c2p"):
        return [target]
    return [_host_of(target)]


def _host_of(address: str) -> str:
    """The host of `host:port`, `[v6]:port`, `host` or a bare IPv6 address."""
    if address.startswith("["):
        return address[1:address.find("]")] if "]" in address else address
    try:
        ipaddress.ip_address(address)
        return address  # a bare IPv6 address: its colons are not a port
    except ValueError:
        return address.rpartition(":")[0] if ":" in address else address


def check_listen(listen: str, *, tls: bool, insecure: bool) -> None:
    """Raise InsecureGrpcError when the control plane would serve plaintext gRPC on
    `listen` (HOST:PORT) and HOST is not loopback, unless `insecure`."""
    if tls or insecure:
        return
    host = listen.rpartition(":")[0]
    if not is_loopback_host(host):
        raise InsecureGrpcError(
            f"refusing to serve gRPC without TLS on {listen}: it is not a loopback address, and bearer "
            f"tokens would cross the network in clear. Give {SERVER_TLS_FLAGS}, listen on 127.0.0.1, "
            "or pass --insecure if the network is trusted (e.g. a TLS-terminating proxy in front)"
        )


def check_target(target: str, client: ClientTls) -> None:
    """Raise InsecureGrpcError when a client would send its bearer token without TLS
    to `target` and `target` is not on this host, unless `client.insecure`."""
    if client.uses_tls or client.insecure:
        return
    hosts = target_hosts(target)
    if hosts is not None and not all(is_loopback_host(host) for host in hosts):
        raise InsecureGrpcError(
            f"refusing to send the API token without TLS to {target}: it is not a loopback address. "
            f"Give {CLIENT_TLS_FLAGS}, or pass --insecure to send it in clear anyway"
        )


# -- credentials ----------------------------------------------------------------------


def bind(server: grpc.aio.Server, listen: str, tls: ServerTls | None, *, insecure: bool) -> int:
    """Add `listen` (HOST:PORT) to `server`, with TLS when `tls` is given; the port bound.

    Raises InsecureGrpcError for plaintext off loopback without `insecure` (see
    check_listen) and OSError when the address cannot be bound.
    """
    check_listen(listen, tls=tls is not None, insecure=insecure)
    if tls is None:
        bound = server.add_insecure_port(listen)
    else:
        credentials = grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)],
                                                  root_certificates=tls.client_ca,
                                                  require_client_auth=tls.client_ca is not None)
        bound = server.add_secure_port(listen, credentials)
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {listen}")
    return bound


def open_channel(target: str, client: ClientTls) -> grpc.Channel:
    """A blocking channel to `target`: TLS when `client` asks for it, else plaintext,
    which check_target allows only to this host (InsecureGrpcError otherwise).
    TlsMaterialError when the CA file or the client certificate and key are unusable."""
    check_target(target, client)
    if not client.uses_tls:
        return grpc.insecure_channel(target)
    roots = load_ca(client.ca_file) if client.ca_file is not None else None
    chain = key = None
    if (client.cert_file is None) != (client.key_file is None):
        raise TlsMaterialError("--grpc-client-cert and --grpc-client-key go together: give both or neither")
    if client.cert_file is not None:
        chain, key = _load_pair(Path(client.cert_file), Path(client.key_file))
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                                                    certificate_chain=chain))


def self_channel(address: str, tls: ServerTls | None) -> grpc.aio.Channel:
    """An asyncio channel from the control plane's own process to the server it runs
    at `address` (`poolmta up` checking its MTA server): plaintext without `tls`, else
    TLS trusting the server's own certificate under the first name it carries.

    That trust holds for a self-signed certificate; with one a CA issued, the call
    fails like any unreachable check (callers treat it as a warning). Under mutual
    TLS it presents the server's own certificate, which the client CA may not accept.
    """
    if tls is None:
        return grpc.aio.insecure_channel(address)
    own = (tls.private_key, tls.cert_chain) if tls.client_ca is not None else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.cert_chain, private_key=own[0],
                                               certificate_chain=own[1])
    name = _certificate_name(tls.cert_chain)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.aio.secure_channel(address, credentials, options=options)


def _certificate_name(cert_chain: bytes) -> str | None:
    """The first DNS name (else the common name) of the chain's leaf certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    leaf = x509.load_pem_x509_certificates(cert_chain)[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
    except x509.ExtensionNotFound:
        pass
    common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else None
