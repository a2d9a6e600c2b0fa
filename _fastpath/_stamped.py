"""The attribution headers poolmta stamps on every message, named once.

Only the platform may set them: both header-injection twins remove client-sent
copies, the data plane writes them (in this order, before a pool's custom
headers) and the control plane refuses them as custom headers. They are defined
here because `_fastpath` imports nothing of the project; the planes take them
from `control.contract.headers`.
"""

from __future__ import annotations

from typing import AnyStr, Generic, NamedTuple


class StampedHeaders(NamedTuple, Generic[AnyStr]):
    """The stamped field names, in the order they are written.

    Lower case: the twins compare field names case-insensitively by folding the
    message's names (RFC 5322 §1.2.2) and looking them up as they are here.
    """

    virtual_mta: AnyStr  # the pool's internal name
    feed_type: AnyStr  # the Bridge's feed type, else the pool's
    zone: AnyStr  # the zone of the pool's MTA server
    server_id: AnyStr  # that MTA server's id


STAMPED_HEADERS: StampedHeaders[bytes] = StampedHeaders(
    b"x-virtual-mta", b"x-feedtype", b"x-zone", b"x-serverid"
)
