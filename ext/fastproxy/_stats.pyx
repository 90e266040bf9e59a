"""Counters of one instance, in shared memory: what the admin API's /metrics shows.

The master maps `blocks` blocks of `series` int64 counters before it forks.
Each worker counts in a block of its own (one writer per block: plain adds, no
atomics, no shared cache lines between workers); block 0 holds what processes
that are gone counted (the master folds a dead worker's block into it, gauges
excepted, and gives the block to the next worker). A reader (the admin process)
sums the blocks. Which counter is which is `fastproxy.metrics`' business (a
registry of series kept by the master across reloads).

Each block also has a note: a small byte string its process publishes (the
dashboard's top lists, as JSON) under a sequence number, odd while it is being
written, so that a reader retries instead of reading half of one.

A histogram at `base` is nbounds + 1 buckets (not cumulative: the reader sums
them up), then the sum of the observations (microseconds), then their count.
"""
from libc.stdint cimport int64_t
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset
from posix.mman cimport munmap
from cpython.mem cimport PyMem_Malloc, PyMem_Free

from fastproxy._ratelimit cimport shared_map


cdef extern from *:
    void __sync_synchronize() nogil


LAYOUT = {"ST_ACCEPTED": ST_ACCEPTED, "ST_CLOSED": ST_CLOSED, "ST_OPEN": ST_OPEN,
          "ST_BYTES_IN": ST_BYTES_IN, "ST_BYTES_OUT": ST_BYTES_OUT, "ST_WAF": ST_WAF,
          "ST_RATE_LIMITED": ST_RATE_LIMITED, "ST_TLS_FAILURES": ST_TLS_FAILURES,
          "ST_TLS_HANDSHAKES": ST_TLS_HANDSHAKES, "ST_DENIED": ST_DENIED,
          "SV_REQUESTS": SV_REQUESTS, "SV_FAILURES": SV_FAILURES, "SV_IN_FLIGHT": SV_IN_FLIGHT,
          "UP_FAILURES": UP_FAILURES, "UP_COUNTS": UP_COUNTS, "ROUTE_COUNTS": ROUTE_COUNTS,
          "CA_HIT": CA_HIT, "CA_MISS": CA_MISS, "CA_STALE": CA_STALE, "CA_BYPASS": CA_BYPASS}


