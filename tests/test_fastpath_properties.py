"""Property tests: the twins agree, and the invariants hold, on generated input.

Agreement means the same picks, the same bytes and the same errors (type and
message) from `_fastpath.*_c` and `_fastpath.*_py`. The invariants are those of
the issue: exact proportions over a full rotation cycle, idempotent injection,
and bytes outside the stamped fields preserved. Every input that once broke
something is pinned with @example.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests._fastpath_impls import load_both, outcome

from _fastpath import RESERVED_HEADERS
from _fastpath._errors import MAX_WEIGHT

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def rotation_twins():
    return load_both("rotation")


@pytest.fixture(scope="module")
def headers_twins():
    return load_both("headers")


# --- rotation -------------------------------------------------------------------------

# Small weights keep full cycles short enough to walk; the big ones make cycles the
# compiled twin does not record (it runs the algorithm instead), and MAX_WEIGHT
# exercises the 64-bit running sums.
weights = st.one_of(
    st.integers(0, 6),
    st.integers(0, 6),
    st.integers(0, 3000),
    st.sampled_from([MAX_WEIGHT, MAX_WEIGHT - 1, 2**20]),
)
ip_lists = st.lists(st.tuples(weights, st.booleans()), max_size=12)
pool_lists = st.lists(ip_lists, min_size=0, max_size=5)


def build_pools(pools):
    return [
        (f"pool-{key}", [(f"192.0.2.{k}", w, active) for k, (w, active) in enumerate(ips)])
        for key, ips in enumerate(pools)
    ]


@FAST
@given(pools=pool_lists, picks=st.lists(st.integers(-2, 6), max_size=400))
# a cycle too long for the compiled twin to record: it runs the algorithm
@example(pools=[[(1, True), (4999, True)]], picks=[0] * 400)
@example(pools=[[(MAX_WEIGHT, True), (MAX_WEIGHT, True), (1, True)]], picks=[0] * 10)
@example(pools=[[], [(0, True), (3, False)]], picks=[0, 1, 2, -1])  # pools with no usable IP
def test_rotation_twins_agree(rotation_twins, pools, picks):
    compiled, pure = (twin.RotationTable.from_pools(build_pools(pools)) for twin in rotation_twins)
    assert len(compiled) == len(pure)
    for index in picks:
        assert outcome(compiled.pick, index) == outcome(pure.pick, index)


@FAST
@given(
    entries=st.lists(
        st.tuples(
            st.one_of(st.text(max_size=3), st.integers(), st.none()),
            st.one_of(
                st.integers(-5, MAX_WEIGHT + 5), st.floats(), st.booleans(), st.text(max_size=2)
            ),
            st.one_of(st.booleans(), st.integers(0, 1), st.none()),
        ),
        max_size=4,
    ),
    duplicate=st.booleans(),
)
def test_rotation_twins_reject_the_same_input(rotation_twins, entries, duplicate):
    pools = [(1, entries), (2, [])] + ([(1, [])] if duplicate else [])
    compiled, pure = (outcome(twin.RotationTable.from_pools, pools) for twin in rotation_twins)
    assert compiled[0] == pure[0]
    if compiled[0] == "raised":
        assert compiled == pure


small_weights = st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=10)


@THOROUGH
@given(ips=small_weights, warmup=st.integers(0, 200), cycles=st.integers(1, 3))
@example(ips=[(5, True), (1, True), (1, True)], warmup=3, cycles=1)
@example(ips=[(2, True), (0, True), (2, False), (2, True)], warmup=1, cycles=2)
def test_every_window_of_a_full_cycle_has_exact_counts(rotation_twins, ips, warmup, cycles):
    usable = {k: weight for k, (weight, active) in enumerate(ips) if active and weight > 0}
    cycle = sum(usable.values())
    for twin in rotation_twins:
        table = twin.RotationTable.from_pools(build_pools([ips]))
        if not usable:
            continue
        for _ in range(warmup):  # windows start anywhere, not only at the cycle start
            table.pick(0)
        for _ in range(cycles):
            assert Counter(table.pick(0) for _ in range(cycle)) == usable


@FAST
@given(ips=small_weights, factor=st.integers(2, 1000))
def test_scaling_all_weights_keeps_the_sequence(rotation_twins, ips, factor):
    scaled = [(weight * factor, active) for weight, active in ips]
    cycle = sum(weight for weight, active in ips if active) or 1
    for twin in rotation_twins:
        plain = twin.RotationTable.from_pools(build_pools([ips]))
        bigger = twin.RotationTable.from_pools(build_pools([scaled]))
        assert [outcome(plain.pick, 0) for _ in range(2 * cycle)] == [
            outcome(bigger.pick, 0) for _ in range(2 * cycle)
        ]


# --- header injection ---------------------------------------------------------------------

NAME_BYTES = bytes(c for c in range(33, 127) if c != ord(":"))

field_names = st.one_of(
    st.sampled_from(
        [b"X-Virtual-MTA", b"x-feedtype", b"X-ZONE", b"X-ServerId", b"X-Custom", b"x-custom",
         b"Subject", b"From", b"Received", b"X-Zone-Extra", b"X-Zon", b"DKIM-Signature"]
    ),
    st.text(alphabet=NAME_BYTES.decode(), min_size=1, max_size=8).map(str.encode),
)
text_bytes = st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
header_line = st.one_of(
    st.tuples(field_names, st.sampled_from([b":", b": ", b" :", b"\t:"]), text_bytes).map(b"".join),
    st.tuples(st.sampled_from([b" ", b"\t", b"  "]), text_bytes).map(b"".join),  # folds
    text_bytes,  # anything: no colon, 8-bit, empty after the prefix...
)
line_endings = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def messages(draw):
    """Raw messages shaped like mail (header lines, folds, an empty line, a body) or not."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))  # arbitrary bytes
    lines = draw(st.lists(st.tuples(header_line, line_endings), max_size=10))
    # Repeated, the lines make header blocks long enough for the compiled twin's
    # 64-byte steps.
    lines *= draw(st.sampled_from([1, 1, 1, 4, 12]))
    raw = b"".join(line + ending for line, ending in lines)
    if draw(st.booleans()):
        raw += draw(line_endings) + draw(st.binary(max_size=40))
    if raw and draw(st.integers(0, 4)) == 0:
        raw = raw[: -draw(st.integers(1, min(2, len(raw))))]  # cut the last line ending
    return raw


