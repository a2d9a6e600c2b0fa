"""Bearer-token authentication of gRPC callers.

The platform admin token guards AccountService and MtaServerService; account API
tokens guard everything else. Tokens are compared by hash (constant time for the
admin token; account tokens are looked up by their SHA-256, which leaks nothing).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from .contract import file_modes, secrets
from .errors import PermissionDenied, Unauthenticated
from .models import Account
from .registry import Registry


class Admin:
    """The platform administrator."""


ADMIN = Admin()


def load_or_create_admin_token(path: Path, given: str | None) -> str:
    """The admin token: `given` when set, else the token in `path`, created (mode 0600)
    on first start."""
    if given:
        return given
    if path.exists():
        file_modes.tighten(path)
        token = path.read_text().strip()
        if token:
            return token
    file_modes.private_dir(path.parent)
    token = secrets.generate_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def bearer_token(metadata) -> str:
    """The token of an `authorization: Bearer <token>` metadata entry; Unauthenticated if absent."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    raise Unauthenticated("missing authorization metadata: send 'authorization: Bearer <token>'")


class Authenticator:
    """Maps request metadata to the admin or an account."""

    def __init__(self, registry: Registry, admin_token: str):
        self._registry = registry
        self._admin_hash = secrets.hash_secret(admin_token).encode()

    def _is_admin(self, token: str) -> bool:
        return hmac.compare_digest(secrets.hash_secret(token).encode(), self._admin_hash)

    def admin(self, metadata) -> Admin:
        """The admin, or Unauthenticated/PermissionDenied."""
        token = bearer_token(metadata)
        if self._is_admin(token):
            return ADMIN
        if self._registry.account_for_token(token) is not None:
            raise PermissionDenied("this call needs the platform admin token, not an account token")
        raise Unauthenticated("invalid token")

    def caller(self, metadata) -> Admin | Account:
        """The admin or the account the token speaks for, or Unauthenticated."""
        token = bearer_token(metadata)
        if self._is_admin(token):
            return ADMIN
        account = self._registry.account_for_token(token)
        if account is None:
            raise Unauthenticated("invalid or revoked token")
        return account

    def account(self, metadata) -> Account:
        """The account the token belongs to, or Unauthenticated/PermissionDenied."""
        token = bearer_token(metadata)
        account = self._registry.account_for_token(token)
        if account is not None:
            return account
        if self._is_admin(token):
            raise PermissionDenied("this call needs an account token; the admin token manages accounts and servers")
        raise Unauthenticated("invalid or revoked token")
