"""URL pieces the router compares: paths, hosts, query arguments, client addresses.

Everything here runs per request, so each function walks its input once in C
and, when the input is already in normal form, hands back the very same bytes
object: the common request pays for a scan, not for an allocation.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

from fastproxy.ascii cimport lower

import ipaddress

cdef extern from "sys/socket.h":
    int AF_INET
    int AF_INET6

cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char* src, void* dst)


cdef const char* HEX = b"0123456789ABCDEF"

cdef enum:
    # normalize_path works on the stack up to this output size (3 bytes per input byte).
    PATH_STACK = 2048
    # Longest IPv6 text inet_pton can accept ("ffff:...:255.255.255.255" is 45).
    IP_TEXT_MAX = 63


cdef inline int _hexval(unsigned char c) noexcept nogil:
    if c >= b'0' and c <= b'9':
        return c - 48
    if c >= b'A' and c <= b'F':
        return c - 55
    if c >= b'a' and c <= b'f':
        return c - 87
    return -1


cdef inline bint _unreserved(unsigned char c) noexcept nogil:
    """RFC 3986 §2.3: the characters whose escapes mean the same as themselves."""
    return ((c >= b'a' and c <= b'z') or (c >= b'A' and c <= b'Z') or (c >= b'0' and c <= b'9')
            or c == b'-' or c == b'.' or c == b'_' or c == b'~')


cdef inline bint _is_dot_segment(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    return (n == 1 and s[0] == b'.') or (n == 2 and s[0] == b'.' and s[1] == b'.')


# -- paths ------------------------------------------------------------------------------


cdef bint _path_is_normal(const unsigned char* p, Py_ssize_t n, bint merge) noexcept nogil:
    """Would normalization give back `p` unchanged? (False also for invalid paths.)

    Exact, not conservative: normalize_path promises the same object whenever
    the result equals the input, and the tests hold it to that.
    """
    cdef Py_ssize_t i = 1, seg = 1
    cdef unsigned char c
    cdef int hi, lo
    if n == 0 or p[0] != b'/':
        return False
    while i < n:
        c = p[i]
        if c == b'/':
            if merge and p[i - 1] == b'/':
                return False
            if _is_dot_segment(p + seg, i - seg):
                return False
            seg = i + 1
        elif c == b'%':
            if i + 2 >= n:
                return False
            hi = _hexval(p[i + 1])
            lo = _hexval(p[i + 2])
            # Lower-case hex digits (>= 'a') are rewritten upper-case.
            if hi < 0 or lo < 0 or p[i + 1] >= b'a' or p[i + 2] >= b'a':
                return False
            if _unreserved(<unsigned char>(hi * 16 + lo)):
                return False
            i += 2
        elif not path_char(c):
            return False
        i += 1
    return not _is_dot_segment(p + seg, n - seg)


cdef Py_ssize_t _decode_path(const unsigned char* p, Py_ssize_t n, bint merge,
                             unsigned char* out) noexcept nogil:
    """Steps 1-3 of the spec from `p` into `out` (room for 3n): the output length, -1 if invalid."""
    cdef Py_ssize_t i = 0, j = 0
    cdef unsigned char c
    cdef int hi, lo
    while i < n:
        c = p[i]
        if c == b'%':
            if i + 2 >= n:
                return -1
            hi = _hexval(p[i + 1])
            lo = _hexval(p[i + 2])
            if hi < 0 or lo < 0:
                return -1
            c = <unsigned char>(hi * 16 + lo)
            if _unreserved(c):
                out[j] = c
                j += 1
            else:
                out[j] = b'%'
                out[j + 1] = HEX[hi]
                out[j + 2] = HEX[lo]
                j += 3
            i += 3
            continue
        if not path_char(c):
            # Bytes >= 0x80 and those RFC 3986 keeps out of paths ("\\", '"', "<",
            # "{", ...): as data, never something an upstream may read as "/".
            out[j] = b'%'
            out[j + 1] = HEX[c >> 4]
            out[j + 2] = HEX[c & 15]
            j += 3
        elif not (c == b'/' and merge and j > 0 and out[j - 1] == b'/'):
            # (An escaped "/" stays "%2F" above, so out[j - 1] is a real separator.)
            out[j] = c
            j += 1
        i += 1
    return j


cdef Py_ssize_t _remove_dot_segments(unsigned char* b, Py_ssize_t m) noexcept nogil:
    """RFC 3986 §5.2.4 in place on `b` (which starts with "/"): the new length, -1 if a
    ".." would climb above the root.

    The output is a run of "/segment" pieces, never longer than the input read
    so far, so it can be written over the input. Popping a segment walks back
    over bytes that are then gone, so the whole is O(m).
    """
    cdef Py_ssize_t r = 0, w = 0, e, k
    while r < m:
        e = r + 1
        while e < m and b[e] != b'/':
            e += 1
        k = e - r - 1
        if k == 1 and b[r + 1] == b'.':
            if e == m:  # a final "." leaves the directory: "/a/." -> "/a/"
                b[w] = b'/'
                w += 1
        elif k == 2 and b[r + 1] == b'.' and b[r + 2] == b'.':
            if w == 0:
                return -1
            w -= 1
            while b[w] != b'/':
                w -= 1
            if e == m:  # "/a/b/.." -> "/a/"
                b[w] = b'/'
                w += 1
        else:
            memmove(b + w, b + r, e - r)
            w += e - r
        r = e
    return w


cpdef bytes escape_path(bytes path, bint segment=False):
    """`path` with every byte a path cannot hold as is percent-encoded; with
    `segment`, "/" and "%" too (a value that must stay inside one segment)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(path)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(path), j = 0
    cdef unsigned char c
    cdef bytes out
    cdef unsigned char* q
    for i in range(n):
        c = p[i]
        if not path_char(c) or (segment and (c == b'/' or c == b'%')):
            break
    else:
        return path
    out = PyBytes_FromStringAndSize(NULL, 3 * n)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(n):
        c = p[i]
        if not path_char(c) or (segment and (c == b'/' or c == b'%')):
            q[j] = b'%'
            q[j + 1] = HEX[c >> 4]
            q[j + 2] = HEX[c & 15]
            j += 3
        else:
            q[j] = c
            j += 1
    return out[:j]


