# cython: language_level=3
"""Source-IP rotation, compiled: the same picks as `_rotation_py.py`.

Smooth weighted round robin (nginx), with every pool's usable IPs in flat C
arrays addressed by dense pool index. From the all-zero start the algorithm is
periodic: after P = sum(weights) / gcd(weights) picks every running value is
back to zero and the sequence repeats. So when a pool is built its cycle is
run once and recorded, and a pick is then one array read and one counter step,
whatever the number of IPs. A pool whose cycle would be long next to its
number of IPs (very uneven weights, see `_cycle_limit`) is not recorded; its
picks run the algorithm over its IPs, exactly as the pure twin does.

A pick allocates nothing: it returns the IP's position, an int built with the
table. It never calls back into Python, so it runs under the GIL from start
to end and a table is safe to share between tasks of one worker.
"""

from cpython.list cimport PyList_GET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint32_t, UINT32_MAX

from operator import index as _as_index

from . import _errors
from ._errors import NoUsableIp
from ._pools import flatten_pools, key_index

__all__ = ["NoUsableIp", "RotationTable"]


cdef extern from "Python.h":
    bint PyLong_CheckExact(object o) noexcept
    # Returns -1 with an error set on overflow; checked by hand below so the
    # common case costs no exception bookkeeping.
    Py_ssize_t PyLong_AsSsize_t(object o) noexcept
    PyObject* PyErr_Occurred() noexcept
    void PyErr_Clear() noexcept


cdef struct Pool:
    Py_ssize_t start     # its usable IPs are start:end of the flat arrays
    Py_ssize_t end
    int64_t total        # sum of their weights
    Py_ssize_t cycle     # offset of its recorded cycle in the schedule, -1 if none
    Py_ssize_t period    # length of that cycle
    Py_ssize_t position  # next slot of the cycle


# A recorded cycle may hold up to this many slots per usable IP (at least
# _MIN_CYCLE in all): reduced weights averaging up to 16, or any weights on a
# small pool. A slot costs 4 bytes, and recording it one algorithm step over the
# pool's IPs when the table is built.
cdef enum:
    _SLOTS_PER_IP = 16
    _MIN_CYCLE = 256


cdef inline Py_ssize_t _cycle_limit(Py_ssize_t n_ips) noexcept nogil:
    return n_ips * _SLOTS_PER_IP if n_ips * _SLOTS_PER_IP > _MIN_CYCLE else _MIN_CYCLE


