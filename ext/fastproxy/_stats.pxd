from libc.stdint cimport int64_t


# Where things are in a series (fastproxy.metrics names them; _stats.LAYOUT exports
# these numbers so that a test can check that both agree).
cdef enum:
    # the instance
    ST_ACCEPTED = 0
    ST_CLOSED = 1
    ST_OPEN = 2             # a gauge
    ST_BYTES_IN = 3
    ST_BYTES_OUT = 4
    ST_WAF = 5
    ST_RATE_LIMITED = 6
    ST_TLS_FAILURES = 7
    ST_TLS_HANDSHAKES = 8
    ST_DENIED = 9           # access lists and bans (403)
    # an upstream server
    SV_REQUESTS = 0
    SV_FAILURES = 1
    SV_IN_FLIGHT = 2        # a gauge
    # an upstream: responses by status class (0..4), then failures, then a histogram
    UP_FAILURES = 5
    UP_COUNTS = 6
    # a route: 8 methods x 5 status classes, then a histogram
    ROUTE_COUNTS = 40
    # a cache
    CA_HIT = 0
    CA_MISS = 1
    CA_STALE = 2
    CA_BYPASS = 3


cdef class Stats:
    cdef int64_t* mem
    cdef size_t _bytes
    cdef readonly Py_ssize_t series     # counters per block
    cdef readonly Py_ssize_t blocks     # block 0: what processes that are gone counted
    cdef int64_t* mine                  # this process's block (a scratch block until use_block)
    cdef int64_t* scratch
    cdef int64_t* bounds                # histogram bounds, microseconds, increasing
    cdef readonly int nbounds
    # Notes: a small document per block (the dashboard's top lists), written by the
    # block's process under a sequence number (odd while written), read by the admin.
    cdef unsigned char* notes
    cdef size_t _note_bytes
    cdef readonly Py_ssize_t note_size  # bytes per block, with its 16-byte head
    cdef Py_ssize_t block               # this process's block (0: none yet)

    cdef void observe(self, Py_ssize_t base, int64_t us) noexcept nogil


cdef inline void stat_add(Stats stats, Py_ssize_t i, int64_t v) noexcept:
    """Add to counter i of this process (i < 0: a series that is not counted)."""
    if i >= 0:
        stats.mine[i] += v
