# cdef extern declarations of the xxHash header (fetched at build time; see
# build_support.py). Compiled inline (XXH_INLINE_ALL) into each user module.
from libc.stdint cimport uint64_t

cdef extern from "xxhash.h" nogil:
    ctypedef uint64_t XXH64_hash_t
    XXH64_hash_t XXH3_64bits(const void* data, size_t length)
    XXH64_hash_t XXH3_64bits_withSeed(const void* data, size_t length, XXH64_hash_t seed)

    # The streaming API (the disk tier hashes a body as it arrives).
    ctypedef struct XXH3_state_t:
        pass
    XXH3_state_t* XXH3_createState()
    int XXH3_freeState(XXH3_state_t* state)
    int XXH3_64bits_reset(XXH3_state_t* state)
    int XXH3_64bits_update(XXH3_state_t* state, const void* data, size_t length)
    XXH64_hash_t XXH3_64bits_digest(const XXH3_state_t* state)
