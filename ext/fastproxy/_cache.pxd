cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t


# One stored response, kept in the hash table itself (open addressing, linear
# probing): the probe that finds the key also brings in its value and LRU links.
ctypedef struct CacheSlot:
    uint64_t key
    PyObject* value     # owned reference; NULL: the slot is empty
    int64_t size        # bytes charged to the budget
    uint32_t older      # slot of the next less recently used entry; NIL: none
    uint32_t newer      # slot of the next more recently used entry; NIL: none


# A value taken out of the table, released (and shown to on_evict) only once
# the table is consistent again.
ctypedef struct Released:
    uint64_t key
    PyObject* value     # owned reference
    bint evicted        # pushed out by the budget or the count (on_evict sees it)


cpdef uint64_t cache_key(bytes key)


@cython.final
cdef class CacheIndex:
    cdef CacheSlot* slots
    cdef size_t table_bytes
    cdef uint64_t mask          # capacity - 1; capacity is a power of two
    cdef uint64_t seed          # per table: home slots cannot be predicted from outside
    cdef Py_ssize_t count
    cdef Py_ssize_t grow_at
    cdef uint32_t newest, oldest
    cdef Released* released     # values waiting for _release, oldest first
    cdef Py_ssize_t n_released, released_cap
    cdef readonly long long budget
    cdef readonly Py_ssize_t max_entries
    cdef readonly long long bytes_used
    cdef readonly unsigned long long evictions
    cdef public object on_evict

    # The C API (what the proxy calls). get/peek return a new reference or None.
    cdef Py_ssize_t find(self, uint64_t key) noexcept nogil
    cpdef object get(self, uint64_t key)
    cpdef object peek(self, uint64_t key)
    cpdef int put(self, uint64_t key, object value, long long size) except -1
    cpdef bint remove(self, uint64_t key) noexcept

    cdef void _unlink(self, uint32_t i) noexcept nogil
    cdef void _link_newest(self, uint32_t i) noexcept nogil
    cdef void _relink(self, uint32_t i) noexcept nogil
    cdef void _vacate(self, uint64_t i) noexcept nogil
    cdef PyObject* _detach(self, uint64_t i) noexcept nogil
    cdef int _take(self, uint64_t i, bint evicted) except -1
    cdef int _release(self, Py_ssize_t base) except -1
    cdef int _resize(self, uint64_t capacity) except -1
