# cython: language_level=3
"""DKIM relaxed canonicalisation, compiled: the same behaviour as `_dkim_py.py`.

The rules, and the RFC 6376 sections they come from, are written out in
`_dkim_py.py`; each is cited again where this file implements it. Each function
makes one pass over C pointers into an output buffer sized once for the worst
case and shrunk at the end: runs of ordinary bytes are copied as they are, and
the state between them (a WSP run seen, line endings held back) is two counters.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from libc.string cimport memchr, memcpy

cdef extern from "Python.h":
    # The output is a bytes object this module owns alone until it is shrunk to
    # its length (_PyBytes_Resize needs the only reference), so it is held as a
    # PyObject* rather than a Python variable Cython would count references on.
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char* data, Py_ssize_t size)
    char* _bytes_data "PyBytes_AS_STRING"(PyObject* data) nogil
    int _PyBytes_Resize(PyObject** data, Py_ssize_t size)

from . import _errors

__all__ = ["relaxed_body", "relaxed_header"]

cdef enum:
    _LF = 0x0A
    _CR = 0x0D
    _SP = 0x20
    _HTAB = 0x09

cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    #define POOLMTA_DKIM_SSE2 1
    #include <emmintrin.h>
    #endif

    /* The end of the run of ordinary bytes starting at src[i]: the index of the
       first byte at or after i that is at most 0x20 (SP, HTAB, CR and LF are; so
       are the other controls, which the caller takes as ordinary bytes), or size.
       Body lines are long runs (base64 lines have no WSP at all), so with SSE2
       look at 16 bytes per step. */
    static inline Py_ssize_t poolmta_dkim_run_end(const unsigned char* src,
                                                  Py_ssize_t i, Py_ssize_t size) {
    #ifdef POOLMTA_DKIM_SSE2
        const __m128i space = _mm_set1_epi8(0x20);
        while (i + 16 <= size) {
            __m128i bytes = _mm_loadu_si128((const __m128i*)(src + i));
            /* unsigned bytes <= 0x20: max(bytes, 0x20) == 0x20 */
            int mask = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(bytes, space), space));
            if (mask) return i + __builtin_ctz((unsigned)mask);
            i += 16;
        }
    #endif
        while (i < size && src[i] > 0x20) i++;
        return i;
    }
    """
    Py_ssize_t poolmta_dkim_run_end(const unsigned char* src, Py_ssize_t i, Py_ssize_t size) noexcept nogil


