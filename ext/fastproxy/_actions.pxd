from fastproxy._router cimport RequestContext

cdef enum ActionKind:
    A_PROXY = 0
    A_REDIRECT = 1
    A_RESPOND = 2


cdef class Template:
    cdef tuple _parts       # bytes literals, int variable codes, 1-tuples of capture keys
    cdef bytes _constant    # the value when there is no variable, else None

    cdef bytes render(self, RequestContext ctx, object groups, bint in_path=*)


cdef class HeaderEdits:
    cdef readonly tuple drop    # lower-case names removed from the message (remove + set)
    cdef tuple _lines           # (b"Name: ", Template) for set and add, in that order

    cdef bytes render(self, RequestContext ctx)


cdef class Action:
    cdef readonly int kind
    cdef readonly HeaderEdits response_edits   # None when the route has none


cdef class ProxyAction(Action):
    cdef readonly object group
    cdef readonly HeaderEdits request_edits
    cdef readonly bint rewrites                # the target or the Host changes
    cdef bytes _strip
    cdef bytes _add
    cdef object _regex
    cdef Template _replace
    cdef tuple _remove_query
    cdef tuple _set_query       # (name bytes, Template)
    cdef Template _host
    cdef bint _merge_slashes

    cdef bytes target(self, RequestContext ctx)
    cdef bytes upstream_host(self, RequestContext ctx, bytes host)


cdef class LocalAction(Action):
    cdef readonly int status
    cdef Template _body
    cdef tuple _headers         # (lower-case name, b"Name: ", Template)
    cdef bytes _status_line
    cdef bint _has_type         # the route names Content-Type (or removes it)
    cdef bint _own_date         # ... or Date
    cdef bint _bodiless         # 204, 205 and 304 have no body

    cdef bytes answer(self, RequestContext ctx, bytes date, bint keep, bint head_only,
                      long long* body_len)
