"""Source-IP rotation (smooth weighted round robin), every case against both twins."""

from __future__ import annotations

import pickle
import tracemalloc
from collections import Counter
from itertools import repeat

import pytest

from tests._fastpath_impls import load

from _fastpath._errors import MAX_WEIGHT, NoUsableIp


def table_of(rotation, *pools):
    """A table whose pool keys are 1, 2, ... for the given IP lists."""
    return rotation.RotationTable.from_pools(
        (key, ips) for key, ips in enumerate(pools, start=1)
    )


def name(position):
    """The name `ips` gives the IP at `position` (what a pick returns)."""
    return chr(ord("a") + position) if position < 26 else f"ip{position}"


def addresses(table, index, count):
    return "".join(name(table.pick(index)) for _ in range(count))


def ips(*weights, paused=()):
    """IPs named a, b, c, ... (ip26, ip27, ... after z) with the given weights;
    `paused` names are inactive."""
    names = [name(k) for k in range(len(weights))]
    return [(name, weight, name not in paused) for name, weight in zip(names, weights)]


# --- the algorithm ---------------------------------------------------------------------


def test_nginx_example_sequence(rotation):
    # The sequence nginx documents for weights 5, 1, 1: spread, not a a a a a b c.
    table = table_of(rotation, ips(5, 1, 1))
    assert addresses(table, 0, 14) == "aabacaa" * 2


def test_equal_weights_take_turns(rotation):
    table = table_of(rotation, ips(1, 1, 1))
    assert addresses(table, 0, 9) == "abc" * 3


def test_ties_go_to_the_earlier_ip(rotation):
    table = table_of(rotation, ips(2, 2))
    assert addresses(table, 0, 4) == "abab"


@pytest.mark.parametrize(
    "weights",
    [(1,), (3, 1), (5, 1, 1), (2, 3, 5, 7), (10, 10, 1), (1,) * 64, tuple(range(1, 41))],
)
def test_each_ip_exactly_weight_times_per_cycle(rotation, weights):
    table = table_of(rotation, ips(*weights))
    cycle = sum(weights)
    for _ in range(3):  # every window of W picks aligned on the cycle, three cycles running
        counts = Counter(table.pick(0) for _ in range(cycle))
        assert counts == {k: weight for k, weight in enumerate(weights)}


def test_any_window_of_w_picks_has_exact_counts(rotation):
    weights = (4, 3, 2, 1)
    table = table_of(rotation, ips(*weights))
    picks = [table.pick(0) for _ in range(5 * sum(weights))]
    for start in range(len(picks) - sum(weights) + 1):
        window = Counter(picks[start : start + sum(weights)])
        assert window == {0: 4, 1: 3, 2: 2, 3: 1}


def test_very_uneven_weights_keep_exact_counts(rotation):
    # A cycle this long is not precomputed by the compiled twin: it runs the loop.
    table = table_of(rotation, ips(1, 4999))
    picks = [table.pick(0) for _ in range(5000)]
    assert Counter(picks) == {0: 1, 1: 4999}
    assert picks.index(0) == 2499  # the light IP comes mid-cycle, not first or last


def test_scaled_weights_pick_the_same_sequence(rotation):
    plain = table_of(rotation, ips(3, 2, 1))
    scaled = table_of(rotation, ips(300, 200, 100))
    assert addresses(plain, 0, 30) == addresses(scaled, 0, 30)


def test_max_weight_is_accepted(rotation):
    table = table_of(rotation, ips(MAX_WEIGHT, MAX_WEIGHT, 1))
    assert addresses(table, 0, 4) == "abab"


# --- what is in rotation --------------------------------------------------------------


def test_paused_and_zero_weight_ips_are_skipped(rotation):
    table = table_of(rotation, ips(1, 0, 1, 5, 1, paused="d"))
    assert addresses(table, 0, 6) == "aceace"
    counts = Counter(name(table.pick(0)) for _ in range(300))
    assert counts == {"a": 100, "c": 100, "e": 100}


def test_ip_index_is_the_position_in_the_given_list(rotation):
    table = table_of(
        rotation, [("192.0.2.1", 0, True), ("192.0.2.2", 1, False), ("192.0.2.3", 1, True)]
    )
    assert table.pick(0) == 2
    assert table.pick(0) == 2


def test_pick_returns_the_prebuilt_position(rotation):
    table = table_of(rotation, ips(*[1] * 300))
    first = [table.pick(0) for _ in range(300)]
    again = [table.pick(0) for _ in range(300)]
    assert first == list(range(300))
    assert all(a is b for a, b in zip(first, again, strict=True))  # positions past the small ints too


@pytest.mark.parametrize("pool", [[], ips(0, 0), ips(1, 2, paused="ab")])
def test_pool_without_usable_ip_raises(rotation, pool):
    table = rotation.RotationTable.from_pools([(7, ips(1)), (42, pool)])
    with pytest.raises(NoUsableIp) as caught:
        table.pick(1)
    assert str(caught.value) == "pool 42 has no usable IP (all paused or weight 0)"
    assert caught.value.pool_key == 42
    assert isinstance(caught.value, LookupError)
    assert table.pick(0) == 0  # the other pools keep serving


def test_no_usable_ip_survives_pickling():
    error = pickle.loads(pickle.dumps(NoUsableIp(42)))
    assert (type(error), error.pool_key, str(error)) == (
        NoUsableIp,
        42,
        "pool 42 has no usable IP (all paused or weight 0)",
    )


def test_errors_are_shared_by_both_twins():
    compiled, pure = load("rotation", "c"), load("rotation", "py")
    assert compiled.NoUsableIp is pure.NoUsableIp is NoUsableIp


