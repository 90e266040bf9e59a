from fastproxy._http cimport MessageHead

# Response framing chosen by the proxy for the client side.
cdef enum Framing:
    FR_PASS = 0      # keep the upstream's Content-Length (or no body at all)
    FR_CHUNKED = 1   # re-frame as chunked
    FR_CLOSE = 2     # delimit by closing the connection (HTTP/1.0 clients)

cdef bytes request_head(MessageHead head, bytes target, bytes host, bytes client_ip,
                        bytes proto, bytes via)
cdef bytes response_head(MessageHead head, int framing, bint keep_alive, int client_minor,
                         bytes via)
