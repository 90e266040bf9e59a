"""Route matching: the minimal form — exact host and path prefix, first match in file order.

The compiled matcher of the routing issue (host table, prefix trie, methods,
headers, regexes) replaces the linear scan behind the same `route()` call.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp


cpdef bytes normalize_host(bytes host):
    """Lower-case host name without port or trailing dot (b"" when absent)."""
    cdef Py_ssize_t end, colon
    if not host:
        return b""
    if host[0] == 0x5B:  # "[": an IPv6 literal
        end = host.find(b"]")
        return host[:end + 1].lower() if end > 0 else host.lower()
    colon = host.rfind(b":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(b".").lower()


@cython.final
cdef class Router:
    """Routes in file order; `route` returns the target of the first that matches."""

    def __init__(self, routes, targets):
        self._hosts = tuple(r.match.host.encode("idna") if r.match.host else None
                            for r in routes)
        self._prefixes = tuple(r.match.path_prefix.encode() for r in routes)
        self._targets = tuple(targets[r.upstream] for r in routes)
        self._n = len(self._targets)
        # Without host rules the Host header need not be normalized per request.
        self.by_host = any(h is not None for h in self._hosts)

    cpdef object route(self, bytes host_header, bytes path):
        """The target for a request's Host header (None if absent) and path, or None."""
        return self.match(normalize_host(host_header) if self.by_host else b"", path)

    cpdef object match(self, bytes host, bytes path):
        """The target for a normalized host (b"" when routes ignore it) and path, or None."""
        cdef Py_ssize_t i, pl = PyBytes_GET_SIZE(path), n
        cdef const char* p = PyBytes_AS_STRING(path)
        cdef bytes prefix
        for i in range(self._n):
            want = self._hosts[i]
            if want is not None and want != host:
                continue
            prefix = <bytes>self._prefixes[i]
            n = PyBytes_GET_SIZE(prefix)
            if n <= pl and memcmp(p, PyBytes_AS_STRING(prefix), n) == 0:
                return self._targets[i]
        return None
