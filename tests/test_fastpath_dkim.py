"""DKIM relaxed canonicalisation (RFC 6376 section 3.4), every case against both twins,
and hypothesis showing the twins agree on arbitrary bytes."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests._fastpath_impls import load_both, outcome

import _fastpath

THOROUGH = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- RFC 6376 section 3.4.5, the worked example ---------------------------------------

RFC_HEADER = b"A: X\r\nB : Y\t\r\n\tZ  \r\n"
RFC_BODY = b" C \r\nD \t E\r\n\r\n\r\n"


def test_rfc_example_headers(dkim):
    assert dkim.relaxed_header(b"A", b" X\r\n") == b"a:X"
    assert dkim.relaxed_header(b"B ", b" Y\t\r\n\tZ  \r\n") == b"b:Y Z"


def test_rfc_example_body(dkim):
    assert dkim.relaxed_body(RFC_BODY) == b" C\r\nD E\r\n"


# --- body rules (section 3.4.4) --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b"", b""),  # relaxed: an empty body stays empty (simple would give CRLF)
        (b"\r\n", b""),
        (b"\r\n\r\n\r\n", b""),
        (b" \t \r\n  \r\n", b""),  # lines of WSP only are empty lines
        (b"abc\r\n", b"abc\r\n"),
        (b"abc", b"abc\r\n"),  # a non-empty body ends with CRLF
        (b"abc   ", b"abc\r\n"),  # the last line's trailing WSP goes too
        (b"a  b\t\tc \r\n", b"a b c\r\n"),
        (b"\tindented\r\n", b" indented\r\n"),  # leading WSP is a run: one SP, kept
        (b"a\r\n\r\n\r\nb\r\n\r\n", b"a\r\n\r\n\r\nb\r\n"),  # inner empty lines stay
        (b"\r\n\r\nlate\r\n", b"\r\n\r\nlate\r\n"),
    ],
)
def test_body_rules(dkim, body, canonical):
    assert dkim.relaxed_body(body) == canonical


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b"a\nb\n", b"a\r\nb\r\n"),  # a bare LF ends a line like CRLF
        (b"a \n\n\n", b"a\r\n"),
        (b"a\rb\r\n", b"a\rb\r\n"),  # a CR without LF is an ordinary byte
        (b"abc\r", b"abc\r\r\n"),
        (b"a \r \r\n", b"a \r\r\n"),  # so WSP before it is not trailing
        (b"a\r\r\n", b"a\r\r\n"),
    ],
)
def test_line_endings(dkim, body, canonical):
    assert dkim.relaxed_body(body) == canonical


def test_eight_bit_and_nul_bytes_are_content(dkim):
    assert dkim.relaxed_body(b"caf\xc3\xa9 \x00 \xff  \r\n") == b"caf\xc3\xa9 \x00 \xff\r\n"


# --- header rules (section 3.4.2) -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "canonical"),
    [
        (b"Subject", b" Hello  world \r\n", b"subject:Hello world"),
        (b"SUBJECT", b"x", b"subject:x"),
        (b"Subject \t", b"x", b"subject:x"),  # WSP before the colon (RFC 5322 4.5.3)
        (b"To", b" a@example.com,\r\n\tb@example.com\r\n", b"to:a@example.com, b@example.com"),
        (b"To", b" a,\r\n b", b"to:a, b"),  # no final line ending: the same
        (b"X", b"a\r\n b\n c", b"x:a b c"),  # a bare LF folds too
        (b"X", b"a\r\nb", b"x:ab"),  # unfolding removes only the line ending
        (b"X", b"a\rb", b"x:a\rb"),
        (b"X", b"", b"x:"),
        (b"X", b" \t \r\n ", b"x:"),
        (b"X", b"::a", b"x:::a"),
        (b"Subject", b" caf\xc3\xa9 \xff ", b"subject:caf\xc3\xa9 \xff"),
    ],
)
def test_header_rules(dkim, name, value, canonical):
    assert dkim.relaxed_header(name, value) == canonical


def test_only_ascii_letters_are_folded_to_lower_case(dkim):
    assert dkim.relaxed_header(b"X-\xc3\x89T\xe9", b"v") == b"x-\xc3\x89t\xe9:v"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.relaxed_body("text"), "the body must be bytes, got str"),
        (lambda m: m.relaxed_body(bytearray(b"x")), "the body must be bytes, got bytearray"),
        (lambda m: m.relaxed_header("From", b"x"), "the header name must be bytes, got str"),
        (lambda m: m.relaxed_header(b"From", None), "the header value must be bytes, got NoneType"),
    ],
)
def test_not_bytes_is_a_type_error(dkim, call, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        call(dkim)


def test_package_exports_the_selected_twin():
    suffix = "_c" if _fastpath.IMPLEMENTATION == "c" else "_py"
    assert _fastpath.relaxed_body.__module__ == f"_fastpath._dkim{suffix}"
    assert _fastpath.relaxed_header.__module__ == f"_fastpath._dkim{suffix}"


# --- the twins agree ---------------------------------------------------------------------

# Bytes where the rules have edges: WSP, CR, LF, and a few ordinary and 8-bit bytes.
edgy_bytes = st.lists(
    st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"Z", b":", b"\x00", b"\xff", b"\x0b"]),
    max_size=60,
).map(b"".join)
any_bytes = st.one_of(edgy_bytes, st.binary(max_size=300))


@pytest.fixture(scope="module")
def dkim_twins():
    return load_both("dkim")


@THOROUGH
@given(body=any_bytes)
@example(body=b"\r")
@example(body=b" \r")
@example(body=b"\r\r\n\n")
def test_twins_agree_on_bodies(dkim_twins, body):
    compiled, pure = dkim_twins
    result = compiled.relaxed_body(body)
    assert result == pure.relaxed_body(body)
    # Invariants of section 3.4.4: empty or CRLF-terminated, no WSP runs, no
    # trailing WSP, no trailing empty line, and canonicalising again changes nothing.
    assert result == b"" or (result.endswith(b"\r\n") and not result.endswith(b"\r\n\r\n"))
    assert b"  " not in result and b"\t" not in result and b" \r\n" not in result
    assert compiled.relaxed_body(result) == result


@THOROUGH
@given(name=any_bytes, value=any_bytes)
@example(name=b"", value=b"")
@example(name=b" ", value=b"\r")
def test_twins_agree_on_headers(dkim_twins, name, value):
    compiled, pure = dkim_twins
    result = compiled.relaxed_header(name, value)
    assert result == pure.relaxed_header(name, value)
    canonical_value = result[len(name.rstrip(b" \t")) + 1 :]
    assert not canonical_value.startswith((b" ", b"\t")) and not canonical_value.endswith((b" ", b"\t"))


@given(value=st.one_of(st.text(max_size=5), st.integers(), st.none(), st.binary(max_size=5).map(bytearray)))
def test_twins_agree_on_errors(dkim_twins, value):
    compiled, pure = dkim_twins
    assert outcome(compiled.relaxed_body, value) == outcome(pure.relaxed_body, value)
    assert outcome(compiled.relaxed_header, value, b"v") == outcome(pure.relaxed_header, value, b"v")
    assert outcome(compiled.relaxed_header, b"n", value) == outcome(pure.relaxed_header, b"n", value)
