"""Route matching: the first route in file order whose conditions all hold.

Compiled once per config. The Host picks a *host class* by one hash lookup
(exact names), or by the longest wildcard suffix; each class has its own
byte trie of the exact paths and prefixes of the rules that can match it, so
the cost of a match follows the length of the path and the few rules that
share a prefix, not the number of routes. Rules without a path condition and
regex rules are checked in file order beside the trie's hits. Methods,
headers, query arguments, client address and listener are checked only on
those candidates.

`Rule.check` is the same decision made linearly, condition by condition; the
explain tool and the tests use it as the reference for the compiled tables.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t
from libc.string cimport memchr, memcmp

from fastproxy.ascii cimport is_lower_literal
from fastproxy._http cimport MessageHead
from fastproxy._url cimport IpSet, normalize_host, normalize_path, query_get

import os
import re

# Kinds of a trie entry.
cdef enum:
    E_PREFIX = 0    # any path below the node
    E_SEGMENT = 1   # the node's path itself, or the node's path + "/..."
    E_EXACT = 2     # the node's path only

# Kinds of a header or query test.
cdef enum:
    T_PRESENT = 0
    T_ABSENT = 1
    T_EQUALS = 2
    T_REGEX = 3

_TEST_KINDS = {"present": T_PRESENT, "absent": T_ABSENT, "equals": T_EQUALS, "regex": T_REGEX}


# -- request ids ----------------------------------------------------------------------

cdef bytes _id_prefix = b""
cdef long _id_pid = -1
cdef unsigned long long _id_count = 0


cdef bytes _new_request_id():
    # Random per process (made after the fork: workers must not share it) plus a counter.
    global _id_prefix, _id_pid, _id_count
    cdef long pid = os.getpid()
    if pid != _id_pid:
        _id_pid = pid
        _id_prefix = os.urandom(8).hex().encode()
        _id_count = 0
    _id_count += 1
    return _id_prefix + b"%016x" % _id_count


@cython.final
@cython.freelist(64)
cdef class RequestContext:

    def __init__(self, MessageHead head=None, bytes path=b"/", bytes query=b"",
                 bint has_query=False, bytes client_ip=b"127.0.0.1", bytes scheme=b"http",
                 int listener=0, bytes listener_name=b""):
        self.head = head
        self.path = path
        self.query = query
        self.has_query = has_query
        self.client_ip = client_ip
        self.scheme = scheme
        self.listener = listener
        self.listener_name = listener_name
        self.route_host = None

    cpdef bytes host_name(self):
        """The request's host, normalized; the listener's default_host when it has none."""
        cdef bytes host
        if self._host is None:
            host = normalize_host(self.host_header) if self.host_header is not None else b""
            self._host = host if host or self._default_host is None else self._default_host
        return self._host

    @property
    def host(self):
        return self.host_name()

    cpdef bytes request_id(self):
        """This request's id, made on first use."""
        if self._request_id is None:
            self._request_id = _new_request_id()
        return self._request_id


cpdef RequestContext new_context(MessageHead head, bint merge_slashes, bytes client_ip,
                                 bytes scheme, int listener, bytes listener_name):
    """The routing view of a parsed request. Its path is None when the request
    must be refused (400): a bad absolute-form authority, or a path that does
    not normalize (a bad escape, ".." above the root)."""
    cdef RequestContext ctx = RequestContext.__new__(RequestContext)
    cdef bytes target = head.target
    cdef bytes raw_path, rest, authority
    cdef Py_ssize_t q, end, i
    ctx.head = head
    ctx.client_ip = client_ip
    ctx.scheme = scheme
    ctx.listener = listener
    ctx.listener_name = listener_name
    ctx.query = b""
    ctx.host_header = head.host
    if target == b"*":  # OPTIONS *: routed as "/", forwarded as it came
        ctx.path = b"/"
        ctx.target = target
        return ctx
    if PyBytes_AS_STRING(target)[0] != b'/':
        # absolute-form (RFC 9112 §3.2.2): the authority replaces Host.
        i = target.find(b"://")
        if i < 0:
            return ctx  # path None (the parser lets only http(s)://... through)
        rest = target[i + 3:]
        end = len(rest)
        for stop in (b"/", b"?"):
            i = rest.find(stop)
            if 0 <= i < end:
                end = i
        authority, target = rest[:end], rest[end:]
        if not authority or b"@" in authority:
            return ctx  # path None
        if target[:1] != b"/":
            target = b"/" + target
        ctx.host_header = authority
    cdef const char* t = PyBytes_AS_STRING(target)
    cdef const char* mark = <const char*>memchr(t, b'?', PyBytes_GET_SIZE(target))
    q = mark - t if mark != NULL else -1
    raw_path = target
    if q >= 0:
        raw_path = PyBytes_FromStringAndSize(t, q)
        ctx.query = PyBytes_FromStringAndSize(mark + 1, PyBytes_GET_SIZE(target) - q - 1)
        ctx.has_query = True
    ctx.path = normalize_path(raw_path, merge_slashes)
    if ctx.path is raw_path:
        ctx.target = target
    elif ctx.path is not None:  # forward what was matched
        ctx.target = ctx.path + target[q:] if q >= 0 else ctx.path
    return ctx