valid_values = st.binary(max_size=16).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"").replace(b"\0", b"")
)
valid_headers = st.lists(st.tuples(field_names, valid_values), max_size=6)
any_headers = st.lists(
    st.tuples(st.one_of(field_names, st.binary(max_size=6)), st.binary(max_size=8)), max_size=5
)


@THOROUGH
@given(raw=messages(), stamp=st.one_of(valid_headers, any_headers))
@example(raw=b" orphan\r\nFrom: a\r\n", stamp=[(b"X-A", b"1")])  # fold with no field above
@example(raw=b"From: a\r\n\r", stamp=[])  # CR at the very end is not a line ending
@example(raw=b"X-Zone \t: a\n\tb\nc", stamp=[])  # WSP before the colon, then a fold
@example(raw=b"\n", stamp=[(b"X-A", b"")])  # no headers, bare-LF empty line
@example(raw=b"X-Zone", stamp=[(b"x-zone", b"1")])  # a name without its colon is no field
def test_header_twins_agree(headers_twins, raw, stamp):
    compiled, pure = headers_twins
    assert outcome(compiled.inject, raw, stamp) == outcome(pure.inject, raw, stamp)


@THOROUGH
@given(raw=messages(), stamp=st.one_of(valid_headers, any_headers), prefix=st.one_of(st.binary(max_size=40),
                                                                                   st.text(max_size=4)))
