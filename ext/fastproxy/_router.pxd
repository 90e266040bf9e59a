from fastproxy._http cimport MessageHead
from fastproxy._url cimport IpSet

# Which condition of a rule failed (Rule.check); 0 is a match.
cdef enum Failed:
    F_NONE = 0
    F_HOST = 1
    F_PATH = 2
    F_LISTENER = 3
    F_METHOD = 4
    F_HEADER = 5      # + 16 * the index of the header test
    F_QUERY = 6       # + 16 * the index of the query test
    F_CLIENT = 7
    F_REGEX = 8
    F_TLS = 9
    F_CERT = 10       # + 16 * the index of the client-certificate test


cdef class RequestContext:
    """What routing and the templates of the actions see of one request."""
    cdef public MessageHead head
    cdef bytes _host                # see host_name(); None until needed
    cdef bytes _default_host        # the listener's default_host, or None
    cdef public bytes route_host    # the host the routes were matched against (None: no
                                    # route has a host condition, nothing was normalized)
    cdef public bytes host_header   # Host, or the authority of an absolute-form target
    cdef public bytes target        # origin-form target to forward: normalized path + query
    cdef public bytes path          # normalized path, before rewrites (None: invalid request)
    cdef public bytes query         # raw query, without "?" (b"" when none)
    cdef public bint has_query
    cdef public bytes client_ip
    cdef public bytes scheme
    cdef public int listener
    cdef public bytes listener_name
    cdef public object captures     # re.Match of the matched rule's path_regex, or None
    cdef public dict tls            # TLS connection facts (client certificate); None: plain
    cdef bytes _request_id

    cpdef bytes request_id(self)
    cpdef bytes host_name(self)


cpdef RequestContext new_context(MessageHead head, bint merge_slashes, bytes client_ip,
                                 bytes scheme, int listener, bytes listener_name)


cdef class Rule:
    cdef readonly int index
    cdef readonly object route      # the config Route
    cdef readonly object action     # what the proxy does on a match (an _actions object)
    cdef public tuple limits        # the route's rate limits (_ratelimit.RateLimit), in order
    cdef public tuple access        # (allow IpSet or None, deny IpSet or None), or None
    cdef public object auth         # auth.BasicAuth of the route, or None
    cdef public object waf          # waf.Waf of the route, or None
    cdef public long long max_body  # request body limit of the route; -1: the listener's
    cdef public double tunnel_idle  # an upgraded connection's idle timeout (0: none)
    cdef public object forward_auth # forwardauth.ForwardAuth of the route, or None
    cdef public object cache        # _httpcache.RouteCache of the route, or None
    cdef public Py_ssize_t stats_base  # the route's first counter in _stats (-1: none)
    cdef public object compress     # _compress.Policy of the route, or None
    cdef readonly bint any_host
    cdef frozenset _hosts           # exact host names
    cdef tuple _suffixes            # wildcard hosts as ".example.com"
    cdef tuple _paths               # exact paths
    cdef tuple _prefixes
    cdef bint _segments
    cdef readonly bint has_path     # exact paths or prefixes (the trie's part)
    cdef object _regex              # compiled bytes pattern or None
    cdef tuple _methods             # bytes, or None for any
    cdef tuple _headers             # (lower-case name, kind, value, regex)
    cdef tuple _query               # (name, kind, value, regex)
    cdef IpSet _ips
    cdef tuple _listeners           # listener indexes, or None for any
    cdef int _tls                   # -1: any; 0: plain only; 1: TLS only
    cdef tuple _cert                # (fact name str, kind, value bytes, regex) on ctx.tls

    cdef int check(self, RequestContext ctx) except -1
    cdef bint check_path(self, bytes path) noexcept
    cdef int check_rest(self, RequestContext ctx) except -1


cdef class PathTable:
    cdef tuple rules                # Rule by position (candidates of one host class)
    cdef tuple always               # positions of rules without a trie part, ascending
    cdef int* _node_edges           # per node: first edge, edge count, first entry, entry count
    cdef unsigned char* _edge_byte
    cdef int* _edge_child
    cdef int* _entry_pos            # per entry: rule position
    cdef unsigned char* _entry_kind
    cdef int _nodes
    cdef int _entries
    cdef int* _scratch              # hit positions of one lookup (at most one per entry)

    cdef _flatten(self, list nodes)
    cdef _free(self)
    cdef inline int _child(self, int node, unsigned char byte) noexcept nogil
    cdef int _walk(self, const char* p, Py_ssize_t pl) noexcept nogil
    cdef Rule find(self, RequestContext ctx)


cdef class Router:
    cdef readonly tuple rules
    cdef readonly bint by_host
    cdef dict _exact                # host -> PathTable
    cdef dict _wild                 # ".suffix" -> PathTable
    cdef PathTable _any
    cdef tuple _defaults            # per listener: (host bytes, PathTable) or None

    cdef PathTable _table_for(self, bytes host)
    cdef PathTable resolve_host(self, RequestContext ctx, bytes host_header)
    cpdef Rule route(self, RequestContext ctx, bytes host_header)
