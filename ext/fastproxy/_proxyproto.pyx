"""PROXY protocol headers, v1 (text) and v2 (binary), as in HAProxy's proxy-protocol.txt.

A load balancer in front of us puts one header before the client's bytes to
tell us who the client is; we send one to upstream servers that want to know
the same. parse() runs once per accepted connection on listeners that enable
it, on whatever bytes have arrived so far, so it is one pass in C that says
"whole header", "read more" or "never a header" -- the last as early as the
bytes allow, so that a client who is not a trusted balancer is dropped
without being waited for.

Strict where the spec leaves room (a proxy's peer may read bytes differently):
v1 has exactly one space between fields, no leading zeros or signs in ports,
addresses of the family named (inet_pton), the CRLF within 107 bytes and no
bare CR or LF. v2 PROXY takes TCP over IPv4/IPv6 (addresses), UNSPEC and UNIX
stream (no addresses) with a length that holds the address block and TLVs
that fit, and refuses UDP, since we proxy streams; v2 LOCAL is accepted with
any family the spec defines, its block skipped unread, as the spec requires.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy, memset

cdef extern from "sys/socket.h":
    ctypedef unsigned int socklen_t
    int AF_INET
    int AF_INET6

cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)


class ProxyProtocolError(ValueError):
    """Bytes that are not, and cannot become, a valid PROXY protocol header."""


cdef enum:
    MORE = 0
    BAD = -1
    # Longest v1 line, CRLF included ("PROXY UNKNOWN" + two full IPv6 addresses + ports).
    V1_MAX = 107
    V2_SIG_LEN = 12
    V2_HEAD = 16
    # The most v2 header we buffer after the fixed 16 bytes. The length field is
    # 16 bits and the peer's to choose; addresses and the TLVs a balancer sends
    # (ALPN, authority, unique id, SSL) fit well within this.
    V2_MAX_BODY = 4096
    IP4_TEXT_MAX = 15           # 255.255.255.255
    IP6_TEXT_MAX = 45           # ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255
    ADDR_TEXT = 46              # INET6_ADDRSTRLEN
    TLV_HEAD = 3

cdef const char* V1_SIG = b"PROXY "
# Has a NUL at index 4: compared with memcmp and an explicit length only.
cdef const char* V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"

cdef const char* E_NOT_PROXY = b"PROXY: not a PROXY protocol header"
cdef const char* E1_SIG = b"PROXY v1: bad signature (expected 'PROXY ')"
cdef const char* E1_PROTO = b"PROXY v1: unknown protocol (TCP4, TCP6 or UNKNOWN)"
cdef const char* E1_MISSING = b"PROXY v1: missing fields"
cdef const char* E1_SRC = b"PROXY v1: bad source address"
cdef const char* E1_DST = b"PROXY v1: bad destination address"
cdef const char* E1_SRC_NOT4 = b"PROXY v1: source address is not IPv4 (TCP4)"
cdef const char* E1_DST_NOT4 = b"PROXY v1: destination address is not IPv4 (TCP4)"
cdef const char* E1_SRC_NOT6 = b"PROXY v1: source address is not IPv6 (TCP6)"
cdef const char* E1_DST_NOT6 = b"PROXY v1: destination address is not IPv6 (TCP6)"
cdef const char* E1_SPORT = b"PROXY v1: bad source port"
cdef const char* E1_DPORT = b"PROXY v1: bad destination port"
cdef const char* E1_CRLF = b"PROXY v1: line must end with CRLF (bare CR or LF)"
cdef const char* E1_LONG = b"PROXY v1: no CRLF within 107 bytes"
cdef const char* E2_SIG = b"PROXY v2: bad signature"
cdef const char* E2_VERSION = b"PROXY v2: bad version (must be 2)"
cdef const char* E2_COMMAND = b"PROXY v2: bad command (must be LOCAL or PROXY)"
cdef const char* E2_FAMILY = b"PROXY v2: bad address family or transport"
cdef const char* E2_DGRAM = b"PROXY v2: UDP/datagram transport is not supported"
cdef const char* E2_SHORT = b"PROXY v2: length too small for the address family"
cdef const char* E2_LONG = b"PROXY v2: header longer than 16 + 4096 bytes"
cdef const char* E2_TLV = b"PROXY v2: TLV overflows the header"


cdef inline bint _digit(unsigned char c) noexcept nogil:
    return c >= b'0' and c <= b'9'


cdef inline bint _ip6_char(unsigned char c) noexcept nogil:
    return (_digit(c) or (c >= b'a' and c <= b'f') or (c >= b'A' and c <= b'F')
            or c == b':' or c == b'.')


cdef inline bint _starts(const unsigned char* p, Py_ssize_t n, const char* lit,
                         Py_ssize_t ln) noexcept nogil:
    """Is p[:n] a prefix of (or equal to) lit[:ln]?"""
    return n <= ln and memcmp(p, lit, n) == 0


cdef inline bint _is(const unsigned char* p, Py_ssize_t n, const char* lit,
                     Py_ssize_t ln) noexcept nogil:
    return n == ln and memcmp(p, lit, n) == 0


# -- v1 -----------------------------------------------------------------------------------


cdef Py_ssize_t _v1_addr(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, int af,
                         unsigned char* out, bint src, const char** reason) noexcept nogil:
    """The address field at p[i]: the index after its SP, MORE or BAD.

    A partial IPv4 address is refused as soon as no dotted quad can start with
    it; a partial IPv6 one when it holds a byte or a length no address can.
    The whole field goes through inet_pton once its SP has arrived.
    """
    cdef Py_ssize_t j = i
    cdef Py_ssize_t limit = IP4_TEXT_MAX if af == AF_INET else IP6_TEXT_MAX
    cdef unsigned char c
    cdef int dots = 0, octet = -1      # octet: the value so far, -1 before its first digit
    cdef bint bad
    cdef char text[ADDR_TEXT]
    cdef unsigned char other[16]
    while j < n:
        c = p[j]
        if c == b' ':
            break
        if c == b'\r' or c == b'\n':
            reason[0] = E1_MISSING
            return BAD
        if af == AF_INET and not (_digit(c) or c == b'.'):
            if _ip6_char(c):
                reason[0] = E1_SRC_NOT4 if src else E1_DST_NOT4
            else:
                reason[0] = E1_SRC if src else E1_DST
            return BAD
        if not _ip6_char(c) or j - i >= limit:
            reason[0] = E1_SRC if src else E1_DST
            return BAD
        if af == AF_INET:
            if c == b'.':
                dots += 1
                bad = octet < 0 or dots > 3
                octet = -1
            else:
                bad = octet == 0        # a leading zero
                octet = (0 if octet < 0 else octet * 10) + (c - 48)
                bad = bad or octet > 255
            if bad:
                reason[0] = E1_SRC if src else E1_DST
                return BAD
        j += 1
    if j == n:
        return MORE
    if j == i:
        reason[0] = E1_SRC if src else E1_DST
        return BAD
    memcpy(text, p + i, j - i)
    text[j - i] = 0
    if inet_pton(af, text, out) != 1:
        if af == AF_INET6 and inet_pton(AF_INET, text, other) == 1:
            reason[0] = E1_SRC_NOT6 if src else E1_DST_NOT6
        else:
            reason[0] = E1_SRC if src else E1_DST
        return BAD
    return j + 1


cdef Py_ssize_t _v1_port(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, bint src,
                         unsigned int* out, const char** reason) noexcept nogil:
    """The port at p[i], ended by SP (source) or CR (destination): the index after
    the SP / at the CR, MORE or BAD. Decimal 0..65535, no sign, no leading zero."""
    cdef Py_ssize_t j = i
    cdef unsigned int v = 0
    cdef unsigned char c
    cdef unsigned char end = b' ' if src else b'\r'
    while j < n:
        c = p[j]
        if c == end:
            break
        if not _digit(c):
            if src and (c == b'\r' or c == b'\n'):
                reason[0] = E1_MISSING
            elif not src and c == b'\n':
                reason[0] = E1_CRLF
            else:
                reason[0] = E1_SPORT if src else E1_DPORT
            return BAD
        v = v * 10 + (c - 48)  # c - '0'
        if (j > i and p[i] == b'0') or v > 65535:
            reason[0] = E1_SPORT if src else E1_DPORT
            return BAD
        j += 1
    if j == n:
        return MORE
    if j == i:
        reason[0] = E1_SPORT if src else E1_DPORT
        return BAD
    out[0] = v
    return j + 1 if src else j


cdef Py_ssize_t _v1_line(const unsigned char* p, Py_ssize_t n, ProxyHeader* h,
                         const char** reason) noexcept nogil:
    """v1 over p[:n], n already capped at V1_MAX: the line length, MORE or BAD."""
    cdef Py_ssize_t i = 6, j
    cdef int af
    if not _starts(p, n if n < 6 else 6, V1_SIG, 6):
        reason[0] = E1_SIG
        return BAD
    if n <= 6:
        return MORE
    j = i
    while j < n and p[j] != b' ' and p[j] != b'\r' and p[j] != b'\n':
        j += 1
    if j == n:
        if (_starts(p + i, j - i, b"TCP4", 4) or _starts(p + i, j - i, b"TCP6", 4)
                or _starts(p + i, j - i, b"UNKNOWN", 7)):
            return MORE
        reason[0] = E1_PROTO
        return BAD
    if _is(p + i, j - i, b"UNKNOWN", 7):
        # The rest of the line is the sender's business; only its end matters.
        h.family = 0
        h.src_port = h.dst_port = 0
        while j < n:
            if p[j] == b'\r':
                if j + 1 == n:
                    return MORE
                if p[j + 1] == b'\n':
                    return j + 2
                reason[0] = E1_CRLF
                return BAD
            if p[j] == b'\n':
                reason[0] = E1_CRLF
                return BAD
            j += 1
        return MORE
    if _is(p + i, j - i, b"TCP4", 4):
        af = AF_INET
    elif _is(p + i, j - i, b"TCP6", 4):
        af = AF_INET6
    else:
        reason[0] = E1_PROTO
        return BAD
    if p[j] != b' ':
        reason[0] = E1_MISSING
        return BAD
    h.family = af
    i = _v1_addr(p, n, j + 1, af, h.src, True, reason)
    if i <= 0:
        return i
    i = _v1_addr(p, n, i, af, h.dst, False, reason)
    if i <= 0:
        return i
    i = _v1_port(p, n, i, True, &h.src_port, reason)
    if i <= 0:
        return i
    i = _v1_port(p, n, i, False, &h.dst_port, reason)
    if i <= 0:
        return i
    # p[i] is the CR
    if i + 1 == n:
        return MORE
    if p[i + 1] != b'\n':
        reason[0] = E1_CRLF
        return BAD
    return i + 2


# -- v2 -----------------------------------------------------------------------------------


cdef Py_ssize_t _v2(const unsigned char* p, Py_ssize_t n, ProxyHeader* h,
                    const char** reason) noexcept nogil:
    cdef Py_ssize_t addr_len, length, total, i, vlen
    cdef unsigned char fam
    cdef bint proxy
    if not _starts(p, n if n < V2_SIG_LEN else V2_SIG_LEN, V2_SIG, V2_SIG_LEN):
        reason[0] = E2_SIG
        return BAD
    if n <= V2_SIG_LEN:
        return MORE
    if p[12] >> 4 != 2:
        reason[0] = E2_VERSION
        return BAD
    if p[12] & 0x0F > 1:
        reason[0] = E2_COMMAND
        return BAD
    proxy = p[12] & 0x0F
    if n < 14:
        return MORE
    fam = p[13]
    # Any family the spec defines is fine for LOCAL, whose block the receiver must
    # ignore (2.2: "discard the protocol block including the family"); PROXY takes
    # streams only, and refuses the rest as the spec allows.
    if fam == 0x00:
        addr_len = 0
    elif fam == 0x11 or fam == 0x12:
        addr_len = 12
    elif fam == 0x21 or fam == 0x22:
        addr_len = 36
    elif fam == 0x31 or fam == 0x32:
        addr_len = 216
    else:
        reason[0] = E2_FAMILY
        return BAD
    if proxy and (fam & 0x0F) == 2:
        reason[0] = E2_DGRAM
        return BAD
    if n < V2_HEAD:
        return MORE
    length = (<Py_ssize_t>p[14] << 8) | p[15]
    if length > V2_MAX_BODY:
        reason[0] = E2_LONG
        return BAD
    if proxy and length < addr_len:
        reason[0] = E2_SHORT
        return BAD
    total = V2_HEAD + length
    if n < total:
        return MORE
    # TLVs are skipped, but each must lie inside the declared length. Only where
    # the address block has a known size: after LOCAL's ignored block, or an
    # UNSPEC block that may hold addresses of some other protocol, there is no
    # telling where TLVs would start.
    if proxy and fam != 0x00:
        i = V2_HEAD + addr_len
        while i < total:
            if total - i < TLV_HEAD:
                reason[0] = E2_TLV
                return BAD
            vlen = (<Py_ssize_t>p[i + 1] << 8) | p[i + 2]
            if vlen > total - i - TLV_HEAD:
                reason[0] = E2_TLV
                return BAD
            i += TLV_HEAD + vlen
    h.family = 0
    h.src_port = h.dst_port = 0
    if proxy and fam == 0x11:
        h.family = AF_INET
        memcpy(h.src, p + 16, 4)
        memcpy(h.dst, p + 20, 4)
        h.src_port = (<unsigned int>p[24] << 8) | p[25]
        h.dst_port = (<unsigned int>p[26] << 8) | p[27]
    elif proxy and fam == 0x21:
        h.family = AF_INET6
        memcpy(h.src, p + 16, 16)
        memcpy(h.dst, p + 32, 16)
        h.src_port = (<unsigned int>p[48] << 8) | p[49]
        h.dst_port = (<unsigned int>p[50] << 8) | p[51]
    return total


# -- parsing ------------------------------------------------------------------------------


cdef Py_ssize_t parse_header(const unsigned char* p, Py_ssize_t n, ProxyHeader* h,
                             const char** reason) noexcept nogil:
    cdef Py_ssize_t r
    h.consumed = 0
    if n <= 0:
        return MORE
    if p[0] == b'\r':
        r = _v2(p, n, h, reason)
    elif p[0] == b'P':
        # Bytes past V1_MAX can never belong to the line: running out of the first
        # V1_MAX without a CRLF is then final.
        r = _v1_line(p, n if n < V1_MAX else V1_MAX, h, reason)
        if r == MORE and n >= V1_MAX:
            reason[0] = E1_LONG
            r = BAD
    else:
        reason[0] = E_NOT_PROXY
        r = BAD
    if r > 0:
        h.consumed = r
    return r


cdef inline bytes _ntop(int af, const unsigned char* addr):
    cdef char text[ADDR_TEXT]
    inet_ntop(af, addr, text, ADDR_TEXT)
    return <bytes>text


cdef tuple header_tuple(const ProxyHeader* h):
    if h.family == 0:
        return (h.consumed, None, 0, None, 0)
    return (h.consumed, _ntop(h.family, h.src), h.src_port, _ntop(h.family, h.dst), h.dst_port)


cpdef tuple parse(bytes data):
    """Parse a PROXY protocol header (v1 or v2) at the start of `data`.

    Returns None while `data` is a strict prefix of a header that may still
    turn out valid (read more and call again with all bytes so far), else
    (consumed, src_ip, src_port, dst_ip, dst_port): the header is data[:consumed],
    the addresses are ASCII bytes in the form getpeername() gives (dotted quad,
    inet_ntop for IPv6). For v1 UNKNOWN, and v2 LOCAL, UNSPEC or UNIX, both
    addresses are None and both ports 0: keep the connection's own addresses.

    Raises ProxyProtocolError as soon as the bytes so far cannot begin a valid
    header (a partial IPv6 address is only checked for its bytes and length
    until the space after it arrives; the rest is exact). A v2 header longer than 16 + 4096 bytes is refused once its length
    field has arrived: the length is attacker-controlled and must not make us
    buffer 64 KiB per connection. A v1 line must end (CRLF) within 107 bytes.
    """
    cdef ProxyHeader h
    cdef const char* reason = NULL
    if data is None:
        raise TypeError("parse() needs bytes, not None")
    cdef Py_ssize_t r = parse_header(<const unsigned char*>PyBytes_AS_STRING(data),
                                     PyBytes_GET_SIZE(data), &h, &reason)
    if r > 0:
        return header_tuple(&h)
    if r == MORE:
        return None
    raise ProxyProtocolError((<bytes>reason).decode("ascii"))


# -- building -----------------------------------------------------------------------------


cdef int _address(object ip, unsigned char* out) except -1:
    """inet_pton of a str/bytes address into `out` (16 bytes): AF_INET or AF_INET6.
    An IPv6 zone ("fe80::1%eth0", as getpeername gives it) is dropped: the header has
    no room for one."""
    cdef bytes text
    cdef const char* s
    cdef const char* zone
    cdef Py_ssize_t n
    if isinstance(ip, str):
        try:
            text = (<str>ip).encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"PROXY: not an IP address: {ip!r}") from None
    elif isinstance(ip, bytes):
        text = <bytes>ip
    else:
        raise TypeError(f"PROXY: an IP address is str or bytes, not {type(ip).__name__}")
    s = PyBytes_AS_STRING(text)
    n = PyBytes_GET_SIZE(text)
    zone = <const char*>memchr(s, b'%', n)
    if zone != NULL:
        text = text[:zone - s]
        s = PyBytes_AS_STRING(text)
        n = PyBytes_GET_SIZE(text)
    if n <= IP6_TEXT_MAX and memchr(s, 0, n) == NULL:
        if zone == NULL and inet_pton(AF_INET, s, out) == 1:
            return AF_INET
        if inet_pton(AF_INET6, s, out) == 1:
            return AF_INET6
    raise ValueError(f"PROXY: not an IP address: {ip!r}")


cdef unsigned int _port(object port) except? 0:
    if type(port) is not int or not 0 <= port <= 65535:
        raise ValueError(f"PROXY: a port is an int in 0..65535, not {port!r}")
    return <unsigned int>port


cdef inline void _v4_mapped(unsigned char* addr) noexcept nogil:
    """IPv4 in addr[:4] -> ::ffff:a.b.c.d in addr[:16]."""
    cdef unsigned char v4[4]
    memcpy(v4, addr, 4)
    memset(addr, 0, 10)
    addr[10] = 0xFF
    addr[11] = 0xFF
    memcpy(addr + 12, v4, 4)


cdef int _endpoints(object src_ip, object src_port, object dst_ip, object dst_port,
                    ProxyHeader* h) except -1:
    """Fill `h` from the builder arguments: family 0 when src_ip is None.

    When one address is IPv4 and the other IPv6 (a client that came over IPv4 to a
    proxy that reaches its upstream over IPv6, say), the IPv4 one is sent as
    ::ffff:a.b.c.d, so that the header names one family as both versions require.
    """
    cdef int src_af, dst_af
    h.family = 0
    h.src_port = h.dst_port = 0
    if src_ip is None:
        return 0
    if dst_ip is None:
        raise ValueError("PROXY: dst_ip is required when src_ip is given")
    src_af = _address(src_ip, h.src)
    dst_af = _address(dst_ip, h.dst)
    h.src_port = _port(src_port)
    h.dst_port = _port(dst_port)
    if src_af != dst_af:
        if src_af == AF_INET:
            _v4_mapped(h.src)
        else:
            _v4_mapped(h.dst)
        src_af = AF_INET6
    h.family = src_af
    return 0


cdef tuple socket_addresses(object transport):
    """(peer port, local address as ASCII bytes, local port) of a transport's TCP
    socket; the address is None (ports 0) for what has none (a Unix socket, no
    transport)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    here = transport.get_extra_info("sockname") if transport is not None else None
    # (host, port, ...) tuples for TCP; anything else (a Unix socket) has no address.
    peer_ok = isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int)
    here_ok = isinstance(here, tuple) and len(here) >= 2 and isinstance(here[0], str) \
        and isinstance(here[1], int)
    return (peer[1] if peer_ok else 0,
            (<str>here[0]).encode("ascii", "replace") if here_ok else None,
            here[1] if here_ok else 0)


