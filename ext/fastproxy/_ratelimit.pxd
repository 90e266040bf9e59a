from libc.stdint cimport int64_t, uint64_t


ctypedef struct LimitSlot:
    uint64_t key        # hash of (limit, key); 0: never used
    int64_t tat         # GCRA theoretical arrival time, CLOCK_MONOTONIC ns


cdef class LimitTable:
    cdef void* _mem
    cdef size_t _bytes
    cdef LimitSlot* slots
    cdef uint64_t mask
    cdef readonly Py_ssize_t size
    cdef uint64_t* _evictions   # shared counter

    cdef int64_t acquire(self, uint64_t key, int64_t now, int64_t interval,
                         int64_t tolerance, int64_t* tat_out) noexcept nogil


cdef class RateLimit:
    cdef readonly str name
    cdef readonly object key            # an _actions.Template over the request
    cdef readonly double rate           # requests per second
    cdef readonly long long burst
    cdef int64_t interval               # ns per request
    cdef int64_t tolerance              # burst * interval
    cdef uint64_t seed                  # the limit's own hash space
    cdef readonly LimitTable table
    cdef bytes policy                   # the RateLimit-Policy line
    cdef readonly long long delay       # excess requests passed at once; -1: all (nodelay)
    cdef int64_t delay_free             # delay * interval

    cdef int64_t check(self, bytes key, int64_t now, long long* remaining,
                       int64_t* reset, int64_t* hold) noexcept
    cpdef bytes lines(self, int64_t wait, long long remaining, int64_t reset)


ctypedef struct CountSlot:
    uint64_t key        # hash of the client address; 0: never used
    int64_t count       # connections open now


cdef class ConnTable:
    cdef void* _mem
    cdef size_t _bytes
    cdef CountSlot* slots
    cdef uint64_t mask
    cdef readonly Py_ssize_t size

    cdef bint acquire(self, uint64_t key, int64_t limit) noexcept nogil
    cdef void release(self, uint64_t key) noexcept nogil


cpdef uint64_t ip_key(bytes ip)


ctypedef struct BanSlot:
    uint64_t key        # hash of the client address; 0: never used
    uint64_t state      # window number (32 bits), previous count (16), current count (16)
    int64_t until       # end of the ban (CLOCK_MONOTONIC ns); in the past: not banned


cdef class BanTable:
    cdef void* _mem
    cdef size_t _bytes
    cdef BanSlot* slots
    cdef uint64_t mask
    cdef uint64_t* _counters    # shared: evictions, bans
    cdef readonly Py_ssize_t size
    cdef int64_t window, ban
    cdef long long after

    cdef int64_t state_end(self, BanSlot* s, int64_t now) noexcept nogil
    cdef BanSlot* find(self, uint64_t h, int64_t now, bint take) noexcept nogil
    cdef int64_t banned(self, uint64_t key, int64_t now) noexcept nogil
    cdef int64_t event(self, uint64_t key, int64_t now) noexcept nogil


cdef Py_ssize_t table_size(Py_ssize_t size) except -1
cdef void* shared_map(size_t size) except NULL
