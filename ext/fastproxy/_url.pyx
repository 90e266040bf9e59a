"""URL pieces the router compares: paths, hosts, query arguments, client addresses.

Everything here runs per request, so each function walks its input once in C
and, when the input is already in normal form, hands back the very same bytes
object: the common request pays for a scan, not for an allocation.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t, uint64_t
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


cpdef bint is_ip(bytes text):
    """Is `text` an IPv4 or IPv6 address (what a client address may be)?"""
    cdef unsigned char addr[16]
    return text is not None and _parse_ip(PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text),
                                          addr) != 0


cpdef bytes real_client(bytes peer, bytes header, int kind, IpSet trusted):
    """The client behind trusted proxies: `header` is the value of the configured
    header (kind 0: X-Forwarded-For, 1: X-Real-IP, 2: Forwarded), `peer` the
    (trusted) address the request came from. For a list, the last address that
    is not itself trusted; an entry that is not an address stops the walk (what
    is left of it cannot be believed). No usable address: `peer`."""
    cdef list items
    cdef bytes found = peer, item
    cdef Py_ssize_t i
    if header is None:
        return peer
    if kind == 1:
        item = header.strip()
        return item if is_ip(item) else peer
    items = header.split(b",")
    for i in range(len(items) - 1, -1, -1):
        item = (<bytes>items[i]).strip()
        if kind == 2:
            item = _forwarded_for(item)
        if item is None or not is_ip(item):
            break
        found = item
        if not trusted.contains(item):
            break
    return found


cdef bytes _forwarded_for(bytes element):
    """The address of the for= parameter of one Forwarded element (RFC 7239), or None."""
    cdef bytes value = None
    for pair in element.split(b";"):
        name, _, v = pair.strip().partition(b"=")
        if name.lower() == b"for":
            value = v.strip()
    if value is None:
        return None
    if value.startswith(b'"') and value.endswith(b'"') and len(value) >= 2:
        value = value[1:len(value) - 1]
    if value.startswith(b"["):
        end = value.find(b"]")
        return value[1:end] if end > 0 else None
    if value.count(b":") == 1:  # "192.0.2.60:8080"
        return value.partition(b":")[0]
    return value


def _merged(ranges):
    """Sorted, non-overlapping (lo, hi) from any (lo, hi) pairs (adjacent ones joined)."""
    out = []
    last = None  # (no negative indexes here: wraparound is off in ext/)
    for lo, hi in sorted(ranges):
        if last is not None and lo <= last[1] + 1:
            if hi > last[1]:
                last[1] = hi
        else:
            last = [lo, hi]
            out.append(last)
    return out


cdef class IpSet:
    """CIDR networks that client addresses are tested against (`client_ip` rules,
    access lists).

    The networks become merged, sorted ranges, one list per family, and a lookup
    is a bisection: O(log n) for any number of networks. IPv4 networks are
    matched by IPv4 clients and by the IPv4-mapped form a dual-stack socket
    gives ("::ffff:10.1.2.3" is in "10.0.0.0/8"); IPv6 networks by IPv6 clients
    (so "::/0" covers the mapped range, but not a peer of an IPv4 socket).
    """

    def __init__(self, networks):
        cdef list nets = list(networks)
        cdef Py_ssize_t i
        v4, v6 = [], []
        for net in nets:
            if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                raise TypeError(f"IpSet needs ipaddress networks, not {type(net).__name__}")
            lo = int(net.network_address)
            hi = int(net.broadcast_address)
            (v4 if net.version == 4 else v6).append((lo, hi))
        v4 = _merged(v4)
        v6 = _merged(v6)
        self._free()
        self._v4_lo = <uint32_t*>PyMem_Malloc(max(len(v4), 1) * sizeof(uint32_t))
        self._v4_hi = <uint32_t*>PyMem_Malloc(max(len(v4), 1) * sizeof(uint32_t))
        self._v6_lo = <uint64_t*>PyMem_Malloc(max(len(v6), 1) * 2 * sizeof(uint64_t))
        self._v6_hi = <uint64_t*>PyMem_Malloc(max(len(v6), 1) * 2 * sizeof(uint64_t))
        if (self._v4_lo == NULL or self._v4_hi == NULL or self._v6_lo == NULL
                or self._v6_hi == NULL):
            raise MemoryError()
        for i in range(len(v4)):
            self._v4_lo[i] = v4[i][0]
            self._v4_hi[i] = v4[i][1]
        for i in range(len(v6)):
            self._v6_lo[2 * i] = v6[i][0] >> 64
            self._v6_lo[2 * i + 1] = v6[i][0] & 0xFFFFFFFFFFFFFFFF
            self._v6_hi[2 * i] = v6[i][1] >> 64
            self._v6_hi[2 * i + 1] = v6[i][1] & 0xFFFFFFFFFFFFFFFF
        self._n4 = len(v4)
        self._n6 = len(v6)
        self.networks = len(nets)

    cdef void _free(self):
        PyMem_Free(self._v4_lo)
        PyMem_Free(self._v4_hi)
        PyMem_Free(self._v6_lo)
        PyMem_Free(self._v6_hi)
        self._v4_lo = self._v4_hi = NULL
        self._v6_lo = self._v6_hi = NULL

    def __dealloc__(self):
        self._free()

    cpdef bint contains(self, bytes ip):
        """Is the client address text `ip` in one of the networks? False if unparsable."""
        cdef unsigned char addr[16]
        cdef int family
        cdef uint32_t v4
        cdef uint64_t hi, lo
        cdef Py_ssize_t i
        if ip is None:
            raise TypeError("IpSet.contains() needs bytes, not None")
        family = _parse_ip(PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip), addr)
        if family == 0:
            return False
        if family == 4 or _mapped(addr):
            v4 = ((<uint32_t>addr[12] << 24) | (<uint32_t>addr[13] << 16)
                  | (<uint32_t>addr[14] << 8) | addr[15])
            if _in_v4(self._v4_lo, self._v4_hi, self._n4, v4):
                return True
            if family == 4:
                return False
        hi = lo = 0
        for i in range(8):
            hi = (hi << 8) | addr[i]
            lo = (lo << 8) | addr[8 + i]
        return _in_v6(self._v6_lo, self._v6_hi, self._n6, hi, lo)


cdef inline bint _mapped(const unsigned char* addr) noexcept nogil:
    cdef int i
    for i in range(10):
        if addr[i] != 0:
            return False
    return addr[10] == 0xFF and addr[11] == 0xFF


cdef inline bint _in_v4(const uint32_t* los, const uint32_t* his, Py_ssize_t n,
                        uint32_t x) noexcept nogil:
    """x in one of the sorted ranges: the last one starting at or below x must hold it."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if los[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo > 0 and x <= his[lo - 1]


cdef inline bint _le128(uint64_t ah, uint64_t al, uint64_t bh, uint64_t bl) noexcept nogil:
    return ah < bh or (ah == bh and al <= bl)


cdef inline bint _in_v6(const uint64_t* los, const uint64_t* his, Py_ssize_t n, uint64_t xh,
                        uint64_t xl) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if _le128(los[2 * mid], los[2 * mid + 1], xh, xl):
            lo = mid + 1
        else:
            hi = mid
    return lo > 0 and _le128(xh, xl, his[2 * (lo - 1)], his[2 * (lo - 1) + 1])
