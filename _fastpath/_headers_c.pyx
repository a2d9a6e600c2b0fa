# cython: language_level=3
"""Header injection, compiled: the same behaviour as `_headers_py.py`.

The rules (and the RFC 5322 sections they come from) are written out in
`_headers_py.py`; each is cited again where this file implements it. The work
is on C pointers, in two steps. First the header block is scanned for the
stretches to leave out (removed fields with their folds): only the lines that
may matter - the first, those in a removed field, and those whose first byte
could start one or the empty line - are looked at one by one; the runs of
lines in between are skipped 64 bytes per step (SSE2 where there is SSE2,
memchr elsewhere). Then the output is allocated at its exact size and filled
in one pass: the caller's prefix, the new fields, the kept stretches, and the
rest of the message (the empty line and the body) in one final memcpy.
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset

from . import _errors, _stamped

__all__ = ["RESERVED_HEADERS", "inject"]

# The attribution headers only the platform may set (see `_stamped`); always
# removed from the client's message, whether or not they are injected again.
# The C table `_RESERVED` below is built from it at import.
RESERVED_HEADERS = _stamped.STAMPED_HEADERS


cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    #define POOLMTA_SSE2 1
    #include <emmintrin.h>
    #endif

    /* The first LF in [p, end), NULL when there is none. Header lines are
       short, so a libc memchr call per line costs more in call and setup than
       in scanning: with SSE2 (every x86-64) look at 16 bytes per step inline. */
    static inline const unsigned char* poolmta_find_lf(const unsigned char* p,
                                                       const unsigned char* end) {
    #ifdef POOLMTA_SSE2
        const __m128i lf = _mm_set1_epi8('\\n');
        while (end - p >= 16) {
            int mask = _mm_movemask_epi8(
                _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)p), lf));
            if (mask) return p + __builtin_ctz((unsigned)mask);
            p += 16;
        }
    #endif
        return (const unsigned char*)memchr(p, '\\n', (size_t)(end - p));
    }

    /* The start of the first line after an LF at or after src[i] whose first
       byte is marked in `may_matter` (the empty line, or a field that may be
       removed); -1 when there is none. The lines skipped are kept as they are.
       With SSE2 the LFs of 64 bytes come out of four compares as one bit mask,
       and only their next bytes are looked at. */
    static inline Py_ssize_t poolmta_next_line_that_may_matter(
            const unsigned char* src, Py_ssize_t i, Py_ssize_t size,
            const unsigned char* may_matter) {
        const unsigned char* lf;
    #ifdef POOLMTA_SSE2
        const __m128i lf16 = _mm_set1_epi8('\\n');
        while (i + 64 < size) {  /* the byte after the block exists too */
            const __m128i* block = (const __m128i*)(src + i);
            unsigned long long mask =
                (unsigned long long)(unsigned)_mm_movemask_epi8(
                    _mm_cmpeq_epi8(_mm_loadu_si128(block), lf16))
                | (unsigned long long)(unsigned)_mm_movemask_epi8(
                    _mm_cmpeq_epi8(_mm_loadu_si128(block + 1), lf16)) << 16
                | (unsigned long long)(unsigned)_mm_movemask_epi8(
                    _mm_cmpeq_epi8(_mm_loadu_si128(block + 2), lf16)) << 32
                | (unsigned long long)(unsigned)_mm_movemask_epi8(
                    _mm_cmpeq_epi8(_mm_loadu_si128(block + 3), lf16)) << 48;
            while (mask) {
                Py_ssize_t line = i + __builtin_ctzll(mask) + 1;
                if (may_matter[src[line]]) return line;
                mask &= mask - 1;
            }
            i += 64;
        }
    #endif
        while (i + 1 < size) {  /* an LF in the last byte starts no line */
            lf = (const unsigned char*)memchr(src + i, '\\n', (size_t)(size - 1 - i));
            if (lf == NULL) return -1;
            i = lf - src + 1;
            if (may_matter[src[i]]) return i;
        }
        return -1;
    }
    """
    const unsigned char* _find_lf "poolmta_find_lf"(
        const unsigned char* p, const unsigned char* end
    ) noexcept nogil
    Py_ssize_t _next_line_that_may_matter "poolmta_next_line_that_may_matter"(
        const unsigned char* src, Py_ssize_t i, Py_ssize_t size, const unsigned char* may_matter
    ) noexcept nogil