cpdef bint has_dot_segment(bytes path):
    """Does `path` hold a "." or ".." segment, also spelled with %2E?"""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(path)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(path), i = 0, start, dots
    while i <= n:
        start = i
        dots = 0
        while i < n and p[i] != b'/':
            if p[i] == b'.':
                dots += 1
                i += 1
            elif (p[i] == b'%' and i + 2 < n and p[i + 1] == b'2'
                    and (p[i + 2] == b'E' or p[i + 2] == b'e')):
                dots += 1
                i += 3
            else:
                dots = 3  # not only dots
                i += 1
        if 0 < dots <= 2 and i > start:
            return True
        i += 1
    return False


cpdef bytes normalize_path(bytes path, bint merge_slashes=True):
    """The normalized form of a request path (docs/routing-spec.md), or None if invalid.

    The path is what the route trie and prefixes compare against and what is
    forwarded, so every spelling of one resource must come out as one byte
    string, and no spelling may reach above the root.
    """
    cdef Py_ssize_t n, m
    cdef const unsigned char* p
    cdef unsigned char stack[PATH_STACK]
    cdef unsigned char* buf = stack
    if path is None:
        raise TypeError("normalize_path() needs bytes, not None")
    n = PyBytes_GET_SIZE(path)
    p = <const unsigned char*>PyBytes_AS_STRING(path)
    if n == 0 or p[0] != b'/':
        return None
    if _path_is_normal(p, n, merge_slashes):
        return path
    if n > PATH_STACK // 3:
        buf = <unsigned char*>PyMem_Malloc(3 * n)
        if buf == NULL:
            raise MemoryError()
    try:
        m = _decode_path(p, n, merge_slashes, buf)
        if m < 0:
            return None
        m = _remove_dot_segments(buf, m)
        if m < 0:
            return None
        return PyBytes_FromStringAndSize(<char*>buf, m)
    finally:
        if buf != stack:
            PyMem_Free(buf)


# -- hosts ------------------------------------------------------------------------------