cdef bytes upstream_header(int version, bytes src, int src_port, bytes dst, int dst_port,
                           bytes tlvs):
    """The PROXY header (`version` 1 or 2) that starts a connection to an upstream
    for client `src`:`src_port` that reached `dst`:`dst_port` (v2: with `tlvs`,
    encoded, or None). When either address is None, or the header cannot carry them
    (not an address, IPv4 to IPv6), v1 UNKNOWN / v2 LOCAL: the server keeps the
    connection's own addresses."""
    try:
        if src is not None and dst is not None:
            if version == 1:
                return build_v1(src, src_port, dst, dst_port)
            return build_v2(src, src_port, dst, dst_port, tlvs)
    except ValueError:
        pass
    return build_v1(None, 0, None, 0) if version == 1 else build_v2(None, 0, None, 0)


cpdef bytes build_v1(object src_ip, object src_port, object dst_ip, object dst_port):
    """The v1 line for a connection from src to dst: "PROXY TCP4|TCP6 src dst sport
    dport\\r\\n" with the addresses in canonical form, or b"PROXY UNKNOWN\\r\\n" when
    src_ip is None. Addresses are str or bytes; raises ValueError on a bad one."""
    cdef ProxyHeader h
    _endpoints(src_ip, src_port, dst_ip, dst_port, &h)
    if h.family == 0:
        return b"PROXY UNKNOWN\r\n"
    return b"PROXY %s %s %s %d %d\r\n" % (
        b"TCP4" if h.family == AF_INET else b"TCP6",
        _ntop(h.family, h.src), _ntop(h.family, h.dst), h.src_port, h.dst_port)


