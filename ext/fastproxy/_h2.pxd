# The HTTP/2 connection layer's classes, declared for other compiled modules
# (_h2stream calls a connection's send_* / acknowledge / receive as C methods).
from libc.stdint cimport int64_t, uint8_t, uint32_t

from fastproxy._hpack cimport HpackDecoder, HpackEncoder


cdef class _Stream:
    cdef int sid
    cdef int64_t send_window  # what the client lets us send
    cdef int64_t recv_window  # what the client may still send us
    cdef int64_t owed  # acknowledged bytes not yet given back by WINDOW_UPDATE
    cdef bint remote_closed  # END_STREAM received
    cdef bint local_closed  # END_STREAM sent
    cdef bint got_response  # (client) the final response's HEADERS came


cdef class _Connection:
    cdef bint client
    cdef object on_request, on_data, on_end, on_reset, on_window, on_ping
    cdef object on_settings, on_goaway, on_trailers
    # Frames that cost work and ask nothing (empty DATA without END_STREAM, WINDOW_UPDATEs
    # beyond update_credit) are told to `h2_flood_frame(kind)` when the handler has it:
    # the server counts them with PING and SETTINGS (empty frames flood, CVE-2019-9518).
    cdef object on_flood
    # WINDOW_UPDATEs a client may send for the DATA we sent: two (stream and connection)
    # for each frame, and two more per 4 KiB in it (clients that give back what each
    # read took); only those beyond it count as a flood.
    cdef int64_t update_credit
    cdef public int next_stream_id  # (client) the id of the next stream we open
    cdef public object peer_max_streams  # the peer's SETTINGS_MAX_CONCURRENT_STREAMS
    cdef HpackDecoder decoder
    cdef HpackEncoder encoder
    cdef dict streams  # sid -> _Stream, the streams not closed
    cdef dict ignored  # sid -> None: streams we reset; their late frames are dropped
    cdef bytearray inbuf
    cdef uint8_t* out
    cdef Py_ssize_t out_len, out_cap
    cdef bint preface_done, settings_seen, stopped
    cdef Py_ssize_t preface_got
    cdef public int highest_inbound
    cdef int64_t conn_send, conn_recv, conn_owed
    cdef int64_t peer_initial_window, local_stream_window, local_conn_window
    cdef public Py_ssize_t max_outbound_frame_size
    cdef Py_ssize_t max_inbound_frame_size
    cdef Py_ssize_t block_limit
    # the header block being gathered (HEADERS without END_HEADERS, then CONTINUATIONs)
    cdef bytearray block
    cdef int block_sid, block_frames
    cdef bint block_end_stream, block_bad_priority, in_block

    cdef int _setup(self, handler, bint client, int max_streams, Py_ssize_t header_list,
                    Py_ssize_t decode_list, int stream_window, int conn_window) except -1
    cdef int _reserve(self, Py_ssize_t more) except -1
    cdef int _frame(self, int kind, int flags, uint32_t sid, const uint8_t* payload,
                    Py_ssize_t length) except -1
    cdef int _u32_frame(self, int kind, uint32_t sid, uint32_t value) except -1
    cdef int _window_update(self, uint32_t sid, int64_t increment) except -1
    cdef _Stream _sending(self, int sid)
    cdef int _close_local(self, _Stream s) except -1
    cdef int _ignore(self, int sid) except -1
    cdef int _fail(self, int code, str reason) except -1
    cdef int _stream_error(self, int sid, int code) except -1
    cdef int _handle(self, int kind, int flags, uint32_t sid, const uint8_t* p,
                     Py_ssize_t n) except -1
    cdef int _idle(self, uint32_t sid) noexcept
    cdef int _data(self, int flags, uint32_t sid, const uint8_t* p, Py_ssize_t n) except -1
    cdef int _headers(self, int flags, uint32_t sid, const uint8_t* p, Py_ssize_t n) except -1
    cdef int _continuation(self, int flags, uint32_t sid, const uint8_t* p,
                           Py_ssize_t n) except -1
    cdef int _block_done(self, const uint8_t* p, Py_ssize_t n, bint bad_priority) except -1
    cdef int _response(self, _Stream s, list headers, bint end) except -1
    cdef int _window(self, uint32_t sid, const uint8_t* p, Py_ssize_t n) except -1
    cdef int _rst(self, uint32_t sid, const uint8_t* p, Py_ssize_t n) except -1
    cdef int _settings(self, int flags, uint32_t sid, const uint8_t* p,
                       Py_ssize_t n) except -1
    cpdef bytes data_to_send(self)
    cpdef goaway(self, int code, int last_stream_id=*)
    cpdef send_headers(self, int sid, list headers, bint end_stream=*)
    cpdef send_data(self, int sid, data, bint end_stream=*)
    cpdef end_stream(self, int sid)
    cpdef reset_stream(self, int sid, int code)
    cpdef Py_ssize_t send_window(self, int sid) except -1
    cpdef acknowledge(self, int sid, Py_ssize_t size)
    cpdef receive(self, data)


cdef class ServerConnection(_Connection):
    pass


cdef class ClientConnection(_Connection):
    cdef object handler_goaway
    cdef public bint going_away  # a GOAWAY came: no new streams
    cdef public int goaway_last  # the lowest last_stream_id of the GOAWAYs received
