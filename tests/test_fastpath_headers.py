"""Header injection, bytes in and bytes out, every case against both twins."""

from __future__ import annotations

import pytest

from tests._fastpath_impls import load

STAMP = [
    (b"X-Virtual-MTA", b"news-7-2-pool-31"),
    (b"X-FeedType", b"marketing"),
    (b"X-Zone", b"EU-1"),
    (b"X-ServerId", b"2"),
]
STAMP_CRLF = (
    b"X-Virtual-MTA: news-7-2-pool-31\r\n"
    b"X-FeedType: marketing\r\n"
    b"X-Zone: EU-1\r\n"
    b"X-ServerId: 2\r\n"
)


def crlf(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


def test_reserved_headers_constant():
    compiled, pure = load("headers", "c"), load("headers", "py")
    assert compiled.RESERVED_HEADERS == pure.RESERVED_HEADERS == (
        b"x-virtual-mta",
        b"x-feedtype",
        b"x-zone",
        b"x-serverid",
    )


# --- what is removed and what is kept ---------------------------------------------------


def test_stamps_a_plain_message(headers):
    raw = crlf(b"From: a@example.com\nTo: b@example.net\nSubject: hi\n\nHello.\n")
    assert headers.inject(raw, STAMP) == STAMP_CRLF + raw


def test_client_supplied_reserved_headers_are_dropped_with_their_folds(headers):
    raw = crlf(
        b"x-virtual-mta: spoofed\n"
        b"From: a@example.com\n"
        b"X-ZONE: nowhere\n"
        b"\tfolded onto the zone\n"
        b"  and again\n"
        b"Subject: kept\n"
        b" folded subject, kept\n"
        b"X-FeedType: a\n"
        b"X-ServerId:9\n"
        b"\n"
        b"X-Zone: in the body, kept\n"
    )
    assert headers.inject(raw, STAMP) == STAMP_CRLF + crlf(
        b"From: a@example.com\n"
        b"Subject: kept\n"
        b" folded subject, kept\n"
        b"\n"
        b"X-Zone: in the body, kept\n"
    )


def test_reserved_headers_are_dropped_even_when_not_injected(headers):
    raw = crlf(b"X-Zone: a\nFrom: a@example.com\nX-Serverid: 3\n\nbody\n")
    assert headers.inject(raw, []) == crlf(b"From: a@example.com\n\nbody\n")
    assert headers.inject(raw, [(b"X-Campaign", b"7")]) == crlf(
        b"X-Campaign: 7\nFrom: a@example.com\n\nbody\n"
    )


def test_injected_names_are_dropped_case_insensitively(headers):
    raw = crlf(b"list-unsubscribe: <mailto:old>\n\tfolded\nFrom: a\nLIST-UNSUBSCRIBE: <x>\n\nb")
    out = headers.inject(raw, [(b"List-Unsubscribe", b"<mailto:new>")])
    assert out == crlf(b"List-Unsubscribe: <mailto:new>\nFrom: a\n\nb")


@pytest.mark.parametrize("separator", [b" :", b"\t:", b" \t :"])
def test_whitespace_before_the_colon_still_names_the_field(headers, separator):
    # RFC 5322 section 4.5.3 obsolete syntax: a receiver may still read it as X-Zone.
    raw = b"X-Zone" + separator + b" spoofed\r\nFrom: a\r\n\r\n"
    assert headers.inject(raw, []) == b"From: a\r\n\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b"X-Zone-Extra: kept",
        b"X-Zoned: kept",
        b"X-Zon: kept",
        b"X-Zone without a colon",
        b"X-Zone\r: kept",
        b"Xx-Zone: kept",
        b"X_Zone: kept",
        b"X-Zone\x00: kept",
    ],
)
def test_similar_names_are_kept(headers, line):
    raw = line + b"\r\nFrom: a\r\n\r\nbody"
    assert headers.inject(raw, []) == raw


def test_lines_without_colon_are_kept_with_their_folds(headers):
    raw = crlf(b"From: a\ngarbage line\n folded garbage\nX-Zone: z\n\nbody")
    assert headers.inject(raw, []) == crlf(b"From: a\ngarbage line\n folded garbage\n\nbody")