# -- one route --------------------------------------------------------------------------

cdef object _compile(str source):
    return re.compile(source.encode()) if source is not None else None


@cython.final
cdef class Rule:
    """One route's conditions, prepared for matching bytes, and its action."""

    def __init__(self, route, action, listener_ids):
        """`route` is a config Route; `listener_ids` maps listener names to indexes."""
        self.stats_base = -1
        match = route.match
        self.index = route.index
        self.route = route
        self.action = action
        self.limits = ()
        self.max_body = -1
        self.tunnel_idle = route.tunnel_idle_timeout
        self.any_host = match.hosts is None
        hosts = match.hosts or ()
        self._hosts = frozenset(h.encode() for h in hosts if not h.startswith("*."))
        self._suffixes = tuple(h[1:].encode() for h in hosts if h.startswith("*."))
        self._paths = tuple(p.encode() for p in match.paths)
        self._prefixes = tuple(p.encode() for p in match.path_prefixes)
        self._segments = match.whole_segments
        self.has_path = bool(self._paths or self._prefixes)
        self._regex = _compile(match.path_regex)
        self._methods = (tuple(m.encode() for m in match.methods)
                         if match.methods is not None else None)
        self._headers = tuple((t.name.lower().encode(), _TEST_KINDS[t.kind],
                               t.value.encode() if t.value is not None else None,
                               _compile(t.value) if t.kind == "regex" else None)
                              for t in match.headers)
        self._query = tuple((t.name.encode(), _TEST_KINDS[t.kind],
                             t.value.encode() if t.value is not None else None,
                             _compile(t.value) if t.kind == "regex" else None)
                            for t in match.query)
        self._ips = IpSet(match.client_ips) if match.client_ips is not None else None
        self._listeners = (tuple(listener_ids[n] for n in match.listeners)
                           if match.listeners is not None else None)
        self._tls = -1 if match.tls is None else int(match.tls)
        self._cert = tuple((t.name, _TEST_KINDS[t.kind],
                            t.value.encode() if t.value is not None else None,
                            _compile(t.value) if t.kind == "regex" else None)
                           for t in match.client_cert)

    def __repr__(self):
        return f"<Rule {self.route.label}>"

    # -- which hosts -----------------------------------------------------------------
    def matches_host(self, bytes host):
        """Does this rule accept `host` (a normalized name)?"""
        if self.any_host or host in self._hosts:
            return True
        for suffix in self._suffixes:
            if len(host) > len(suffix) and host.endswith(suffix):
                return True
        return False

    @property
    def trie_paths(self):
        """(path, entry kind) pairs this rule puts into a trie."""
        out = [(p, E_EXACT) for p in self._paths]
        for p in self._prefixes:
            out.append((p, E_SEGMENT if self._segments and not p.endswith(b"/") else E_PREFIX))
        return out

    # -- the decision ------------------------------------------------------------------
    cdef int check(self, RequestContext ctx) except -1:
        if not self.any_host and not self.matches_host(ctx.route_host):
            return F_HOST
        if not self.check_path(ctx.path):
            return F_PATH
        return self.check_rest(ctx)

    cdef bint check_path(self, bytes path) noexcept:
        cdef bytes p
        cdef Py_ssize_t n, pl
        cdef const char* s
        if not self.has_path:
            return True
        if path is None:
            return False
        pl = PyBytes_GET_SIZE(path)
        s = PyBytes_AS_STRING(path)
        for p in self._paths:
            if p == path:
                return True
        for p in self._prefixes:
            n = PyBytes_GET_SIZE(p)
            if n > pl or memcmp(s, PyBytes_AS_STRING(p), n) != 0:
                continue
            if (not self._segments or n == pl or s[n] == b'/'
                    or PyBytes_AS_STRING(p)[n - 1] == b'/'):
                return True
        return False

    cdef int check_rest(self, RequestContext ctx) except -1:
        """Everything but the host and the trie's part of the path."""
        cdef Py_ssize_t i
        cdef tuple test
        if self._listeners is not None and ctx.listener not in self._listeners:
            return F_LISTENER
        if self._methods is not None and (ctx.head is None or ctx.head.method not in self._methods):
            return F_METHOD
        for i in range(len(self._headers)):
            if not _header_test(ctx.head, <tuple>self._headers[i]):
                return F_HEADER + 16 * <int>i
        for i in range(len(self._query)):
            test = <tuple>self._query[i]
            if not _value_test(query_get(ctx.query, <bytes>test[0]) if ctx.has_query else None,
                               test):
                return F_QUERY + 16 * <int>i
        if self._ips is not None and not self._ips.contains(ctx.client_ip):
            return F_CLIENT
        if self._tls >= 0 and (ctx.tls is not None) != self._tls:
            return F_TLS
        for i in range(len(self._cert)):
            test = <tuple>self._cert[i]
            fact = ctx.tls.get(test[0]) if ctx.tls is not None else None
            if not _value_test(fact.encode() if fact is not None else None, test):
                return F_CERT + 16 * <int>i
        if self._regex is not None:
            m = self._regex.search(ctx.path)
            if m is None:
                return F_REGEX
            ctx.captures = m
        return F_NONE