# --- table addressing -----------------------------------------------------------------


def test_pools_get_dense_indexes_in_input_order(rotation):
    table = rotation.RotationTable.from_pools(
        [(1001, ips(1)), (5, [("b", 1, True)]), ("shared", [("c", 1, True)])]
    )
    assert len(table) == 3
    assert [table.index_of(key) for key in (1001, 5, "shared")] == [0, 1, 2]
    assert table.pick_key(5) == 0
    assert table.pick_key("shared") == table.pick(2)


def test_unknown_pool_key(rotation):
    table = table_of(rotation, ips(1))
    with pytest.raises(KeyError) as caught:
        table.index_of(99)
    assert caught.value.args == ("pool 99 is not in the routing table",)
    with pytest.raises(KeyError):
        table.pick_key(99)


@pytest.mark.parametrize("index", [2, -1, -3, 10**30, -(10**30)])
def test_index_out_of_range(rotation, index):
    table = table_of(rotation, ips(1), ips(1))
    with pytest.raises(IndexError) as caught:
        table.pick(index)
    assert str(caught.value) == (
        f"pool index {index} is out of range for a routing table of 2 pools"
    )


def test_index_must_be_an_integer(rotation):
    table = table_of(rotation, ips(1), ips(1))

    class Index:
        def __index__(self):
            return 1

    assert table.pick(Index()) == table.pick(1)
    assert table.pick(True) == table.pick(1)
    for bad in ("1", 1.0, None):
        with pytest.raises(TypeError) as caught:
            table.pick(bad)
        message = f"'{type(bad).__name__}' object cannot be interpreted as an integer"
        assert str(caught.value) == message


def test_empty_table(rotation):
    table = rotation.RotationTable.from_pools([])
    assert len(table) == 0
    with pytest.raises(IndexError):
        table.pick(0)


def test_pools_rotate_independently(rotation):
    table = table_of(rotation, ips(1, 1), ips(1, 1))
    assert addresses(table, 0, 3) == "aba"
    assert addresses(table, 1, 2) == "ab"
    assert addresses(table, 0, 1) == "b"


def test_a_rebuilt_table_does_not_disturb_the_serving_one(rotation):
    old = table_of(rotation, ips(1, 1, 1))
    assert addresses(old, 0, 1) == "a"
    new = table_of(rotation, ips(1, 1, 1, paused="a"))
    assert addresses(new, 0, 2) == "bc"
    assert addresses(old, 0, 2) == "bc"  # position kept where it was
    assert addresses(old, 0, 1) == "a"


def test_accepts_lists_and_generators_as_input(rotation):
    table = rotation.RotationTable.from_pools(
        iter([(1, (ip for ip in [["a", 1, True], ("b", 2, True)]))])
    )
    assert addresses(table, 0, 3) == "bab"


def test_many_pools(rotation):
    table = rotation.RotationTable.from_pools(
        (key, [(f"10.{key >> 8 & 255}.{key & 255}.{k}", 1 + k, True) for k in range(3)])
        for key in range(20_000)
    )
    assert len(table) == 20_000
    last = table.index_of(19_999)
    assert [table.pick(last) for _ in range(3)] == [2, 1, 0]


# --- input validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, message",
    [
        (("a", -1, True), "pool 1: weight of IP a must be an int from 0 to 2147483647, got -1"),
        (("a", 1.0, True), "pool 1: weight of IP a must be an int from 0 to 2147483647, got 1.0"),
        (("a", "3", True), "pool 1: weight of IP a must be an int from 0 to 2147483647, got '3'"),
        (("a", True, True), "pool 1: weight of IP a must be an int from 0 to 2147483647, got True"),
        (
            ("a", MAX_WEIGHT + 1, True),
            "pool 1: weight of IP a must be an int from 0 to 2147483647, got 2147483648",
        ),
        ((b"a", 1, True), "pool 1: IP address must be a str, got b'a'"),
        (("a", 1, "active"), "pool 1: active flag of IP a must be a bool, got 'active'"),
        (("a", 1, 1), "pool 1: active flag of IP a must be a bool, got 1"),
        (("a", 1), "pool 1: each IP must be a (address, weight, active) tuple, got ('a', 1)"),
        ("a", "pool 1: each IP must be a (address, weight, active) tuple, got 'a'"),
    ],
)
def test_malformed_ip_is_rejected(rotation, entry, message):
    with pytest.raises(ValueError) as caught:
        rotation.RotationTable.from_pools([(1, [entry])])
    assert str(caught.value) == message


def test_duplicate_pool_key_is_rejected(rotation):
    with pytest.raises(ValueError) as caught:
        rotation.RotationTable.from_pools([(1, ips(1)), (2, ips(1)), (1, ips(2))])
    assert str(caught.value) == "pool 1 appears more than once in the routing table input"


# --- cost ------------------------------------------------------------------------------


def _traced_memory_of_calls(function, argument, times):
    """(current, peak) bytes traced while calling `function(argument)` `times` times."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in repeat(None, times):  # no int objects made by the loop itself
            function(argument)
        return tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("pool", [0, 1], ids=["recorded-cycle", "running-loop"])
def test_compiled_pick_allocates_nothing(pool):
    table = table_of(load("rotation", "c"), ips(*range(1, 20)), ips(1, 5000))
    noop = load("floor", "c").noop
    table.pick(pool)
    # The loop itself costs a few bytes; the empty compiled call shows how many.
    assert _traced_memory_of_calls(table.pick, pool, 5_000) == _traced_memory_of_calls(
        noop, pool, 5_000
    )