def test_body_bytes_are_untouched(headers):
    body = bytes(range(256)) * 64 + b"\r\nX-Zone: x\r\n\r\n.\r\n\x00\xff"
    raw = b"Subject: binary\r\nX-Zone: old\r\n\r\n" + body
    assert headers.inject(raw, STAMP) == STAMP_CRLF + b"Subject: binary\r\n\r\n" + body


def test_new_headers_are_written_in_the_given_order_with_duplicates(headers):
    out = headers.inject(b"\r\n", [(b"B", b"1"), (b"A", b"2"), (b"b", b"3")])
    assert out == b"B: 1\r\nA: 2\r\nb: 3\r\n\r\n"


def test_empty_value(headers):
    assert headers.inject(b"\r\n", [(b"X-Empty", b"")]) == b"X-Empty: \r\n\r\n"


# --- line endings and unusual shapes -----------------------------------------------------


def test_bare_lf_message_gets_lf_headers(headers):
    raw = b"From: a\nX-Zone: old\n folded\nSubject: s\n\nbody\n"
    out = headers.inject(raw, STAMP)
    assert out == STAMP_CRLF.replace(b"\r\n", b"\n") + b"From: a\nSubject: s\n\nbody\n"


def test_the_first_line_decides_the_line_ending(headers):
    assert headers.inject(b"From: a\r\nTo: b\n\nbody", [(b"X-A", b"1")]) == (
        b"X-A: 1\r\nFrom: a\r\nTo: b\n\nbody"
    )
    assert headers.inject(b"From: a\nTo: b\r\n\r\nbody", [(b"X-A", b"1")]) == (
        b"X-A: 1\nFrom: a\nTo: b\r\n\r\nbody"
    )


def test_empty_message(headers):
    assert headers.inject(b"", STAMP) == STAMP_CRLF
    assert headers.inject(b"", []) == b""


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_message_without_body(headers, ending):
    raw = b"From: a" + ending + b"X-Zone: z" + ending + b"Subject: s" + ending
    assert headers.inject(raw, [(b"X-Zone", b"EU-1")]) == (
        b"X-Zone: EU-1" + ending + b"From: a" + ending + b"Subject: s" + ending
    )


def test_last_line_without_line_ending(headers):
    assert headers.inject(b"Subject: s", [(b"X-A", b"1")]) == b"X-A: 1\r\nSubject: s"
    assert headers.inject(b"From: a\nX-Zone: z", [(b"X-A", b"1")]) == b"X-A: 1\nFrom: a\n"
    assert headers.inject(b"X-Zone: z", []) == b""


@pytest.mark.parametrize("raw", [b"\r\nbody", b"\nbody", b"\r\n", b"\n"])
def test_message_without_headers(headers, raw):
    eol = raw[: raw.index(b"\n") + 1]
    assert headers.inject(raw, [(b"X-A", b"1")]) == b"X-A: 1" + eol + raw


def test_first_line_is_a_continuation(headers):
    # Malformed: the fold continues no field. Written below new fields it would
    # become part of them, so it is dropped with the other folds at the top.
    raw = b" orphan fold\r\n\tand another\r\nFrom: a\r\n\r\nbody"
    assert headers.inject(raw, [(b"X-A", b"1")]) == b"X-A: 1\r\nFrom: a\r\n\r\nbody"
    assert headers.inject(b" ", []) == b""


def test_cr_without_lf_is_not_a_line_ending(headers):
    raw = b"From: a\rX-Zone: z\r\n\r\n"
    assert headers.inject(raw, [(b"X-B", b"2")]) == b"X-B: 2\r\n" + raw
    assert headers.inject(b"From: a\r\n\r", []) == b"From: a\r\n\r"


def test_eight_bit_and_smtputf8_header_bytes(headers):
    raw = (
        "Subject: Grüße aus Köln\r\nFrom: José <jose@exämple.com>\r\n"
        "X-Zone: ☃\r\n\r\nbody é\r\n"
    ).encode()
    out = headers.inject(raw, [(b"X-Note", "naïve ✓".encode()), (b"X-Raw", b"\xff\xfe\x80")])
    assert out == (
        "X-Note: naïve ✓\r\n".encode()
        + b"X-Raw: \xff\xfe\x80\r\n"
        + "Subject: Grüße aus Köln\r\nFrom: José <jose@exämple.com>\r\n".encode()
        + "\r\nbody é\r\n".encode()
    )