cdef struct FieldName:
    const unsigned char* data
    Py_ssize_t size
    # Its first (up to) 8 bytes OR 0x20, as one word, and the mask of those
    # bytes: a line whose first 8 bytes, folded the same way and masked, differ
    # cannot start this field, which rules out most lines in a few instructions.
    uint64_t head
    uint64_t head_mask
    # For names of 8 bytes or more, their last 8 bytes folded the same way.
    uint64_t tail


# A stretch of the message that is left out: removed fields with their folds.
cdef struct Span:
    Py_ssize_t start
    Py_ssize_t end


# One header to write, read from its (name, value) tuple.
cdef struct Stamp:
    FieldName name
    const unsigned char* value
    Py_ssize_t value_size


# The fields to drop: the reserved names, then the injected names not among them.
cdef struct Removal:
    const FieldName* names
    Py_ssize_t count
    # 1 for the first bytes of the lines that may matter: LF and CR (the empty
    # line) and the first byte of each name, in both cases.
    unsigned char may_matter[256]


cdef enum:
    # Room in the C table of reserved names; the import check refuses more.
    RESERVED_ROOM = 8
    # Headers to inject, and left-out stretches, that fit on the stack; more
    # go to the heap.
    STACK_STAMPS = 28
    STACK_SPANS = 16
    # What _read_stamp found wrong with a header.
    STAMP_OK = 0
    NOT_A_PAIR = 1
    NAME_NOT_BYTES = 2
    INVALID_NAME = 3
    VALUE_NOT_BYTES = 4
    INVALID_VALUE = 5

# RESERVED_HEADERS as C data, filled at import (below, once _set_head exists).
cdef FieldName _RESERVED[RESERVED_ROOM]
cdef Py_ssize_t _reserved_count = 0

# Byte classes, built once at import.
# ASCII case folding: field names compare case-insensitively (§1.2.2).
cdef unsigned char _LOWER[256]
cdef unsigned char _UPPER[256]
cdef unsigned char _FTEXT[256]          # §3.6.8 ftext: printable US-ASCII 33..126 except ':'
cdef unsigned char _VALUE_FORBIDDEN[256]  # CR, LF, NUL: a value is one unfolded line
cdef int _byte
for _byte in range(256):
    _LOWER[_byte] = _byte + 32 if 65 <= _byte <= 90 else _byte
    _UPPER[_byte] = _byte - 32 if 97 <= _byte <= 122 else _byte
    _FTEXT[_byte] = 33 <= _byte <= 126 and _byte != 58
    _VALUE_FORBIDDEN[_byte] = _byte == 13 or _byte == 10 or _byte == 0

cdef uint64_t _FOLD = 0x2020202020202020  # OR-ing 0x20 lower-cases ASCII letters


cdef inline uint64_t _load8(const unsigned char* data) noexcept nogil:
    cdef uint64_t word
    memcpy(&word, data, 8)  # one unaligned load; same byte order as the heads
    return word


cdef inline void _store8(unsigned char* data, uint64_t word) noexcept nogil:
    memcpy(data, &word, 8)


cdef inline void _copy_short(
    unsigned char* dst, const unsigned char* src, Py_ssize_t n
) noexcept nogil:
    """memcpy for the few bytes of a header name or value, without a libc call.

    Overlapping word copies cover any n up to 32 and never read outside src.
    """
    cdef uint64_t a, b, c, d
    if n > 32:
        memcpy(dst, src, <size_t>n)
    elif n > 16:
        a = _load8(src)
        b = _load8(src + 8)
        c = _load8(src + n - 16)
        d = _load8(src + n - 8)
        _store8(dst, a)
        _store8(dst + 8, b)
        _store8(dst + n - 16, c)
        _store8(dst + n - 8, d)
    elif n >= 8:
        a = _load8(src)
        b = _load8(src + n - 8)
        _store8(dst, a)
        _store8(dst + n - 8, b)
    else:
        while n > 0:
            n -= 1
            dst[n] = src[n]


