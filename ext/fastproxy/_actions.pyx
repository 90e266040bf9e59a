"""What a matched route does: proxy (with rewrites and header edits), redirect,
or answer by itself — built once from the config, run per request.

Templates were parsed and checked when the config loaded; here they are lists
of literal bytes, variable codes and capture keys joined per request. Every
variable comes from bytes the parser already validated (no CR, LF or NUL can
appear), so a rendered header value cannot split a header.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from fastproxy._router cimport RequestContext
from fastproxy._url cimport (
    cookie_get,
    escape_path,
    has_dot_segment,
    normalize_path,
    query_edit,
    query_get,
)

# Variable codes of templates.
cdef enum:
    V_HOST = 0
    V_PATH = 1
    V_QUERY = 2
    V_REQUEST_URI = 3
    V_METHOD = 4
    V_SCHEME = 5
    V_CLIENT_IP = 6
    V_REQUEST_ID = 7
    V_LISTENER = 8
    # Lookups: a (code, name) pair in a template's parts.
    V_HEADER = 9
    V_COOKIE = 10
    V_QUERY_ARG = 11

_LOOKUPS = {"header": V_HEADER, "cookie": V_COOKIE, "query": V_QUERY_ARG}

REDIRECT = A_REDIRECT
RESPOND = A_RESPOND

VARIABLES = {"host": V_HOST, "path": V_PATH, "query": V_QUERY,
             "request_uri": V_REQUEST_URI, "method": V_METHOD, "scheme": V_SCHEME,
             "client_ip": V_CLIENT_IP, "request_id": V_REQUEST_ID, "listener": V_LISTENER}


cdef bytes _variable(RequestContext ctx, int code):
    if code == V_HOST:
        return ctx.host_name()
    if code == V_PATH:
        return ctx.path
    if code == V_QUERY:
        return ctx.query
    if code == V_REQUEST_URI:
        return ctx.path + b"?" + ctx.query if ctx.has_query else ctx.path
    if code == V_METHOD:
        return ctx.head.method if ctx.head is not None else b""
    if code == V_SCHEME:
        return ctx.scheme
    if code == V_CLIENT_IP:
        return ctx.client_ip
    if code == V_REQUEST_ID:
        return ctx.request_id()
    return ctx.listener_name


cdef bytes _lookup(RequestContext ctx, int code, bytes name):
    """{header.NAME}, {cookie.NAME}, {query.NAME}: b"" when absent. Every value
    comes from parsed request bytes, and a decoded query value with a control
    byte is percent-encoded again: no CR, LF or NUL."""
    cdef bytes value = None
    if code == V_HEADER:
        if ctx.head is not None:
            value = ctx.head.get(name)
    elif code == V_COOKIE:
        if ctx.head is not None:
            header = ctx.head.get(b"cookie")
            if header is not None:
                value = cookie_get(header, name)
    elif ctx.has_query:
        value = query_get(ctx.query, name)
        if value is not None and _has_control(value):
            value = escape_path(value, True)  # decoded "%0D%0A" must not split a header
    return value if value is not None else b""


cdef bint _has_control(bytes value):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(value)):
        if p[i] < 0x20 or p[i] == 0x7F:
            return True
    return False


@cython.final
cdef class Template:
    """A config template (routeconf.Template) ready to render."""

    def __init__(self, template):
        parts = []
        for part in template.parts:
            if isinstance(part, str):
                parts.append(part.encode())
            elif part.capture:
                parts.append((part.name,))
            elif "." in part.name:
                kind, _, name = part.name.partition(".")
                parts.append((<int>_LOOKUPS[kind], name.encode()))
            else:
                parts.append(<int>VARIABLES[part.name])
        self._parts = tuple(parts)
        self._constant = (b"".join(parts) if all(isinstance(p, bytes) for p in parts)
                          else None)

    cdef bytes render(self, RequestContext ctx, object groups, bint in_path=False):
        """The value for this request; `groups` is the re.Match captures refer to.
        `in_path`: the result becomes a path, and each variable but {path} stays
        within one segment ("/", "%" and what a path cannot hold are escaped)."""
        if self._constant is not None:
            return self._constant
        out = []
        for part in self._parts:
            if type(part) is bytes:
                out.append(part)
            elif type(part) is int:
                value = _variable(ctx, <int>part)
                out.append(escape_path(value, True) if in_path and <int>part != V_PATH
                           else value)
            elif len(<tuple>part) == 2:
                value = _lookup(ctx, (<tuple>part)[0], (<tuple>part)[1])
                out.append(escape_path(value, True) if in_path else value)
            else:
                value = groups.group((<tuple>part)[0]) if groups is not None else None
                out.append(value if value is not None else b"")
        return b"".join(out)

    def render_for(self, RequestContext ctx not None, groups=None):
        return self.render(ctx, groups if groups is not None else ctx.captures)


@cython.final
cdef class HeaderEdits:
    """Header edits of one direction (routeconf.HeaderEdits)."""

    def __init__(self, edits):
        self.drop = tuple({n.lower().encode(): None
                           for n in (*edits.remove, *(n for n, _ in edits.set))})
        self._lines = tuple((name.encode() + b": ", Template(value))
                            for name, value in (*edits.set, *edits.add))

    cdef bytes render(self, RequestContext ctx):
        """The header lines to add, b"Name: value\\r\\n" each."""
        out = []
        for name, value in self._lines:
            out.append(name)
            out.append((<Template>value).render(ctx, ctx.captures))
            out.append(b"\r\n")
        return b"".join(out)

    def render_for(self, RequestContext ctx not None):
        return self.render(ctx)


cdef class Action:
    pass


@cython.final
cdef class ProxyAction(Action):
    """Proxy to an upstream group, after the route's rewrites."""

    def __init__(self, group, rewrite=None, request_headers=None, response_headers=None,
                 bint merge_slashes=True):
        self.kind = A_PROXY
        self.group = group
        self._merge_slashes = merge_slashes
        self.request_edits = HeaderEdits(request_headers) if request_headers else None
        self.response_edits = HeaderEdits(response_headers) if response_headers else None
        if rewrite is None:
            return
        self.rewrites = True
        self._strip = rewrite.strip_prefix.encode() if rewrite.strip_prefix else None
        self._add = rewrite.add_prefix.encode() if rewrite.add_prefix else None
        if rewrite.regex is not None:
            import re
            self._regex = re.compile(rewrite.regex.encode())
            self._replace = Template(rewrite.replace)
        self._remove_query = tuple(n.encode() for n in rewrite.remove_query)
        self._set_query = tuple((n.encode(), Template(v)) for n, v in rewrite.set_query)
        self._host = Template(rewrite.host) if rewrite.host is not None else None

    cdef bytes target(self, RequestContext ctx):
        """The rewritten request target (path and query); None when the
        rewritten path is refused (a "." or ".." segment from the replace)."""
        cdef bytes path = ctx.path
        cdef bytes query
        cdef bint changed = False
        if self._strip is not None and path.startswith(self._strip):
            path = path[PyBytes_GET_SIZE(self._strip):]
            if not path.startswith(b"/"):
                path = b"/" + path
            changed = True
        if self._regex is not None:
            m = self._regex.search(path)
            if m is not None:
                # Whatever the template brings stays part of the path ("?" and
                # spaces escaped), and may not add "." or ".." segments: the
                # client's bytes must not choose where the request goes.
                path = escape_path(
                    path[:m.start()] + self._replace.render(ctx, m, True) + path[m.end():])
                if has_dot_segment(path):
                    return None
                changed = True
        if self._add is not None:
            path = self._add + path[1:] if self._add.endswith(b"/") else self._add + path
            changed = True
        if changed:
            if not path.startswith(b"/"):
                path = b"/" + path
            path = normalize_path(path, self._merge_slashes)
            if path is None:
                return None
        if self._remove_query or self._set_query:
            query = query_edit(ctx.query if ctx.has_query else b"", self._remove_query,
                               tuple((n, (<Template>t).render(ctx, ctx.captures))
                                     for n, t in self._set_query))
            return path + b"?" + query if query else path
        return path + b"?" + ctx.query if ctx.has_query else path

    cdef bytes upstream_host(self, RequestContext ctx, bytes host):
        """The Host header to send: the rewrite's, or `host`."""
        if self._host is not None:
            return self._host.render(ctx, ctx.captures)
        return host

    def target_for(self, RequestContext ctx not None):
        return self.target(ctx)

    def upstream_host_for(self, RequestContext ctx not None, bytes host not None):
        return self.upstream_host(ctx, host)