def test_many_megabyte_message(headers):
    body = (b"0123456789abcdef" * 4 + b"\r\n") * 200_000  # ~13 MB
    raw = b"From: a\r\nX-Zone: old\r\n\r\n" + body
    out = headers.inject(raw, STAMP)
    assert len(out) == len(STAMP_CRLF) + len(b"From: a\r\n\r\n") + len(body)
    assert out[: len(STAMP_CRLF)] == STAMP_CRLF
    assert out.endswith(b"From: a\r\n\r\n" + body)


def test_many_headers_to_inject(headers):
    stamp = [(b"X-H%d" % k, b"%d" % k) for k in range(100)]
    raw = b"".join(b"x-h%d: old\r\n" % k for k in range(0, 100, 3)) + b"From: a\r\n\r\nb"
    assert headers.inject(raw, stamp) == (
        b"".join(b"X-H%d: %d\r\n" % (k, k) for k in range(100)) + b"From: a\r\n\r\nb"
    )


def test_idempotent(headers):
    raw = crlf(b" orphan\nX-Zone: a\n b\nFrom: a\nX-Custom: 1\n\nbody X-Zone: b\n")
    stamp = STAMP + [(b"X-Custom", b"2")]
    once = headers.inject(raw, stamp)
    assert headers.inject(once, stamp) == once


def test_headers_may_be_any_iterable(headers):
    raw = b"From: a\r\n\r\n"
    expected = headers.inject(raw, list(STAMP))
    assert headers.inject(raw, tuple(STAMP)) == expected
    assert headers.inject(raw, iter(STAMP)) == expected


def test_returns_a_new_bytes_object(headers):
    raw = b"From: a\r\n\r\nbody"
    out = headers.inject(raw, [])
    assert out == raw
    assert type(out) is bytes


# --- rejected input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"X Zone",
        b"X-Zone:",
        b":",
        b"X-Zone\r\n",
        b"X\tZ",
        b"X-\x7f",
        b"\xc3\xa9t\xc3\xa9",
        b"\x00",
    ],
)
def test_invalid_field_name(headers, name):
    with pytest.raises(ValueError) as caught:
        headers.inject(b"From: a\r\n\r\n", [(b"X-Ok", b"1"), (name, b"value")])
    assert str(caught.value) == (
        f"invalid header name {name!r}: a field name is one or more printable US-ASCII "
        "characters (33-126) other than ':' (RFC 5322 section 3.6.8)"
    )


def test_every_printable_ascii_name_character_is_valid(headers):
    name = bytes(c for c in range(33, 127) if c != ord(":"))
    assert headers.inject(b"", [(name, b"v")]) == name + b": v\r\n"


@pytest.mark.parametrize("value", [b"a\r\nX-Zone: evil", b"a\nb", b"a\rb", b"\r", b"nul\x00"])
def test_value_with_cr_lf_or_nul(headers, value):
    with pytest.raises(ValueError) as caught:
        headers.inject(b"From: a\r\n\r\n", [(b"X-Note", value)])
    assert str(caught.value) == (
        "invalid value for header b'X-Note': CR, LF and NUL are not allowed "
        "(the fast path writes each header as one unfolded line)"
    )


@pytest.mark.parametrize(
    "raw, stamp, error, message",
    [
        ("text", [], TypeError, "the raw message must be bytes, got str"),
        (bytearray(b"x"), [], TypeError, "the raw message must be bytes, got bytearray"),
        (b"", [(b"X-A", b"1", b"2")], TypeError,
         "each header must be a (name, value) tuple of bytes, got (b'X-A', b'1', b'2')"),
        (b"", [[b"X-A", b"1"]], TypeError,
         "each header must be a (name, value) tuple of bytes, got [b'X-A', b'1']"),
        (b"", [("X-A", b"1")], TypeError, "header name must be bytes, got str"),
        (b"", [(b"X-A", "1")], TypeError, "value of header b'X-A' must be bytes, got str"),
        (b"", [(b"X-A", memoryview(b"1"))], TypeError,
         "value of header b'X-A' must be bytes, got memoryview"),
        (b"", 5, TypeError, "'int' object is not iterable"),
    ],
)
def test_wrong_types(headers, raw, stamp, error, message):
    with pytest.raises(error) as caught:
        headers.inject(raw, stamp)
    assert str(caught.value) == message