cdef bint _value_test(object value, tuple test):
    cdef int kind = test[1]
    if kind == T_PRESENT:
        return value is not None
    if kind == T_ABSENT:
        return value is None
    if value is None:
        return False
    if kind == T_EQUALS:
        return value == test[2]
    return test[3].search(value) is not None


cdef bint _header_test(MessageHead head, tuple test):
    """Does any field named test[0] pass (or, for "absent", none exist)?"""
    cdef bytes name = test[0]
    cdef int kind = test[1]
    cdef const uint32_t* o
    cdef const char* raw
    cdef int i
    cdef bint seen = False
    if head is None:
        return kind == T_ABSENT
    o = head.offsets()
    raw = PyBytes_AS_STRING(head.raw)
    for i in range(head.header_count):
        if not is_lower_literal(raw + o[4 * i], o[4 * i + 1], PyBytes_AS_STRING(name),
                                PyBytes_GET_SIZE(name)):
            continue
        seen = True
        if kind == T_PRESENT:
            return True
        if kind == T_ABSENT:
            return False
        if _value_test(raw[o[4 * i + 2]:o[4 * i + 2] + o[4 * i + 3]], test):
            return True
    return kind == T_ABSENT and not seen


# -- the paths of one host class ---------------------------------------------------------

@cython.final
cdef class PathTable:
    """The candidate rules of one host class: a byte trie of their exact paths
    and prefixes, plus the rules the trie cannot decide for (checked in order)."""

    def __cinit__(self):
        self.rules = ()
        self.always = ()
        self._flatten([({}, [])])  # an empty trie until __init__ runs

    def __init__(self, tuple rules):
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"PathTable needs Rule objects, not {type(rule).__name__}")
        self.rules = rules
        always = []
        nodes = [({}, [])]  # (children: byte -> node id, entries: [(position, kind)])
        for pos, rule in enumerate(rules):
            trie_paths = (<Rule>rule).trie_paths
            if not trie_paths:
                always.append(pos)
            for path, kind in trie_paths:
                node = 0
                for byte in path:
                    child = nodes[node][0].get(byte)
                    if child is None:
                        child = len(nodes)
                        nodes.append(({}, []))
                        nodes[node][0][byte] = child
                    node = child
                nodes[node][1].append((pos, kind))
        self.always = tuple(always)
        self._flatten(nodes)

    cdef _flatten(self, list nodes):
        cdef int n = len(nodes), edges = sum(len(c) for c, _ in nodes)
        cdef int entries = sum(len(e) for _, e in nodes)
        cdef int i, k = 0, m = 0
        self._free()
        self._nodes = n
        self._entries = entries
        self._node_edges = <int*>PyMem_Malloc(sizeof(int) * 4 * n)
        self._edge_byte = <unsigned char*>PyMem_Malloc(edges + 1)
        self._edge_child = <int*>PyMem_Malloc(sizeof(int) * (edges + 1))
        self._entry_pos = <int*>PyMem_Malloc(sizeof(int) * (entries + 1))
        self._entry_kind = <unsigned char*>PyMem_Malloc(entries + 1)
        self._scratch = <int*>PyMem_Malloc(sizeof(int) * (entries + 1))
        if (self._node_edges == NULL or self._edge_byte == NULL or self._edge_child == NULL
                or self._entry_pos == NULL or self._entry_kind == NULL or self._scratch == NULL):
            raise MemoryError()
        for i in range(n):
            children, own = nodes[i]
            self._node_edges[4 * i] = k
            self._node_edges[4 * i + 1] = len(children)
            for byte in sorted(children):  # sorted: looked up by binary search
                self._edge_byte[k] = byte
                self._edge_child[k] = children[byte]
                k += 1
            self._node_edges[4 * i + 2] = m
            self._node_edges[4 * i + 3] = len(own)
            for pos, kind in own:
                self._entry_pos[m] = pos
                self._entry_kind[m] = kind
                m += 1

    cdef _free(self):
        PyMem_Free(self._node_edges)
        PyMem_Free(self._edge_byte)
        PyMem_Free(self._edge_child)
        PyMem_Free(self._entry_pos)
        PyMem_Free(self._entry_kind)
        PyMem_Free(self._scratch)
        self._node_edges = self._edge_child = self._entry_pos = self._scratch = NULL
        self._edge_byte = self._entry_kind = NULL

    def __dealloc__(self):
        self._free()

    cdef inline int _child(self, int node, unsigned char byte) noexcept nogil:
        cdef int lo = self._node_edges[4 * node]
        cdef int hi = lo + self._node_edges[4 * node + 1]
        cdef int mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._edge_byte[mid] < byte:
                lo = mid + 1
            else:
                hi = mid
        if lo < self._node_edges[4 * node] + self._node_edges[4 * node + 1] \
                and self._edge_byte[lo] == byte:
            return self._edge_child[lo]
        return -1

    cdef int _walk(self, const char* p, Py_ssize_t pl) noexcept nogil:
        """Collect into _scratch, ascending, the rule positions whose trie part
        matches the path; return their count."""
        cdef int node = 0, hits = 0, e, end, kind, j, v
        cdef Py_ssize_t d = 0
        while True:
            e = self._node_edges[4 * node + 2]
            end = e + self._node_edges[4 * node + 3]
            while e < end:
                kind = self._entry_kind[e]
                if kind == E_PREFIX or (kind == E_EXACT and d == pl) or (
                        kind == E_SEGMENT and (d == pl or p[d] == b'/')):
                    # insertion keeps the hits ascending (they are few)
                    v = self._entry_pos[e]
                    j = hits
                    while j > 0 and self._scratch[j - 1] > v:
                        self._scratch[j] = self._scratch[j - 1]
                        j -= 1
                    self._scratch[j] = v
                    hits += 1
                e += 1
            if d == pl:
                return hits
            node = self._child(node, <unsigned char>p[d])
            if node < 0:
                return hits
            d += 1

    cdef Rule find(self, RequestContext ctx):
        cdef bytes path = ctx.path
        cdef int hits
        if path is None:
            raise ValueError("the request context has no path (an invalid request)")
        hits = self._walk(PyBytes_AS_STRING(path), PyBytes_GET_SIZE(path))
        cdef tuple always = self.always
        cdef Py_ssize_t na = len(always)
        cdef int i = 0, j = 0, pos, last = -1
        cdef Rule rule
        while i < hits or j < na:
            if j >= na or (i < hits and self._scratch[i] < <int>always[j]):
                pos = self._scratch[i]
                i += 1
            else:
                pos = always[j]
                j += 1
            if pos == last:
                continue
            last = pos
            rule = <Rule>self.rules[pos]
            if rule.check_rest(ctx) == F_NONE:
                return rule
        return None

    def lookup(self, RequestContext ctx not None):
        return self.find(ctx)