cdef inline void _set_head(FieldName* name) noexcept nogil:
    cdef unsigned char head[8]
    cdef unsigned char mask[8]
    cdef Py_ssize_t k
    if name.size >= 8:
        name.head = _load8(name.data) | _FOLD
        name.head_mask = ~(<uint64_t>0)
        name.tail = _load8(name.data + name.size - 8) | _FOLD
        return
    name.tail = 0
    for k in range(8):
        head[k] = (name.data[k] | 0x20) if k < name.size else 0
        mask[k] = 0xFF if k < name.size else 0
    name.head = _load8(head)
    name.head_mask = _load8(mask)


# The names point into the bytes objects RESERVED_HEADERS keeps alive. Only
# names `_is_reserved_name` compares exactly are accepted: up to 16 bytes of
# lower-case letters, digits and '-' (two folded words; see there).
for _name in RESERVED_HEADERS:
    if (
        _reserved_count == RESERVED_ROOM
        or type(_name) is not bytes
        or not 0 < len(_name) <= 16
        or _name.translate(None, b"abcdefghijklmnopqrstuvwxyz0123456789-")
    ):
        raise ImportError(f"_headers_c cannot hold the reserved header name {_name!r}")
    _RESERVED[_reserved_count].data = <const unsigned char*>PyBytes_AS_STRING(_name)
    _RESERVED[_reserved_count].size = PyBytes_GET_SIZE(_name)
    _set_head(&_RESERVED[_reserved_count])
    _reserved_count += 1
del _name


cdef inline bint _same_letters(
    const unsigned char* a, const unsigned char* b, Py_ssize_t size
) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(size):
        if _LOWER[a[k]] != _LOWER[b[k]]:  # field names are case-insensitive (§1.2.2)
            return False
    return True


cdef inline bint _is_reserved_name(const FieldName* name, const FieldName* reserved) noexcept nogil:
    """Whether a valid field name is `reserved`, case-insensitively.

    Compares whole folded words: for ftext bytes against a reserved name (ASCII
    letters, digits and '-'), OR 0x20 equality is exactly case-insensitive
    equality, and the head and tail words cover up to 16 bytes (the import-time
    check keeps the reserved names within that).
    """
    return (
        name.size == reserved.size
        and name.head == reserved.head
        and name.tail == reserved.tail
    )


cdef inline bint _names_field(
    const unsigned char* line, Py_ssize_t size, const FieldName* name
) noexcept nogil:
    """True when `line` (`size` bytes to the end of the message) starts the field `name`.

    name, *WSP, ':'. The name is ftext and WSP stops at the line end, so no
    check here looks past the line's LF whatever `size` is.
    """
    cdef Py_ssize_t n = name.size
    if n >= size or not _same_letters(line, name.data, n):  # room for the colon, too
        return False
    # obs-optional: WSP between the name and the colon (§4.5.3) is still that field.
    while n < size and (line[n] == 32 or line[n] == 9):
        n += 1
    return n < size and line[n] == 58


cdef inline bint _is_removed(
    const unsigned char* line, Py_ssize_t size, const Removal* removal
) noexcept nogil:
    """True when `line` (`size` bytes to the end of the message) starts a field
    named like one of `removal.names`."""
    cdef Py_ssize_t k
    cdef uint64_t word
    if size >= 8:
        word = _load8(line) | _FOLD
        for k in range(removal.count):
            if (word & removal.names[k].head_mask) == removal.names[k].head and _names_field(
                line, size, &removal.names[k]
            ):
                return True
        return False
    for k in range(removal.count):
        if _names_field(line, size, &removal.names[k]):
            return True
    return False


cdef inline void _add_first(Removal* removal, unsigned char first) noexcept nogil:
    removal.may_matter[first] = 1
    removal.may_matter[_LOWER[first]] = 1
    removal.may_matter[_UPPER[first]] = 1


