from libc.stdint cimport int32_t, int64_t, uint64_t


ctypedef struct PeerSlot:
    # One upstream server's state, shared by every process of the instance.
    int32_t health          # 1: up (the active checks pass, or there are none); 0: down
    int32_t ejections       # passive checks: ejections in a row (0: none); > 0 once the
                            # last one has ended = on probation (one failure re-ejects)
    int64_t up_since        # CLOCK_MONOTONIC ns when it last came back (0: up from the start)
    int64_t ejected_until   # CLOCK_MONOTONIC ns; not used before this
    int32_t admin           # set through the admin API: ADMIN_ENABLED, ADMIN_DRAIN, ADMIN_DISABLED
    int32_t _pad


cdef enum:
    ADMIN_ENABLED = 0       # as the config says
    ADMIN_DRAIN = 1         # no new clients; the ones bound to it (sticky) still go
    ADMIN_DISABLED = 2      # nothing goes to it


cdef int64_t now_ns() noexcept nogil


cdef class PeerTable:
    cdef void* _mem
    cdef size_t _bytes
    cdef uint64_t* _version     # bumped (atomically) after every change to a slot
    cdef PeerSlot* slots
    cdef readonly Py_ssize_t size

    cdef uint64_t current(self) noexcept nogil
    cdef void changed(self) noexcept nogil
    cdef void eject(self, Py_ssize_t i, int64_t base_ns, int64_t max_ns) noexcept nogil
    cdef void probe_passed(self, Py_ssize_t i) noexcept nogil


cdef inline bint slot_usable(const PeerSlot* s, int64_t now) noexcept nogil:
    return s.health != 0 and now >= s.ejected_until and s.admin == ADMIN_ENABLED