# -- the router --------------------------------------------------------------------------

@cython.final
cdef class Router:
    """All rules, with one PathTable per host class."""

    def __init__(self, rules, listener_defaults=()):
        """`rules` in file order; `listener_defaults[i]` is listener i's default
        host (normalized bytes) or None."""
        self.rules = tuple(rules)
        for r in self.rules:
            if not isinstance(r, Rule):
                raise TypeError(f"Router needs Rule objects, not {type(r).__name__}")
        self.by_host = any(not (<Rule>r).any_host for r in self.rules)
        any_host = [r for r in self.rules if (<Rule>r).any_host]
        by_name = {}    # exact host -> the rules naming it
        by_suffix = {}  # ".suffix" -> the rules with that wildcard
        for r in self.rules:
            for h in (<Rule>r)._hosts:
                by_name.setdefault(h, []).append(r)
            for x in (<Rule>r)._suffixes:
                by_suffix.setdefault(x, []).append(r)
        shared = {}  # equal candidate lists share one table

        def table(candidates):
            ordered = sorted(set(candidates), key=lambda r: (<Rule>r).index)
            key = tuple((<Rule>r).index for r in ordered)
            found = shared.get(key)
            if found is None:
                found = shared[key] = PathTable(tuple(ordered))
            return found

        def wildcards_over(bytes name, Py_ssize_t first):
            # The rules of every wildcard ".x" that `name` ends with, from position `first`.
            out = []
            for i in range(first, len(name)):
                if name[i] == 0x2E:  # "."
                    out.extend(by_suffix.get(name[i:], ()))
            return out

        # A host's candidates: the rules naming it, the wildcards over it, any-host
        # rules. Built from the indexes above, not by testing every rule per host.
        self._any = table(any_host)
        self._exact = {h: table(named + wildcards_over(h, 1) + any_host)
                       for h, named in by_name.items()}
        self._wild = {x: table(wildcards_over(x, 0) + any_host) for x in by_suffix}
        self._defaults = tuple(
            (d, self._table_for(d)) if d is not None else None for d in listener_defaults)

    cdef PathTable _table_for(self, bytes host):
        """The table of a normalized host, or None when no rule names it."""
        cdef PathTable found = self._exact.get(host)
        cdef Py_ssize_t i
        cdef const char* h
        if found is None and self._wild:
            h = PyBytes_AS_STRING(host)
            for i in range(1, PyBytes_GET_SIZE(host)):
                if h[i] == b'.':
                    found = self._wild.get(host[i:])
                    if found is not None:
                        break
        return found

    @property
    def table_count(self):
        return len({id(t) for t in (self._any, *self._exact.values(), *self._wild.values())})

    cdef PathTable resolve_host(self, RequestContext ctx, bytes host_header):
        """Set ctx.route_host and what ctx.host_name() needs; return the host class's table."""
        cdef bytes host
        cdef PathTable found = None
        cdef tuple default = None
        if 0 <= ctx.listener < len(self._defaults):
            default = self._defaults[ctx.listener]
        ctx._default_host = default[0] if default is not None else None
        ctx._host = None
        ctx.route_host = None
        if not self.by_host:
            return self._any  # the host is normalized only if a template asks for it
        host = normalize_host(host_header) if host_header is not None else b""
        found = self._table_for(host)
        if found is not None or default is None:
            ctx._host = ctx.route_host = host
            return found if found is not None else self._any
        ctx.route_host = default[0]
        ctx._host = host if host else default[0]
        return default[1] if default[1] is not None else self._any

    cpdef Rule route(self, RequestContext ctx, bytes host_header):
        """The first rule that matches, or None; fills ctx.route_host and ctx.captures."""
        return self.resolve_host(ctx, host_header).find(ctx)

    def explain(self, RequestContext ctx not None, bytes host_header):
        """Each rule in order with its Failed code, up to and including the first
        match (the linear reference); and what `route` returns for the same request."""
        self.resolve_host(ctx, host_header)
        steps = []
        for r in self.rules:
            code = (<Rule>r).check(ctx)
            steps.append((r, code))
            if code == F_NONE:
                break
        captures = ctx.captures
        fast = self.route(ctx, host_header)
        if steps and steps[len(steps) - 1][1] == F_NONE:
            ctx.captures = captures
        return steps, fast