cdef class Stats:
    def __cinit__(self, Py_ssize_t series, Py_ssize_t blocks, bounds=(),
                  Py_ssize_t note_size=0):
        cdef Py_ssize_t i
        if series < 1 or blocks < 2:
            raise ValueError("at least one series and two blocks")
        if note_size < 0 or note_size % 8:
            raise ValueError("note_size must be a multiple of 8")
        self.note_size = note_size + 16 if note_size else 0
        self._note_bytes = <size_t>self.note_size * <size_t>blocks
        if self._note_bytes:
            self.notes = <unsigned char*>shared_map(self._note_bytes)
        self.series = series
        self.blocks = blocks
        self._bytes = <size_t>series * <size_t>blocks * sizeof(int64_t)
        self.mem = <int64_t*>shared_map(self._bytes)
        self.scratch = <int64_t*>PyMem_Malloc(<size_t>series * sizeof(int64_t))
        if self.scratch == NULL:
            raise MemoryError()
        memset(self.scratch, 0, <size_t>series * sizeof(int64_t))
        self.mine = self.scratch
        values = [int(b) for b in bounds]
        if values != sorted(set(values)) or any(v <= 0 for v in values):
            raise ValueError("histogram bounds must be increasing and positive")
        self.nbounds = len(values)
        self.bounds = <int64_t*>PyMem_Malloc((self.nbounds + 1) * sizeof(int64_t))
        if self.bounds == NULL:
            raise MemoryError()
        for i in range(self.nbounds):
            self.bounds[i] = values[i]

    def __dealloc__(self):
        if self.mem != NULL:
            munmap(self.mem, self._bytes)
        if self.notes != NULL:
            munmap(self.notes, self._note_bytes)
        PyMem_Free(self.scratch)
        PyMem_Free(self.bounds)

    @property
    def histogram_size(self):
        """Counters a histogram takes: the buckets, the sum, the count."""
        return self.nbounds + 3

    def use_block(self, Py_ssize_t block):
        """Count in `block` from now on (a worker, once, at its start)."""
        if not 0 < block < self.blocks:
            raise IndexError(block)
        self.mine = self.mem + block * self.series
        self.block = block

    def publish(self, bytes data not None):
        """Put `data` in this process's note (after use_block). False when it
        does not fit (the note keeps what it had) or there are no notes."""
        cdef unsigned char* at
        cdef uint64_t* head
        cdef Py_ssize_t n = len(data)
        if self.notes == NULL or self.block == 0 or n > self.note_size - 16:
            return False
        at = self.notes + self.block * self.note_size
        head = <uint64_t*>at
        head[0] += 1  # odd: being written
        __sync_synchronize()
        memcpy(at + 16, <const char*>data, n)
        head[1] = n
        __sync_synchronize()
        head[0] += 1
        return True

    def note(self, Py_ssize_t block):
        """The note of `block` (b"" when none, or when it was being written
        during every one of a few tries)."""
        cdef unsigned char* at
        cdef uint64_t* head
        cdef uint64_t seq, n
        cdef int tries
        if self.notes == NULL or not 0 < block < self.blocks:
            return b""
        at = self.notes + block * self.note_size
        head = <uint64_t*>at
        for tries in range(100):
            seq = head[0]
            __sync_synchronize()
            n = head[1]
            if seq % 2 == 0 and n <= <uint64_t>(self.note_size - 16):
                data = (<char*>at)[16:16 + n]
                __sync_synchronize()
                if head[0] == seq:
                    return data
        return b""

    def add(self, Py_ssize_t i, int64_t v=1):
        """Python-side add (tools, tests, the slow paths)."""
        if 0 <= i < self.series:
            self.mine[i] += v

    def set(self, Py_ssize_t i, int64_t v):
        """Set counter i of this process (a count the worker keeps elsewhere)."""
        if 0 <= i < self.series:
            self.mine[i] = v

    def observe_us(self, Py_ssize_t base, int64_t us):
        if 0 <= base and base + self.nbounds + 3 <= self.series:
            self.observe(base, us)

    cdef void observe(self, Py_ssize_t base, int64_t us) noexcept nogil:
        cdef int k = 0
        cdef int64_t* h
        if base < 0:
            return
        h = self.mine + base
        while k < self.nbounds and us > self.bounds[k]:
            k += 1
        h[k] += 1
        h[self.nbounds + 1] += us
        h[self.nbounds + 2] += 1

    def retire(self, Py_ssize_t block, bytes gauges):
        """(Master) A process that counted in `block` is gone: add its counters to
        block 0, except the series `gauges` marks (one byte per series, nonzero:
        a gauge, whose value dies with the process), and zero the block."""
        cdef int64_t* src
        cdef int64_t* dst = self.mem
        cdef const unsigned char* mask = gauges
        cdef Py_ssize_t i, n = len(gauges)
        if not 0 < block < self.blocks:
            raise IndexError(block)
        src = self.mem + block * self.series
        if self.notes != NULL:  # its note goes with it
            (<uint64_t*>(self.notes + block * self.note_size))[1] = 0
        for i in range(self.series):
            if i >= n or mask[i] == 0:
                dst[i] += src[i]
        memset(src, 0, <size_t>self.series * sizeof(int64_t))

    def totals(self, Py_ssize_t count=-1):
        """The first `count` series (default: all) summed over the blocks: a list."""
        cdef Py_ssize_t i, b, n = self.series if count < 0 or count > self.series else count
        cdef int64_t s
        cdef list out = [0] * n
        for i in range(n):
            s = 0
            for b in range(self.blocks):
                s += self.mem[b * self.series + i]
            out[i] = s
        return out