cdef inline Py_ssize_t _count_lf(const unsigned char* src, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t count = 0
    cdef const unsigned char* end = src + size
    cdef const unsigned char* p = src
    while p < end:
        p = <const unsigned char*>memchr(p, _LF, <size_t>(end - p))
        if p == NULL:
            break
        count += 1
        p += 1
    return count


cdef inline bint _is_line_end(const unsigned char* src, Py_ssize_t i, Py_ssize_t size) noexcept nogil:
    """True when src[i] starts a line ending: LF, or CR right before LF."""
    return src[i] == _LF or (src[i] == _CR and i + 1 < size and src[i + 1] == _LF)


cdef PyObject* _buffer(Py_ssize_t capacity) except NULL:
    cdef PyObject* out = _new_bytes(NULL, capacity)
    if out == NULL:
        raise MemoryError()
    return out


cdef bytes _shrunk(PyObject* out, Py_ssize_t length):
    """`out` cut to `length` bytes, as a Python object; `out`'s reference is consumed."""
    if _PyBytes_Resize(&out, length) < 0:
        raise MemoryError()  # _PyBytes_Resize freed `out`
    result = <bytes>out
    Py_DECREF(result)
    return result


def relaxed_body(body):
    """The relaxed canonical form of a message body (RFC 6376 section 3.4.4).

    b"" for a body with no content; otherwise lines with single SPs for WSP runs,
    no trailing WSP, no trailing empty lines, each ending with CRLF. Raises
    TypeError when `body` is not bytes.
    """
    if not PyBytes_Check(body):
        raise _errors.not_bytes("body", body)
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
    if size == 0:
        return b""
    # Worst case: every byte kept, each bare LF written as CRLF, and a CRLF added
    # after a last line that had none.
    cdef Py_ssize_t capacity = size + _count_lf(src, size) + 2
    cdef PyObject* out = _buffer(capacity)
    cdef unsigned char* dst = <unsigned char*>_bytes_data(out)
    cdef Py_ssize_t i = 0, o = 0, start
    cdef Py_ssize_t held_line_ends = 0  # line endings not written until content follows
    cdef bint wsp = False  # a WSP run since the last byte written
    cdef unsigned char c
    with nogil:
        while i < size:
            c = src[i]
            if c == _SP or c == _HTAB:
                # 3.4.4: a WSP run becomes one SP, written only if content follows
                # on the same line (trailing WSP is removed).
                wsp = True
                i += 1
                continue
            if _is_line_end(src, i, size):
                # 3.4.4: held back, so that empty lines at the end are removed;
                # the WSP before the line ending is dropped.
                wsp = False
                held_line_ends += 1
                i += 2 if c == _CR else 1
                continue
            # Content: first the line endings and the SP it comes after.
            while held_line_ends:
                dst[o] = _CR
                dst[o + 1] = _LF
                o += 2
                held_line_ends -= 1
            if wsp:
                dst[o] = _SP
                o += 1
                wsp = False
            # The byte itself (maybe a CR without LF or another control), then the
            # run of ordinary bytes after it, copied as it is.
            start = i
            i = poolmta_dkim_run_end(src, i + 1, size)
            memcpy(dst + o, src + start, <size_t>(i - start))
            o += i - start
        if o:
            # 3.4.4: a non-empty body ends with exactly one CRLF; the empty lines
            # held back after the last content are dropped.
            dst[o] = _CR
            dst[o + 1] = _LF
            o += 2
    return _shrunk(out, o)


def relaxed_header(name, value):
    """The relaxed canonical form of one header field, `name:value` without CRLF
    (RFC 6376 section 3.4.2).

    `value` is everything after the colon, folds and a final line ending included
    or not. Raises TypeError when `name` or `value` is not bytes.
    """
    if not PyBytes_Check(name):
        raise _errors.not_bytes("header name", name)
    if not PyBytes_Check(value):
        raise _errors.not_bytes("header value", value)
    cdef const unsigned char* src_name = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t name_size = PyBytes_GET_SIZE(name)
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(value)
    cdef PyObject* out = _buffer(name_size + 1 + size)
    cdef unsigned char* dst = <unsigned char*>_bytes_data(out)
    cdef Py_ssize_t i, o = 0, value_start
    cdef unsigned char c
    cdef bint wsp = False
    with nogil:
        # 3.4.2: the name in lower case (ASCII), without the WSP before the colon.
        while name_size and (src_name[name_size - 1] == _SP or src_name[name_size - 1] == _HTAB):
            name_size -= 1
        for i in range(name_size):
            c = src_name[i]
            dst[o] = c + 32 if 0x41 <= c <= 0x5A else c
            o += 1
        dst[o] = 0x3A  # ":"
        o += 1
        value_start = o
        i = 0
        while i < size:
            c = src[i]
            if _is_line_end(src, i, size):
                # 3.4.2: unfold - the line ending goes, the WSP around it stays a run.
                i += 2 if c == _CR else 1
            elif c == _SP or c == _HTAB:
                wsp = True
                i += 1
            else:
                # 3.4.2: a WSP run becomes one SP; none at the start of the value.
                if wsp and o > value_start:
                    dst[o] = _SP
                    o += 1
                wsp = False
                dst[o] = c
                o += 1
                i += 1
        # 3.4.2: WSP at the end of the value is removed (never written).
    return _shrunk(out, o)