# Byte-parallel tests on 8 bytes in a word (exact "is there such a byte" answers):
# bytes below `n` (n <= 128), above `n` (n <= 127), equal to `b`.
cdef uint64_t _ONES = 0x0101010101010101
cdef uint64_t _HIGHS = 0x8080808080808080


cdef inline uint64_t _any_below(uint64_t word, uint64_t n) noexcept nogil:
    return (word - _ONES * n) & ~word & _HIGHS


cdef inline uint64_t _any_above(uint64_t word, uint64_t n) noexcept nogil:
    return ((word + _ONES * (127 - n)) | word) & _HIGHS


cdef inline uint64_t _any_equal(uint64_t word, uint64_t b) noexcept nogil:
    return _any_below(word ^ (_ONES * b), 1)


# What a stamped header's name or value may hold; _all_in_class checks either.
cdef enum ByteClass:
    FIELD_NAME_BYTES   # §3.6.8 field-name = 1*ftext; ftext = %d33-57 / %d59-126
    FIELD_VALUE_BYTES  # anything but CR, LF (a value is one line, never folded, §2.2.3)
                       # and NUL; 8-bit bytes are fine (RFC 6532)


cdef inline uint64_t _word_outside(uint64_t word, ByteClass cls) noexcept nogil:
    # Nonzero when one of the word's 8 bytes is outside `cls` (exact, like the tables).
    if cls == FIELD_NAME_BYTES:
        return _any_below(word, 33) | _any_above(word, 126) | _any_equal(word, 58)
    return _any_below(word, 1) | _any_equal(word, 10) | _any_equal(word, 13)


cdef inline bint _byte_outside(unsigned char byte, ByteClass cls) noexcept nogil:
    if cls == FIELD_NAME_BYTES:
        return not _FTEXT[byte]
    return _VALUE_FORBIDDEN[byte]


cdef inline bint _all_in_class(const unsigned char* data, Py_ssize_t size, ByteClass cls) noexcept nogil:
    # Inlined with a constant `cls`: the compiler folds the class tests away, leaving
    # the two loops this replaces, one per class.
    cdef Py_ssize_t k = 0
    while k + 8 <= size:
        if _word_outside(_load8(data + k), cls):
            return False
        k += 8
    while k < size:
        if _byte_outside(data[k], cls):
            return False
        k += 1
    return True


cdef inline bint _valid_name(const unsigned char* data, Py_ssize_t size) noexcept nogil:
    return size != 0 and _all_in_class(data, size, FIELD_NAME_BYTES)


cdef inline bint _valid_value(const unsigned char* data, Py_ssize_t size) noexcept nogil:
    return _all_in_class(data, size, FIELD_VALUE_BYTES)


cdef extern from "Python.h":
    # Borrowed-pointer forms: reading the header tuples takes no references.
    bint _is_tuple "PyTuple_Check"(PyObject* o) noexcept
    Py_ssize_t _tuple_size "PyTuple_GET_SIZE"(PyObject* o) noexcept
    PyObject* _tuple_item "PyTuple_GET_ITEM"(PyObject* o, Py_ssize_t i) noexcept
    PyObject* _list_item "PyList_GET_ITEM"(object o, Py_ssize_t i) noexcept
    bint _is_bytes "PyBytes_Check"(PyObject* o) noexcept
    char* _bytes_data "PyBytes_AS_STRING"(PyObject* o) noexcept
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE"(PyObject* o) noexcept


cdef inline int _read_stamp(PyObject* item, Stamp* stamp) noexcept:
    """Fill `stamp` from a (name, value) tuple; STAMP_OK or what is wrong with it.

    The same checks in the same order as the pure twin, so the same error
    comes out."""
    cdef PyObject* name
    cdef PyObject* value
    if not _is_tuple(item) or _tuple_size(item) != 2:
        return NOT_A_PAIR
    name = _tuple_item(item, 0)
    value = _tuple_item(item, 1)
    if not _is_bytes(name):
        return NAME_NOT_BYTES
    stamp.name.data = <const unsigned char*>_bytes_data(name)
    stamp.name.size = _bytes_size(name)
    if not _valid_name(stamp.name.data, stamp.name.size):
        return INVALID_NAME
    if not _is_bytes(value):
        return VALUE_NOT_BYTES
    stamp.value = <const unsigned char*>_bytes_data(value)
    stamp.value_size = _bytes_size(value)
    if not _valid_value(stamp.value, stamp.value_size):
        return INVALID_VALUE
    _set_head(&stamp.name)
    return STAMP_OK