_PLAIN_TEXT = b"text/plain; charset=utf-8"


@cython.final
cdef class LocalAction(Action):
    """A redirect or a static answer, made here."""

    def __init__(self, int kind, int status, str reason, body=None, headers=(),
                 response_headers=None):
        """`body` a routeconf.Template or None; `headers` (name, Template) pairs,
        the Location of a redirect among them."""
        self.kind = kind
        self.status = status
        # No content for 204, 205 and 304 (RFC 9110 §15.3.5, 15.3.6, 15.4.5).
        self._bodiless = status == 204 or status == 205 or status == 304
        self._body = Template(body) if body is not None and not self._bodiless else None
        self.response_edits = HeaderEdits(response_headers) if response_headers else None
        drop = self.response_edits.drop if self.response_edits is not None else ()
        own = [(name.lower().encode(), name.encode() + b": ", Template(value))
               for name, value in headers]
        self._headers = tuple(h for h in own if h[0] not in drop)
        # The route's own fields replace ours (never two Server, Date or Content-Type).
        named = {h[0] for h in own} | set(drop)
        if response_headers:
            named.update(n.lower().encode() for n, _ in response_headers.add)
        self._has_type = b"content-type" in named
        self._own_date = b"date" in named
        server = b"" if b"server" in named else b"Server: fastproxy\r\n"
        self._status_line = b"HTTP/1.1 %d %s\r\n%s" % (status, reason.encode(), server)

    cdef bytes answer(self, RequestContext ctx, bytes date, bint keep, bint head_only,
                      long long* body_len):
        """The whole response; its body length goes to body_len[0]."""
        cdef bytes body = self._body.render(ctx, ctx.captures) if self._body is not None else b""
        out = [self._status_line]
        for _, name, value in self._headers:
            out.append(name)
            out.append((<Template>value).render(ctx, ctx.captures))
            out.append(b"\r\n")
        if self.response_edits is not None:
            out.append(self.response_edits.render(ctx))
        if body and not self._has_type:
            out.append(b"Content-Type: " + _PLAIN_TEXT + b"\r\n")
        if not self._bodiless or self.status == 205:  # 205: "Content-Length: 0"
            out.append(b"Content-Length: %d\r\n" % PyBytes_GET_SIZE(body))
        out.append(b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n")
        if not self._own_date:
            out.append(b"Date: ")
            out.append(date)
            out.append(b"\r\n")
        out.append(b"\r\n")
        if head_only:
            body_len[0] = 0
        else:
            out.append(body)
            body_len[0] = PyBytes_GET_SIZE(body)
        return b"".join(out)

    def answer_for(self, RequestContext ctx not None, bytes date not None, bint keep=True,
                   bint head_only=False):
        cdef long long n = 0
        return self.answer(ctx, date, keep, head_only, &n)
