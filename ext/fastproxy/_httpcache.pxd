from libc.stdint cimport int64_t, uint64_t

from fastproxy._cache cimport CacheIndex
from fastproxy._http cimport MessageHead
from fastproxy._actions cimport Template


cdef double wall_now() noexcept nogil


cdef class Stamps:
    cdef int64_t* slots
    cdef size_t _bytes
    cdef uint64_t mask
    cdef readonly Py_ssize_t size

    cdef bint outdated(self, uint64_t key, double fetched) noexcept nogil
    cdef void mark(self, uint64_t key, double now) noexcept nogil


cdef class SharedCounter:
    cdef int64_t* value_ptr


cdef class Purges:
    cdef void* table
    cdef size_t _bytes

    cdef int64_t current(self) noexcept nogil


cdef class Stored:
    cdef readonly int status
    cdef readonly bytes reason
    cdef readonly list headers          # (name, value) as stored, for cachepolicy
    cdef readonly bytes body
    cdef readonly double request_time   # wall clock, seconds
    cdef readonly double response_time
    cdef readonly object fresh          # cachepolicy.Freshness
    cdef readonly double fresh_until    # wall clock time it goes stale
    cdef readonly bint no_cache         # validated on every use
    cdef readonly double initial_age    # corrected initial age (RFC 9111 §4.2.3)
    cdef readonly bytes variant         # the secondary key (Vary), b"" for none
    cdef readonly bytes prefix          # status line and stored fields, serialized
    cdef readonly bytes length_line     # "Content-Length: N\r\n"
    cdef readonly long long size        # counted against the memory budget
    cdef public bytes url               # scheme://host/target, what purges match
    cdef public tuple tags              # from the cache's tag header (purge by tag)
    cdef public int64_t purge_seq       # the purges it was checked against (Purges seq)
    cdef public dict encodings          # _compress.Policy -> its StoredForm (None: none yet)


cdef class Variants:
    cdef readonly tuple names
    cdef readonly dict entries          # secondary key -> Stored
    cdef readonly long long size


cdef class RouteCache:
    cdef readonly str name
    cdef readonly CacheIndex index
    cdef readonly Template template     # the primary key
    cdef readonly str key_source        # ... as written
    cdef readonly object policy         # cachepolicy.Policy
    cdef readonly long long max_object
    cdef readonly double lock_timeout
    cdef readonly bint debug
    cdef readonly dict fills            # primary key -> [waiting Exchange, ...]
    cdef readonly long long store_limit # the largest response a tier keeps
    cdef readonly object disk           # diskcache.DiskStore, or None
    cdef readonly object redis          # rediscache.RedisCache, or None
    cdef readonly long long capture_limit  # the largest body kept whole (memory or Redis)
    cdef bytes status_name
    cdef Stamps stamps                  # invalidations of every worker (None: alone)
    cdef public Py_ssize_t stats_base   # the cache's first counter in _stats (-1: none)
    cdef readonly tuple tag_headers     # the response fields that list tags (lowercase)
    cdef Purges purges                  # the admin API's purges (None: none)
    cdef list rules                     # the purges for this cache: (seq, time, kind, soft, text)
    cdef int64_t rules_seq              # the last purge read from `purges`
    cdef double floor                   # what was fetched before counts as purged

    cdef int sync_purges(self) except -1
    cdef bint purged(self, uint64_t primary, Stored stored) except -1

    cdef object lookup(self, uint64_t primary, MessageHead head)
    cdef bint plain(self, MessageHead head) except -1
    cdef int put(self, uint64_t primary, Stored stored, tuple names) except -1
    cdef bint charge(self, uint64_t primary, Stored stored, long long extra) except -1
