"""The domain layer: every rule of accounts, MTA servers, pools, IPs, operations,
bridges and DKIM keys, one module per concept (`accounts`, `servers`, `pools`, `ips`,
`operations`, `bridges`, `dkim`; `lookups` finds their records or says NotFound).

Each public method is one transaction on the Store. Methods that change routing
bump the affected servers' routing version inside that transaction; the caller
then has the publisher bring Redis up to date. Callers pass the authenticated
Account for tenant calls; objects of another account are NotFound, exactly as if
they did not exist. Nothing here imports grpc.
"""

from __future__ import annotations

from .. import validation
from ..store import Store
from .accounts import Accounts
from .bridges import Bridges
from .dkim import DkimKeys
from .ips import DedicatedIps
from .operations import Operations
from .pools import Pools
from .servers import MtaServers

__all__ = ["Registry"]


class Registry(Accounts, MtaServers, Pools, DedicatedIps, Operations, Bridges, DkimKeys):
    """Accounts, servers, pools, IPs, bridges and operations, with their rules: the one
    entry the servicers, the authenticator and the reconciler use."""

    def __init__(self, store: Store, *, min_trusted_prefix_v4: int = validation.MIN_TRUSTED_PREFIX_V4,
                 min_trusted_prefix_v6: int = validation.MIN_TRUSTED_PREFIX_V6,
                 dkim_master_key: bytes | None = None):
        self.store = store
        self.dkim_master_key = dkim_master_key  # seals DKIM private keys (control.contract.dkim_seal)
        self.min_trusted_prefix_v4 = min_trusted_prefix_v4
        self.min_trusted_prefix_v6 = min_trusted_prefix_v6