cdef object _stamp_error(int problem, object item):
    if problem == NOT_A_PAIR:
        return _errors.bad_header_item(item)
    name, value = item
    if problem == NAME_NOT_BYTES:
        return _errors.name_not_bytes(name)
    if problem == INVALID_NAME:
        return _errors.invalid_header_name(name)
    if problem == VALUE_NOT_BYTES:
        return _errors.value_not_bytes(name, value)
    return _errors.invalid_header_value(name)


def inject(raw, headers, prefix=b""):
    """Return `raw` with `headers` written at the top of its header block, and
    `prefix` as is above them.

    Every existing field named like a reserved header or like one of `headers`
    (case-insensitive) is removed first, folded lines included. Raises TypeError
    when `raw`, `prefix` or a header is not bytes and ValueError on an invalid
    field name or a value holding CR, LF or NUL.
    """
    if not PyBytes_Check(raw):
        raise _errors.raw_not_bytes(raw)
    if not PyBytes_Check(prefix):
        raise _errors.prefix_not_bytes(prefix)
    cdef list items = headers if type(headers) is list else list(headers)
    cdef Py_ssize_t count = len(items)
    cdef Stamp stack_stamps[STACK_STAMPS]
    cdef FieldName stack_names[STACK_STAMPS + RESERVED_ROOM]
    cdef Stamp* stamps
    cdef FieldName* names
    if count <= STACK_STAMPS:
        return _inject(raw, items, stack_stamps, stack_names, prefix)
    stamps = <Stamp*>PyMem_Malloc(count * sizeof(Stamp))
    names = <FieldName*>PyMem_Malloc((count + _reserved_count) * sizeof(FieldName))
    try:
        if stamps == NULL or names == NULL:
            raise MemoryError()
        return _inject(raw, items, stamps, names, prefix)
    finally:
        PyMem_Free(stamps)
        PyMem_Free(names)


cdef object _inject(bytes raw, list items, Stamp* stamps, FieldName* names, bytes prefix):
    cdef Py_ssize_t count = len(items)
    cdef Py_ssize_t k, j
    cdef Py_ssize_t fields_size = 0
    cdef int problem
    cdef Removal removal

    removal.names = names
    removal.count = _reserved_count
    memset(removal.may_matter, 0, sizeof(removal.may_matter))
    removal.may_matter[10] = 1  # LF, CR: the empty line
    removal.may_matter[13] = 1
    for k in range(_reserved_count):
        names[k] = _RESERVED[k]
        _add_first(&removal, _RESERVED[k].data[0])

    # Validate every header before writing anything.
    for k in range(count):
        problem = _read_stamp(_list_item(items, k), &stamps[k])
        if problem != STAMP_OK:
            raise _stamp_error(problem, items[k])
        fields_size += stamps[k].name.size + 2 + stamps[k].value_size
        # Removed like the reserved ones; a reserved name stamped again is
        # already on the list.
        for j in range(_reserved_count):
            if _is_reserved_name(&stamps[k].name, &_RESERVED[j]):
                break
        else:
            names[removal.count] = stamps[k].name
            removal.count += 1
            _add_first(&removal, stamps[k].name.data[0])

    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(raw)

    # The message's own line ending: that of its first line, CRLF when it has none.
    cdef const unsigned char* lf = _find_lf(src, src + size)
    cdef bint crlf = lf == NULL or (lf > src and (lf - 1)[0] == 13)
    fields_size += count * (2 if crlf else 1)

    # Find what to leave out first, so the output is allocated at its size.
    cdef Span stack_spans[STACK_SPANS]
    cdef Span* spans
    cdef Py_ssize_t n_spans = _find_removed(src, size, &removal, stack_spans, STACK_SPANS)
    if n_spans <= STACK_SPANS:
        return _render(src, size, stamps, count, crlf, fields_size, stack_spans, n_spans, prefix)
    # Only a message built to have many removed fields gets here.
    spans = <Span*>PyMem_Malloc(n_spans * sizeof(Span))
    if spans == NULL:
        raise MemoryError()
    try:
        _find_removed(src, size, &removal, spans, n_spans)
        return _render(src, size, stamps, count, crlf, fields_size, spans, n_spans, prefix)
    finally:
        PyMem_Free(spans)


