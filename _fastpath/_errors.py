"""Errors and error messages of the fast path, shared by both twins.

Defined once so that the compiled and the pure-Python implementation raise the
same exception types with the same messages (the msgpack-python layout). Every
function here runs on an error path only; none is on the per-message hot path.
"""

from __future__ import annotations

# Largest rotation weight a dedicated IP may carry. It keeps every running sum of
# the smooth weighted round robin inside a signed 64-bit integer in the compiled
# twin, for any realistic number of IPs per pool.
MAX_WEIGHT = 2**31 - 1


class NoUsableIp(LookupError):
    """The pool has no IP that is active with a weight above zero.

    The data plane turns it into a temporary (4xx) reply: the sender retries
    once an operator activates or re-weights an IP.
    """

    def __init__(self, pool_key: object) -> None:
        super().__init__(f"pool {pool_key} has no usable IP (all paused or weight 0)")
        self.pool_key = pool_key

    def __reduce__(self):
        # The default reduce would pass the message back in as the pool key.
        return (type(self), (self.pool_key,))


# --- rotation table ------------------------------------------------------------


def unknown_pool(pool_key: object) -> KeyError:
    return KeyError(f"pool {pool_key} is not in the routing table")


def pool_index_out_of_range(index: int, size: int) -> IndexError:
    return IndexError(f"pool index {index} is out of range for a routing table of {size} pools")


def duplicate_pool(pool_key: object) -> ValueError:
    return ValueError(f"pool {pool_key} appears more than once in the routing table input")


def bad_ip_entry(pool_key: object, entry: object) -> ValueError:
    return ValueError(
        f"pool {pool_key}: each IP must be a (address, weight, active) tuple, got {entry!r}"
    )


def bad_address(pool_key: object, address: object) -> ValueError:
    return ValueError(f"pool {pool_key}: IP address must be a str, got {address!r}")


def bad_weight(pool_key: object, address: str, weight: object) -> ValueError:
    return ValueError(
        f"pool {pool_key}: weight of IP {address} must be an int from 0 to {MAX_WEIGHT}, "
        f"got {weight!r}"
    )


def bad_active(pool_key: object, address: str, active: object) -> ValueError:
    return ValueError(
        f"pool {pool_key}: active flag of IP {address} must be a bool, got {active!r}"
    )


# --- header injection ------------------------------------------------------------


def raw_not_bytes(raw: object) -> TypeError:
    return TypeError(f"the raw message must be bytes, got {type(raw).__name__}")


def prefix_not_bytes(prefix: object) -> TypeError:
    return TypeError(f"the prefix must be bytes, got {type(prefix).__name__}")


def bad_header_item(item: object) -> TypeError:
    return TypeError(f"each header must be a (name, value) tuple of bytes, got {item!r}")


def name_not_bytes(name: object) -> TypeError:
    return TypeError(f"header name must be bytes, got {type(name).__name__}")


def value_not_bytes(name: bytes, value: object) -> TypeError:
    return TypeError(f"value of header {name!r} must be bytes, got {type(value).__name__}")


def invalid_header_name(name: bytes) -> ValueError:
    return ValueError(
        f"invalid header name {name!r}: a field name is one or more printable US-ASCII "
        "characters (33-126) other than ':' (RFC 5322 section 3.6.8)"
    )


def invalid_header_value(name: bytes) -> ValueError:
    return ValueError(
        f"invalid value for header {name!r}: CR, LF and NUL are not allowed "
        "(the fast path writes each header as one unfolded line)"
    )


# --- DKIM canonicalisation ---------------------------------------------------------


def not_bytes(what: str, value: object) -> TypeError:
    return TypeError(f"the {what} must be bytes, got {type(value).__name__}")