cpdef bytes normalize_host(bytes host):
    """Lower-case host name without port or trailing dot (b"" when absent).

    An IPv6 literal keeps its brackets (everything after "]" is the port);
    without a closing "]" the whole value is only lower-cased.
    """
    cdef Py_ssize_t n, end, i
    cdef const char* p
    cdef const char* close
    cdef bint upper = False
    cdef bytes out
    cdef char* q
    if host is None:
        return b""
    n = PyBytes_GET_SIZE(host)
    if n == 0:
        return host
    p = PyBytes_AS_STRING(host)
    if p[0] == b'[':
        close = <const char*>memchr(p, b']', n)
        end = close - p + 1 if close != NULL else n
    else:
        end = n
        i = n - 1
        while i >= 0 and p[i] != b':':
            i -= 1
        if i >= 0:
            end = i
        while end > 0 and p[end - 1] == b'.':
            end -= 1
    for i in range(end):
        if lower(p[i]) != p[i]:
            upper = True
            break
    if end == n and not upper:
        return host
    out = PyBytes_FromStringAndSize(NULL, end)
    q = PyBytes_AS_STRING(out)
    for i in range(end):
        q[i] = lower(p[i])
    return out


# -- query arguments --------------------------------------------------------------------
# Arguments are compared decoded (percent escapes, "+" as space) so that a
# rule for "utm source" catches "utm+source" and "utm%20source" alike; an escape
# that is not "%" plus two hex digits stands for itself, as in browsers.


cdef inline int _query_byte(const unsigned char* s, Py_ssize_t n, Py_ssize_t* i) noexcept nogil:
    """The decoded byte at s[*i]; moves *i past its encoding."""
    cdef unsigned char c = s[i[0]]
    cdef int hi, lo
    if c == b'%' and i[0] + 2 < n:
        hi = _hexval(s[i[0] + 1])
        lo = _hexval(s[i[0] + 2])
        if hi >= 0 and lo >= 0:
            i[0] += 3
            return hi * 16 + lo
    i[0] += 1
    return 0x20 if c == b'+' else c


cdef bint _decoded_equals(const unsigned char* s, Py_ssize_t n, bytes want) noexcept:
    """Does `s` decode to `want`? (Compared on the fly: no decoded copy per argument.)"""
    cdef const unsigned char* t = <const unsigned char*>PyBytes_AS_STRING(want)
    cdef Py_ssize_t tn = PyBytes_GET_SIZE(want), i = 0, k = 0
    while i < n:
        if k == tn or _query_byte(s, n, &i) != t[k]:
            return False
        k += 1
    return k == tn


cdef bytes _decode(const unsigned char* s, Py_ssize_t n):
    """`s` decoded: counted first, so the result is allocated once at its size."""
    cdef Py_ssize_t i = 0, m = 0
    cdef bytes out
    cdef unsigned char* q
    if memchr(s, b'%', n) == NULL and memchr(s, b'+', n) == NULL:
        return PyBytes_FromStringAndSize(<const char*>s, n)
    while i < n:
        _query_byte(s, n, &i)
        m += 1
    out = PyBytes_FromStringAndSize(NULL, m)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    i = 0
    m = 0
    while i < n:
        q[m] = <unsigned char>_query_byte(s, n, &i)
        m += 1
    return out


cdef inline Py_ssize_t _piece_end(const unsigned char* s, Py_ssize_t n, Py_ssize_t start) noexcept nogil:
    cdef const void* amp = memchr(s + start, b'&', n - start)
    return <const unsigned char*>amp - s if amp != NULL else n