cdef bytes _render(
    const unsigned char* src,
    Py_ssize_t size,
    const Stamp* stamps,
    Py_ssize_t count,
    bint crlf,
    Py_ssize_t fields_size,
    const Span* spans,
    Py_ssize_t n_spans,
    bytes prefix,
):
    """The output, sized once and filled in one pass."""
    cdef Py_ssize_t k
    cdef Py_ssize_t prefix_size = PyBytes_GET_SIZE(prefix)
    cdef Py_ssize_t out_size = prefix_size + fields_size + size
    for k in range(n_spans):
        out_size -= spans[k].end - spans[k].start
    if out_size == 0:
        return b""
    cdef bytes result = PyBytes_FromStringAndSize(NULL, out_size)
    cdef unsigned char* write = <unsigned char*>PyBytes_AS_STRING(result)

    # The caller's own lines (the Received header) on top, as they are.
    if prefix_size:
        memcpy(write, PyBytes_AS_STRING(prefix), <size_t>prefix_size)
        write += prefix_size

    # The new fields, at the top of the header block: `name: value` + line ending.
    for k in range(count):
        _copy_short(write, stamps[k].name.data, stamps[k].name.size)
        write += stamps[k].name.size
        write[0] = 58
        write[1] = 32
        write += 2
        _copy_short(write, stamps[k].value, stamps[k].value_size)
        write += stamps[k].value_size
        if crlf:
            write[0] = 13
            write[1] = 10
            write += 2
        else:
            write[0] = 10
            write += 1

    # Then the message without the left-out stretches, the body in the last copy.
    cdef Py_ssize_t kept = 0
    for k in range(n_spans):
        memcpy(write, src + kept, <size_t>(spans[k].start - kept))
        write += spans[k].start - kept
        kept = spans[k].end
    memcpy(write, src + kept, <size_t>(size - kept))
    return result


cdef Py_ssize_t _find_removed(
    const unsigned char* src, Py_ssize_t size, const Removal* removal, Span* spans, Py_ssize_t room
) noexcept nogil:
    """Find the stretches of `src` to leave out; how many there are.

    The first `room` of them are written to `spans`, in order. Lines are looked
    at one by one only at the top, in a removed field and where one may start;
    runs of kept lines in between are skipped over 64 bytes at a time.
    """
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t end
    cdef Py_ssize_t count = 0
    # The current field is dropped. True at the top: continuation lines that
    # continue no field are malformed and would be absorbed by the new fields.
    cdef bint dropping = True
    cdef const unsigned char* lf
    cdef unsigned char first
    while pos < size:
        # Lines end at LF; a CR before it is part of the line ending (§2.1).
        first = src[pos]
        if first == 10 or (first == 13 and pos + 1 < size and src[pos + 1] == 10):
            break  # the empty line ends the header block (§2.1, §3.5)
        if (dropping if first == 32 or first == 9 else _is_removed(src + pos, size - pos, removal)):
            # A removed field, or a continuation line of one: folding makes it
            # part of the field (§2.2.3).
            lf = _find_lf(src + pos, src + size)
            end = (lf - src) + 1 if lf != NULL else size
            if dropping and pos > 0:
                if count <= room:
                    spans[count - 1].end = end  # the stretch above goes on
            else:
                if count < room:
                    spans[count].start = pos
                    spans[count].end = end
                count += 1
            dropping = True
            pos = end
        else:
            # Kept: so is every line up to the next that is empty or may start
            # a removed field, folds included.
            dropping = False
            pos = _next_line_that_may_matter(src, pos, size, removal.may_matter)
            if pos < 0:
                break
    return count
