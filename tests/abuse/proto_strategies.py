"""Hypothesis strategies for any protobuf request, built from its message descriptor,
so an RPC added to the proto is fuzzed without a change here.

Values are hostile but bounded: strings empty, Unicode, with NUL and CR/LF, up to
64 KB, or one of the `Known` values of objects that exist (so requests reach past
"not found"); integers negative, huge, at the type's limits, or known ids; enums
defined or not; repeated fields of random length; nested messages two deep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import descriptor as d
from google.protobuf import message_factory
from hypothesis import strategies as st

MAX_DEPTH = 2

_INT_LIMITS = {
    d.FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}

# Values that pass validation, so requests reach the code behind it.
plausible_text = st.one_of(
    st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z"),
    st.integers(1, 254).map(lambda n: f"192.0.2.{n}"),
    st.integers(1, 0xFFFF).map(lambda n: f"2001:db8::{n:x}"),
    st.integers(0, 255).map(lambda n: f"203.0.{n}.0/24"),
    st.sampled_from(["X-Campaign", "newsletter", "transactional", "US-1", "EU-1", "bounces.example.com",
                     "mta2.example.net", "2001:db8:1::/48", "List-Unsubscribe"]),
)
hostile_text = st.one_of(
    plausible_text,
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.sampled_from(["", " ", "\x00", "a\x00b", "a\r\nBcc: x@y", "../../etc/passwd", "'; DROP TABLE pools;--",
                     "%s%n", "\u202e", "\ud7ff\ue000", "10.0.0.0/8", "0.0.0.0/0", "::/0", "::ffff:127.0.0.5",
                     "fe80::1%eth0", "256.1.1.1", "-1", "From", "x-virtual-mta", "\t", "DKIM-Signature"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "\u00e9", "\x00", "\U0001f600"]),
              st.sampled_from([65, 256, 1025, 8192, 65_536])),
)


@dataclass
class Known:
    """Values of objects that exist, mixed into the strategies."""

    ints: list[int] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)


def _scalar(fd: d.FieldDescriptor, known: Known) -> st.SearchStrategy:
    cpp = fd.cpp_type
    if cpp == d.FieldDescriptor.CPPTYPE_STRING:
        if fd.type == d.FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        return st.one_of(hostile_text, st.sampled_from(known.strings)) if known.strings else hostile_text
    if cpp in _INT_LIMITS:
        low, high = _INT_LIMITS[cpp]
        return st.one_of(
            st.integers(low, high),
            st.sampled_from(sorted({low, high, 0, 1, 2, 3, max(low, -1)} | {i for i in known.ints if low <= i <= high})),
        )
    if cpp == d.FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp in (d.FieldDescriptor.CPPTYPE_DOUBLE, d.FieldDescriptor.CPPTYPE_FLOAT):
        return st.floats(width=32 if cpp == d.FieldDescriptor.CPPTYPE_FLOAT else 64)
    if cpp == d.FieldDescriptor.CPPTYPE_ENUM:
        defined = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(defined), st.integers(-(2**31), 2**31 - 1))  # proto3 enums are open
    raise AssertionError(f"field type {fd.type} of {fd.full_name} has no strategy")


def _value(fd: d.FieldDescriptor, known: Known, depth: int) -> st.SearchStrategy:
    if fd.cpp_type == d.FieldDescriptor.CPPTYPE_MESSAGE:
        return message_strategy(fd.message_type, known, depth + 1)
    return _scalar(fd, known)


def message_strategy(descriptor: d.Descriptor, known: Known, depth: int = 0) -> st.SearchStrategy:
    """Messages of `descriptor`'s type with any subset of their fields set."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(cls())
    fields = {}
    for fd in descriptor.fields:
        value = _value(fd, known, depth)
        if fd.is_repeated:
            value = st.lists(value, max_size=6)
        fields[fd.name] = value

    @st.composite
    def build(draw):
        message = cls()
        for name, strategy in fields.items():
            if not draw(st.booleans()):
                continue
            value = draw(strategy)
            fd = descriptor.fields_by_name[name]
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                target = getattr(message, name)
                for entry in value:
                    if fd.message_type.fields_by_name["value"].message_type is None:
                        target[entry.key] = entry.value
                    else:
                        target[entry.key].CopyFrom(entry.value)
            elif fd.is_repeated:
                getattr(message, name).extend(value)
            elif fd.cpp_type == d.FieldDescriptor.CPPTYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return build()
