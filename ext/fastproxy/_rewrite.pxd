from fastproxy._http cimport MessageHead

# Response framing chosen by the proxy for the client side.
cdef enum Framing:
    FR_PASS = 0      # keep the upstream's Content-Length (or no body at all)
    FR_CHUNKED = 1   # re-frame as chunked
    FR_CLOSE = 2     # delimit by closing the connection (HTTP/1.0 clients)

cdef enum:
    COMP_VARY = 1    # response_head: merge Accept-Encoding into Vary
    COMP_ENCODED = 2 # ... and the body is encoded by us

# drop: lower-case names of fields to leave out; extra: header lines to add ("Name: v\r\n").
# forwarded_host: X-Forwarded-Host (the client's host; `host` may be a rewritten one).
cdef bytes request_head(MessageHead head, bytes target, bytes host, bytes client_ip,
                        bytes proto, bytes via, tuple drop, bytes extra,
                        bytes forwarded_host)
# coding: the Content-Encoding of a body we compress (None: none); vary: add
# Accept-Encoding to Vary (a response that is compressed for some clients).
cdef bytes response_head(MessageHead head, int framing, bint keep_alive, int client_minor,
                         bytes via, tuple drop, bytes extra, bytes coding=*, bint vary=*)