cpdef bytes build_v2(object src_ip, object src_port, object dst_ip, object dst_port,
                     bytes tlvs=None):
    """The v2 header for a connection from src to dst: PROXY command, TCP over
    IPv4 or IPv6, then `tlvs` (already encoded, see tlv(); none by default); a
    LOCAL command with family UNSPEC when src_ip is None (no TLVs).
    Addresses are str or bytes; raises ValueError on a bad one."""
    cdef ProxyHeader h
    cdef unsigned char out[V2_HEAD + 36]
    cdef Py_ssize_t alen = 0, size, extra = 0
    _endpoints(src_ip, src_port, dst_ip, dst_port, &h)
    if tlvs is not None and h.family != 0:
        extra = PyBytes_GET_SIZE(tlvs)
        if 36 + extra > V2_MAX_BODY:
            raise ValueError(f"PROXY v2: {extra} bytes of TLVs do not fit")
    memcpy(out, V2_SIG, V2_SIG_LEN)
    if h.family == 0:
        out[12] = 0x20          # version 2, LOCAL
        out[13] = 0x00          # AF_UNSPEC, UNSPEC
    else:
        alen = 4 if h.family == AF_INET else 16
        out[12] = 0x21          # version 2, PROXY
        out[13] = 0x11 if h.family == AF_INET else 0x21     # TCP over IPv4 / IPv6
        memcpy(out + V2_HEAD, h.src, alen)
        memcpy(out + V2_HEAD + alen, h.dst, alen)
        out[V2_HEAD + 2 * alen] = h.src_port >> 8
        out[V2_HEAD + 2 * alen + 1] = h.src_port & 0xFF
        out[V2_HEAD + 2 * alen + 2] = h.dst_port >> 8
        out[V2_HEAD + 2 * alen + 3] = h.dst_port & 0xFF
        alen = 2 * alen + 4
    out[14] = (alen + extra) >> 8
    out[15] = (alen + extra) & 0xFF
    size = V2_HEAD + alen
    if extra:
        return PyBytes_FromStringAndSize(<const char*>out, size) + tlvs
    return PyBytes_FromStringAndSize(<const char*>out, size)


# TLV types of v2 headers (proxy-protocol.txt 2.2), the ones we send.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02


cpdef bytes tlv(int kind, bytes value):
    """One TLV of a v2 header: type (0..255), 16-bit length, value."""
    if not 0 <= kind <= 255 or value is None or PyBytes_GET_SIZE(value) > 0xFFFF:
        raise ValueError("PROXY v2: a TLV has a type 0..255 and at most 65535 bytes")
    return bytes((kind, PyBytes_GET_SIZE(value) >> 8, PyBytes_GET_SIZE(value) & 0xFF)) + value