@example(raw=b"", stamp=[], prefix=b"Received: x\r\n")  # nothing but the prefix
def test_header_twins_agree_with_a_prefix(headers_twins, raw, stamp, prefix):
    compiled, pure = headers_twins
    assert outcome(compiled.inject, raw, stamp, prefix) == outcome(pure.inject, raw, stamp, prefix)
    if isinstance(prefix, bytes) and outcome(pure.inject, raw, stamp)[0] == "ok":
        assert pure.inject(raw, stamp, prefix) == prefix + pure.inject(raw, stamp)


@THOROUGH
@given(raw=messages(), stamp=valid_headers)
@example(raw=b" orphan", stamp=[(b"X-A", b"1")])
@example(raw=b"X-A: 1", stamp=[])
def test_injection_is_idempotent(headers_twins, raw, stamp):
    for twin in headers_twins:
        once = twin.inject(raw, stamp)
        assert twin.inject(once, stamp) == once


def split_lines(data: bytes) -> list[bytes]:
    """Lines with their LF kept; a last line without LF kept as it is."""
    return re.findall(rb"[^\n]*\n|[^\n]+$", data)


def is_blank(line: bytes) -> bool:
    return line in (b"\n", b"\r\n")


def field_name(line: bytes) -> bytes | None:
    """The lower-cased name of the field this line starts, None if it starts none."""
    if line[:1] in (b" ", b"\t") or b":" not in line:
        return None
    return line.split(b":", 1)[0].rstrip(b" \t").lower()


@THOROUGH
@given(raw=messages(), stamp=valid_headers)
@example(raw=b"Subject: s\r\n X-Zone: fold\r\nX-Zone: z\r\n\r\nX-Zone: body\r\n", stamp=[])
def test_bytes_outside_the_stamped_fields_are_preserved(headers_twins, raw, stamp):
    removed = set(RESERVED_HEADERS) | {name.lower() for name, _ in stamp}
    lines = split_lines(raw)
    blank = next((k for k, line in enumerate(lines) if is_blank(line)), len(lines))
    header_lines, rest = lines[:blank], b"".join(lines[blank:])
    bare_lf = bool(lines) and lines[0].endswith(b"\n") and not lines[0].endswith(b"\r\n")
    first_ending = b"\n" if bare_lf else b"\r\n"
    stamped = b"".join(name + b": " + value + first_ending for name, value in stamp)

    # Which header lines survive: a field line unless its name is removed, and its
    # folds with it; folds at the very top belong to no field and go.
    kept, keeping = [], False
    for line in header_lines:
        if line[:1] not in (b" ", b"\t"):
            keeping = field_name(line) not in removed
        if keeping:
            kept.append(line)

    for twin in headers_twins:
        out = twin.inject(raw, stamp)
        assert out == stamped + b"".join(kept) + rest
        # and so: the new fields lead, the body is byte for byte the same
        assert out.startswith(stamped)
        assert out.endswith(rest)


@FAST
@given(value=st.binary(max_size=12), name=st.binary(max_size=6))
@example(value=b"", name=b"from")  # found by hypothesis: the name of the message's own field
def test_only_valid_names_and_values_pass(headers_twins, value, name):
    name_ok = bool(name) and all(33 <= c <= 126 and c != ord(":") for c in name)
    value_ok = not any(c in value for c in b"\r\n\0")
    for twin in headers_twins:
        result = outcome(twin.inject, b"From: a\r\n\r\n", [(name, value)])
        if name_ok and value_ok:
            # A stamped name replaces the message's own field of that name (any case).
            kept = b"" if name.lower() == b"from" else b"From: a\r\n"
            assert result == ("ok", name + b": " + value + b"\r\n" + kept + b"\r\n")
        else:
            assert result[:2] == ("raised", ValueError)