# --- the prefix: the caller's own lines on top, in the same copy ------------------------

RECEIVED = b"Received: from app (unknown [10.0.0.9])\r\n\tby mta1 (poolmta) with ESMTP id 1; Thu, 1 Jan 2026\r\n"


def test_prefix_goes_above_the_injected_headers(headers):
    raw = crlf(b"x-zone: spoofed\nFrom: a@example.com\n\nHello.\n")
    assert headers.inject(raw, STAMP, RECEIVED) == RECEIVED + STAMP_CRLF + crlf(b"From: a@example.com\n\nHello.\n")


@pytest.mark.parametrize("raw", [b"", b"\r\n", b"From: a\n\nbody", b"no header block at all"])
def test_prefix_is_what_prepending_it_gives(headers, raw):
    assert headers.inject(raw, STAMP, RECEIVED) == RECEIVED + headers.inject(raw, STAMP)
    assert headers.inject(raw, [], RECEIVED) == RECEIVED + headers.inject(raw, [])


def test_prefix_is_written_as_is_and_never_scanned(headers):
    # The caller's lines are its own: a reserved name in them is not removed.
    prefix = b"X-Zone: from the caller\r\n"
    assert headers.inject(b"From: a\r\n\r\n", [], prefix) == prefix + b"From: a\r\n\r\n"


@pytest.mark.parametrize("prefix, message", [
    ("Received: x\r\n", "the prefix must be bytes, got str"),
    (bytearray(b"x"), "the prefix must be bytes, got bytearray"),
    (None, "the prefix must be bytes, got NoneType"),
])
def test_prefix_must_be_bytes(headers, prefix, message):
    with pytest.raises(TypeError) as caught:
        headers.inject(b"From: a\r\n\r\n", STAMP, prefix)
    assert str(caught.value) == message


def test_first_bad_header_is_reported(headers):
    with pytest.raises(ValueError, match="invalid header name b'B:'"):
        headers.inject(b"", [(b"A", b"ok"), (b"B:", b"\n"), (b"C:", b"x")])


def test_names_with_many_first_letters_on_a_long_header_block(headers):
    letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#"
    stamp = [(bytes([letter]) + b"-Stamp", b"new") for letter in letters]
    kept = b"".join(b"K%d-Kept: %s\r\n\t%s\r\n" % (k, b"v" * k, b"w" * k) for k in range(60))
    removed = b"".join(name.lower() + b" : old\r\n folded\r\n" for name, _ in stamp)
    raw = removed[: len(removed) // 2] + kept + removed[len(removed) // 2 :] + b"\r\nbody"
    out = headers.inject(raw, stamp)
    assert out == b"".join(name + b": new\r\n" for name, _ in stamp) + kept + b"\r\nbody"


@pytest.mark.parametrize("length", [1, 7, 8, 9, 16, 17])
def test_every_byte_in_every_position_of_names_and_values(headers, length):
    # The compiled twin checks 8 bytes at a time: each byte value at each position.
    for position in range(length):
        for byte in range(256):
            name = b"A" * position + bytes([byte]) + b"A" * (length - position - 1)
            value = b"v" * position + bytes([byte]) + b"v" * (length - position - 1)
            name_ok = 33 <= byte <= 126 and byte != ord(":")
            value_ok = byte not in (0, 10, 13)
            for stamp, ok in (([(name, b"v")], name_ok), ([(b"N", value)], value_ok)):
                if ok:
                    headers.inject(b"", stamp)
                else:
                    with pytest.raises(ValueError):
                        headers.inject(b"", stamp)


def test_names_and_values_of_every_short_length_are_copied_exactly(headers):
    # The compiled twin copies short names and values in overlapping words.
    for length in range(0, 41):
        name = bytes(33 + (k * 7) % 25 for k in range(max(length, 1)))
        value = bytes(200 - k for k in range(length))
        assert headers.inject(b"\n", [(name, value)]) == name + b": " + value + b"\n\n"