cdef inline int64_t _gcd(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t t
    while b:
        t = a % b
        a = b
        b = t
    return a


cdef class RotationTable:
    """Every pool of one snapshot, ready to pick source IPs per message."""

    cdef Py_ssize_t _size       # number of pools
    cdef Py_ssize_t _n_ips      # number of usable IPs, all pools
    cdef Pool* _pools           # per dense index
    cdef int64_t* _weights      # weight per usable IP (> 0)
    cdef int64_t* _current      # smooth-WRR running value per usable IP
    cdef uint32_t* _schedule    # recorded cycles: flat indexes of the IPs picked
    cdef list _choices          # position in its pool's list per usable IP (an int)
    cdef list _keys             # pool key per dense index
    cdef dict _index            # pool key -> dense index, built on the first index_of

    def __cinit__(self):
        self._pools = NULL
        self._weights = NULL
        self._current = NULL
        self._schedule = NULL

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        # An emptied table holds no pools, so pick() cannot reach freed memory.
        self._size = 0
        self._n_ips = 0
        PyMem_Free(self._pools)
        PyMem_Free(self._weights)
        PyMem_Free(self._current)
        PyMem_Free(self._schedule)
        self._pools = NULL
        self._weights = NULL
        self._current = NULL
        self._schedule = NULL

    def __init__(self, pools):
        """Same as `RotationTable.from_pools(pools)`."""
        flat = flatten_pools(pools)
        cdef Py_ssize_t size = len(flat.keys)
        cdef Py_ssize_t n_ips = len(flat.weights)
        cdef Py_ssize_t i, k, slots = 0
        cdef int64_t divisor
        cdef Pool* pool
        self._release()
        # +1 so that an empty table or a table of IP-less pools still gets
        # valid (non-NULL) arrays.
        self._pools = <Pool*>PyMem_Malloc((size + 1) * sizeof(Pool))
        self._weights = <int64_t*>PyMem_Malloc((n_ips + 1) * sizeof(int64_t))
        self._current = <int64_t*>PyMem_Malloc((n_ips + 1) * sizeof(int64_t))
        if self._pools == NULL or self._weights == NULL or self._current == NULL:
            self._release()
            raise MemoryError()
        self._size = size
        self._n_ips = n_ips
        self._choices = flat.choices
        self._keys = flat.keys
        self._index = None  # see _pools.key_index
        for k in range(n_ips):
            self._weights[k] = flat.weights[k]
            self._current[k] = 0
        for i in range(size):
            pool = &self._pools[i]
            pool.start = flat.starts[i]
            pool.end = flat.starts[i + 1]
            pool.total = flat.totals[i]
            pool.position = 0
            pool.cycle = -1
            pool.period = 0
            if pool.start == pool.end or n_ips > UINT32_MAX:
                continue
            divisor = 0
            for k in range(pool.start, pool.end):
                divisor = _gcd(self._weights[k], divisor)
            # Weights scaled by a common factor pick the same IPs: the period
            # is the total of the reduced weights.
            if pool.total // divisor <= _cycle_limit(pool.end - pool.start):
                pool.period = pool.total // divisor
                pool.cycle = slots
                slots += pool.period
        self._schedule = <uint32_t*>PyMem_Malloc((slots + 1) * sizeof(uint32_t))
        if self._schedule == NULL:
            self._release()
            raise MemoryError()
        for i in range(size):
            if self._pools[i].cycle >= 0:
                _record_cycle(&self._pools[i], self._weights, self._current, self._schedule)

    @classmethod
    def from_pools(cls, pools):
        """Build a table from `(pool_key, [(address, weight, active), ...])` pairs.

        Pools get dense indexes 0, 1, ... in the order given. Raises ValueError
        on a duplicate pool key or a malformed IP (see `_pools.flatten_pools`).
        """
        return cls(pools)

    def __len__(self):
        return self._size

    def __repr__(self):
        return f"<RotationTable pools={self._size} usable_ips={self._n_ips}>"

    def index_of(self, pool_key):
        """The dense index of `pool_key`; KeyError if the pool is not in the table."""
        if self._index is None:
            self._index = key_index(self._keys)
        index = self._index.get(pool_key)
        if index is None:
            raise _errors.unknown_pool(pool_key)
        return index

    def pick(self, index):
        """Pick the next source IP of pool `index`: its position in the list the
        pool was built from (an int).

        Raises IndexError for an index outside the table and NoUsableIp when the
        pool has no usable IP.
        """
        cdef Py_ssize_t i
        cdef Py_ssize_t best
        cdef Pool* pool
        if not PyLong_CheckExact(index):
            # Mirrors the pure twin: anything with __index__, nothing else.
            return self.pick(_as_index(index))
        i = PyLong_AsSsize_t(index)
        if i == -1 and PyErr_Occurred() != NULL:
            PyErr_Clear()  # too large for a C index: out of range like any other
            raise _errors.pool_index_out_of_range(index, self._size)
        if i < 0 or i >= self._size:
            raise _errors.pool_index_out_of_range(index, self._size)
        pool = &self._pools[i]
        if pool.start == pool.end:
            raise NoUsableIp(self._keys[i])
        if pool.cycle >= 0:
            best = self._schedule[pool.cycle + pool.position]
            pool.position += 1
            if pool.position == pool.period:
                pool.position = 0
        else:
            best = _pick_smooth(self._weights, self._current, pool.start, pool.end, pool.total)
        return <object>PyList_GET_ITEM(self._choices, best)

    def pick_key(self, pool_key):
        """`pick(index_of(pool_key))`."""
        return self.pick(self.index_of(pool_key))


cdef void _record_cycle(
    Pool* pool, const int64_t* weights, int64_t* current, uint32_t* schedule
) noexcept nogil:
    """Run one period of the pool's rotation from zero and record the picks.

    The running values must be back at zero afterwards, which makes the
    sequence repeat with that period; if they are not, the recording is dropped
    and the pool rotates by running the algorithm (never a wrong pick).
    """
    cdef Py_ssize_t step, k
    cdef bint back_at_zero = True
    for step in range(pool.period):
        schedule[pool.cycle + step] = <uint32_t>_pick_smooth(
            weights, current, pool.start, pool.end, pool.total
        )
    for k in range(pool.start, pool.end):
        back_at_zero = back_at_zero and current[k] == 0
    if not back_at_zero:
        for k in range(pool.start, pool.end):
            current[k] = 0
        pool.cycle = -1
        pool.period = 0


cdef inline Py_ssize_t _pick_smooth(
    const int64_t* weights, int64_t* current, Py_ssize_t start, Py_ssize_t end, int64_t total
) noexcept nogil:
    """One smooth weighted round robin step over `start:end` (start < end); the winner.

    The same loop as the pure twin's `pick`.
    """
    cdef Py_ssize_t best = start
    cdef int64_t best_current = current[start] + weights[start]
    cdef int64_t value
    cdef Py_ssize_t position
    current[start] = best_current
    for position in range(start + 1, end):
        value = current[position] + weights[position]
        current[position] = value
        if value > best_current:  # strict: the earlier IP wins a tie
            best = position
            best_current = value
    current[best] = best_current - total
    return best
