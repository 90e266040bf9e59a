# HPACK (RFC 7541): see _hpack.pyx.
from libc.stdint cimport uint8_t


cdef class HpackDecoder:
    cdef list table  # oldest first
    cdef Py_ssize_t size
    cdef Py_ssize_t max_size  # the size the peer's last update set
    cdef Py_ssize_t max_allowed  # our SETTINGS_HEADER_TABLE_SIZE
    cdef public Py_ssize_t max_header_list_size

    cdef int _evict(self, Py_ssize_t room) except -1
    cdef int _add(self, bytes name, bytes value) except -1
    cdef tuple _entry(self, Py_ssize_t index)
    cdef bytes _string(self, const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos)
    cdef list decode_ptr(self, const uint8_t* p, Py_ssize_t n)


cdef class HpackEncoder:
    cdef list table  # oldest first
    cdef dict by_field  # (name, value) -> insertion number of the newest such entry
    cdef dict by_name  # name -> insertion number of the newest entry with it
    cdef Py_ssize_t inserted
    cdef Py_ssize_t size
    cdef Py_ssize_t cap
    cdef Py_ssize_t max_size
    cdef Py_ssize_t pending_min  # a size update to send first (-1: none)
    cdef bint huffman

    cdef int _evict(self, Py_ssize_t room) except -1
    cdef int _add(self, tuple field, Py_ssize_t need) except -1
    cdef bytes encode_list(self, list headers)
