# PROXY protocol v1/v2 headers (HAProxy's proxy-protocol.txt); see _proxyproto.pyx.


cdef struct ProxyHeader:
    Py_ssize_t consumed         # header length in bytes, CRLF / TLVs included
    int family                  # AF_INET, AF_INET6, or 0: keep the real peer address
    unsigned char src[16]       # network order; 4 bytes used for AF_INET
    unsigned char dst[16]
    unsigned int src_port
    unsigned int dst_port


# > 0: a whole header of that many bytes is in `h`; 0: a strict prefix, read more;
# -1: not a valid header, `reason` points at a static message.
cdef Py_ssize_t parse_header(const unsigned char* p, Py_ssize_t n, ProxyHeader* h,
                             const char** reason) noexcept nogil

# (consumed, src_ip, src_port, dst_ip, dst_port) for a header parse_header filled in.
cdef tuple header_tuple(const ProxyHeader* h)

cpdef tuple parse(bytes data)

# PROXY headers sent to upstreams (by HTTP and TCP listeners alike): the addresses of a
# transport's socket, and the header for a client and the address it reached.
cdef tuple socket_addresses(object transport)
cdef bytes upstream_header(int version, bytes src, int src_port, bytes dst, int dst_port,
                           bytes tlvs)
cpdef bytes build_v1(object src_ip, object src_port, object dst_ip, object dst_port)
cpdef bytes build_v2(object src_ip, object src_port, object dst_ip, object dst_port,
                     bytes tlvs=*)
cpdef bytes tlv(int kind, bytes value)
