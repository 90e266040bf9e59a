from libc.stdint cimport uint64_t

from fastproxy._http cimport MessageHead
from fastproxy._httpcache cimport RouteCache, Stored

# Content codings, by number (0: none / identity).
cdef enum:
    C_NONE = 0
    C_GZIP = 1
    C_BR = 2
    C_ZSTD = 3
    C_COUNT = 4

# What Policy.decide says about one response.
cdef enum:
    D_SKIP = -1      # not compressible (type, size, status, coding...): no Vary either
    D_IDENTITY = 0   # compressible, but the client asked for none of ours: Vary only


cdef class Encoder:
    cdef readonly int coding
    cdef readonly long long taken_in    # bytes fed
    cdef readonly bint pending          # fed since the last take()
    cdef bint done
    cdef int feed(self, object data) except -1
    cdef bytes take(self, bint final)   # what is ready (sync flush), or the end
    cdef int release(self) except -1    # back to its pool (it may be reused)


cdef class Policy:
    cdef readonly tuple codings         # server preference order (C_*)
    cdef int levels[C_COUNT]
    cdef readonly long long min_size
    cdef frozenset exact                # media types, lower case ("application/json")
    cdef tuple majors                   # "text/" for "text/*"
    cdef tuple suffixes                 # "+json" for "*/*+json"

    cdef int decide(self, MessageHead req, MessageHead resp) except -2
    cdef int choose(self, MessageHead req) except -1
    cdef int choose_for(self, MessageHead req) except -1
    cdef bint type_ok(self, const char* v, size_t n) except -1
    cdef Encoder encoder(self, int coding, long long length)


cdef bytes coding_name(int coding)
cdef int negotiate(MessageHead req, tuple codings) except -1
cdef bytes compress_whole(int coding, int level, bytes body)


cdef class StoredForm:
    cdef readonly bint compressible     # the stored response may be compressed
    cdef readonly bytes vary_prefix     # its prefix with Accept-Encoding in Vary
    cdef readonly bytes enc_prefix      # ... and no Accept-Ranges, a weak ETag
    cdef readonly dict bodies           # coding -> the encoded body
    cdef int keep(self, RouteCache cache, uint64_t primary, Stored stored, int coding,
                  bytes data) except -1
    cdef bytes body(self, RouteCache cache, uint64_t primary, Stored stored, Policy policy,
                    int coding)


cdef StoredForm stored_form(Stored stored, Policy policy)
cdef bytes rewrite_prefix(bytes prefix, bint encoded)
