# cdef extern declarations of the xxHash header (fetched at build time; see
# build_support.py). Compiled inline (XXH_INLINE_ALL) into each user module.
from libc.stdint cimport uint64_t

cdef extern from "xxhash.h" nogil:
    ctypedef uint64_t XXH64_hash_t
    XXH64_hash_t XXH3_64bits(const void* data, size_t length)
    XXH64_hash_t XXH3_64bits_withSeed(const void* data, size_t length, XXH64_hash_t seed)