cdef inline Py_ssize_t _name_end(const unsigned char* s, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    cdef const void* eq = memchr(s + start, b'=', end - start)
    return <const unsigned char*>eq - s if eq != NULL else end


# -- cookies -----------------------------------------------------------------------------


cpdef bytes cookie_get(bytes header, bytes name):
    """The value of cookie `name` in a Cookie header ("a=1; b=2"), or None."""
    if header is None or name is None:
        raise TypeError("cookie_get() needs bytes, not None")
    cdef Py_ssize_t start = 0, end, eq, n = len(header)
    while start < n:
        end = header.find(b";", start)
        if end < 0:
            end = n
        eq = header.find(b"=", start, end)
        if eq > 0 and header[start:eq].strip() == name:
            return header[eq + 1:end].strip()
        start = end + 1
    return None



cpdef object query_get(bytes query, bytes name):
    """The decoded value of the first argument named `name` (decoded), b"" for a bare
    "name" or "name=", None when there is none."""
    cdef const unsigned char* s
    cdef Py_ssize_t n, start = 0, end, eq
    if query is None or name is None:
        raise TypeError("query_get() needs bytes, not None")
    s = <const unsigned char*>PyBytes_AS_STRING(query)
    n = PyBytes_GET_SIZE(query)
    while start < n:
        end = _piece_end(s, n, start)
        if end > start:
            eq = _name_end(s, start, end)
            if _decoded_equals(s + start, eq - start, name):
                return _decode(s + eq + 1, end - eq - 1) if eq < end else b""
        start = end + 1
    return None


cdef Py_ssize_t _encoded_size(bytes b) noexcept:
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t i, m = 0
    for i in range(PyBytes_GET_SIZE(b)):
        m += 1 if _unreserved(s[i]) else 3
    return m


cdef Py_ssize_t _encode(bytes b, unsigned char* out) noexcept:
    """Percent-encode `b` as a query component (all but unreserved) into `out`."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t i, j = 0
    cdef unsigned char c
    for i in range(PyBytes_GET_SIZE(b)):
        c = s[i]
        if _unreserved(c):
            out[j] = c
            j += 1
        else:
            out[j] = b'%'
            out[j + 1] = HEX[c >> 4]
            out[j + 2] = HEX[c & 15]
            j += 3
    return j


cdef bint _edited_name(const unsigned char* s, Py_ssize_t n, tuple remove, tuple set_pairs):
    """Is the argument name `s` (raw) one that query_edit drops? (Items already type-checked.)"""
    for name in remove:
        if _decoded_equals(s, n, <bytes>name):
            return True
    for pair in set_pairs:
        if _decoded_equals(s, n, <bytes>(<tuple>pair)[0]):
            return True
    return False


cdef bint _drops_any(const unsigned char* s, Py_ssize_t n, tuple remove, tuple set_pairs):
    cdef Py_ssize_t start = 0, end
    while start < n:
        end = _piece_end(s, n, start)
        if end > start and _edited_name(s + start, _name_end(s, start, end) - start,
                                        remove, set_pairs):
            return True
        start = end + 1
    return False


cpdef bytes query_edit(bytes query, tuple remove, tuple set_pairs):
    """`query` without the arguments named in `remove` or `set_pairs`, then `name=value`
    for each pair of `set_pairs` (both encoded); b"" when nothing is left.

    Kept arguments keep their bytes and order, joined by single "&" (empty
    pieces are not arguments). When no argument goes and none is set, `query`
    itself comes back untouched, "a&&b" included: a rule that does not apply
    must not change the bytes (signed URLs depend on them).
    """
    cdef const unsigned char* s
    cdef unsigned char* out
    cdef Py_ssize_t n, cap, start = 0, end, w = 0
    cdef object item
    cdef tuple pair
    if query is None or remove is None or set_pairs is None:
        raise TypeError("query_edit() needs bytes and two tuples, not None")
    for item in remove:
        if type(item) is not bytes:
            raise TypeError(f"query_edit(): names to remove must be bytes, not {type(item).__name__}")
    n = PyBytes_GET_SIZE(query)
    s = <const unsigned char*>PyBytes_AS_STRING(query)
    if not set_pairs and not _drops_any(s, n, remove, set_pairs):
        return query
    cap = n
    for item in set_pairs:
        if (type(item) is not tuple or len(<tuple>item) != 2 or type((<tuple>item)[0]) is not bytes
                or type((<tuple>item)[1]) is not bytes):
            raise TypeError("query_edit(): set_pairs must hold (bytes, bytes) pairs")
        pair = <tuple>item
        cap += 2 + _encoded_size(<bytes>pair[0]) + _encoded_size(<bytes>pair[1])
    out = <unsigned char*>PyMem_Malloc(cap + 1)
    if out == NULL:
        raise MemoryError()
    try:
        while start < n:
            end = _piece_end(s, n, start)
            if end > start and not _edited_name(s + start, _name_end(s, start, end) - start,
                                                remove, set_pairs):
                if w:
                    out[w] = b'&'
                    w += 1
                memcpy(out + w, s + start, end - start)
                w += end - start
            start = end + 1
        for item in set_pairs:
            pair = <tuple>item
            if w:
                out[w] = b'&'
                w += 1
            w += _encode(<bytes>pair[0], out + w)
            out[w] = b'='
            w += 1
            w += _encode(<bytes>pair[1], out + w)
        if w == n and memcmp(out, s, n) == 0:
            return query  # e.g. setting v=2 on "v=2"
        return PyBytes_FromStringAndSize(<char*>out, w)
    finally:
        PyMem_Free(out)


# -- client addresses -------------------------------------------------------------------


cdef int _parse_ip(const char* text, Py_ssize_t n, unsigned char* addr) noexcept nogil:
    """Client address text into 16 bytes (IPv4 as ::ffff:a.b.c.d): 4 or 6 for the
    family of the text, 0 if unparsable.

    An IPv6 zone ("fe80::1%eth0", as getnameinfo reports link-local peers) is
    dropped: it names an interface, not part of the address a rule matches.
    """
    cdef char buf[IP_TEXT_MAX + 1]
    cdef const char* zone
    if n <= 0 or memchr(text, 0, n) != NULL:
        return False  # inet_pton reads a C string: a NUL would end it early
    if memchr(text, b':', n) == NULL:
        if n > IP_TEXT_MAX:
            return False
        memcpy(buf, text, n)
        buf[n] = 0
        memset(addr, 0, 10)
        addr[10] = 0xFF
        addr[11] = 0xFF
        return 4 if inet_pton(AF_INET, buf, addr + 12) == 1 else 0
    zone = <const char*>memchr(text, b'%', n)
    if zone != NULL:
        # One non-empty zone, as ipaddress accepts it.
        if zone - text == n - 1 or memchr(zone + 1, b'%', n - (zone - text) - 1) != NULL:
            return False
        n = zone - text
    if n > IP_TEXT_MAX:
        return False
    memcpy(buf, text, n)
    buf[n] = 0
    return 6 if inet_pton(AF_INET6, buf, addr) == 1 else 0


cdef inline bint _in_network(const unsigned char* addr, const IpNetwork* net) noexcept nogil:
    cdef int full = net.prefix >> 3, rest = net.prefix & 7
    if memcmp(addr, net.addr, full) != 0:
        return False
    return rest == 0 or ((addr[full] ^ net.addr[full]) & (0xFF << (8 - rest)) & 0xFF) == 0


@cython.final
cdef class IpSet:
    """CIDR networks that client addresses are tested against (`client_ip` rules).

    IPv4 is kept in its IPv4-mapped IPv6 form, so one 16-byte comparison serves
    both families and a dual-stack socket's "::ffff:10.1.2.3" peer matches
    "10.0.0.0/8". An IPv4 client matches IPv4 networks only: "::/0" covers the
    mapped range, but not a peer of an IPv4 socket.
    """

    def __init__(self, networks):
        cdef list nets = list(networks)
        cdef Py_ssize_t i, n = len(nets)
        cdef IpNetwork* arr
        cdef bytes packed
        for net in nets:
            if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                raise TypeError(f"IpSet needs ipaddress networks, not {type(net).__name__}")
        arr = <IpNetwork*>PyMem_Malloc(max(n, 1) * sizeof(IpNetwork))
        if arr == NULL:
            raise MemoryError()
        for i in range(n):
            net = nets[i]
            packed = net.network_address.packed
            if net.version == 4:
                memset(arr[i].addr, 0, 10)
                arr[i].addr[10] = 0xFF
                arr[i].addr[11] = 0xFF
                memcpy(arr[i].addr + 12, PyBytes_AS_STRING(packed), 4)
                arr[i].prefix = net.prefixlen + 96
                arr[i].v4 = True
            else:
                arr[i].v4 = False
                memcpy(arr[i].addr, PyBytes_AS_STRING(packed), 16)
                arr[i].prefix = net.prefixlen
        PyMem_Free(self._nets)
        self._nets = arr
        self._n = n

    def __dealloc__(self):
        PyMem_Free(self._nets)

    cpdef bint contains(self, bytes ip):
        """Is the client address text `ip` in one of the networks? False if unparsable."""
        cdef unsigned char addr[16]
        cdef Py_ssize_t i
        cdef int family
        if ip is None:
            raise TypeError("IpSet.contains() needs bytes, not None")
        family = _parse_ip(PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip), addr)
        if family == 0:
            return False
        for i in range(self._n):
            if family == 4 and not self._nets[i].v4:
                continue
            if _in_network(addr, &self._nets[i]):
                return True
        return False
