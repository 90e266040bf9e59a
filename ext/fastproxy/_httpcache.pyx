"""The shared HTTP cache on the request path (RFC 9111): what a stored response
holds, and the cache of a `[caches.NAME]` in one worker (`RouteCache`).

The decisions are `cachepolicy`'s (Python, called once per store and on the
slow path); what runs per hit is here, in C: the primary key's hash, the index
lookup (`_cache.CacheIndex`), the freshness test of a plain request against a
precomputed time, and the bytes of the answer from a precomputed prefix.

A plain request is a GET or HEAD without Cache-Control, Pragma, conditionals
or Range: for it, a stored response is fresh while the wall clock is before
its `fresh_until` (response_time + lifetime - corrected initial age) and it has
no no-cache. Everything else asks `cachepolicy.serve`.
"""
from libc.stdint cimport int64_t, uint64_t
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from fastproxy._cache cimport CacheIndex, cache_key
from fastproxy._ratelimit cimport shared_map, table_size
from posix.mman cimport munmap
from fastproxy._http cimport MessageHead
from fastproxy._actions cimport Template

from fastproxy import cachepolicy

DEFAULT_KEY = "{scheme}://{host}{request_uri}"

# Response fields never stored: hop-by-hop ones, our own framing, and Age (the
# age of a hit is computed when it is served).
_NOT_STORED = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade", b"content-length", b"age",
                         b"proxy-authenticate", b"proxy-authorization"))
# A request with one of these is not "plain": cachepolicy decides.
_DIRECTIVES = (b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"range",
               b"if-range", b"if-match", b"if-unmodified-since")
# Sent upstream on a fill instead of the client's: the fill must bring a whole
# response to store (as nginx does); the client's own ones are answered from it.
FILL_DROP = (b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since",
             b"range", b"if-range")


cdef double wall_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef extern from *:
    """
    static inline int64_t fastproxy_stamp_load(int64_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fastproxy_stamp_raise(int64_t* p, int64_t v) {
        int64_t seen = __atomic_load_n(p, __ATOMIC_ACQUIRE);
        while (seen < v && !__atomic_compare_exchange_n(p, &seen, v, 0, __ATOMIC_ACQ_REL,
                                                         __ATOMIC_ACQUIRE)) {}
    }
    """
    int64_t fastproxy_stamp_load(int64_t* p) nogil
    void fastproxy_stamp_raise(int64_t* p, int64_t v) nogil


cdef class Stamps:
    """Invalidations seen by every worker: `size` slots (a power of two) in shared
    memory, mapped by the master before it forks, each the latest time (wall
    clock, ns) a key hashing to it was invalidated. A stored response whose
    fetch began before its slot's time is not used (two keys sharing a slot
    cost each other a miss, never a stale answer)."""

    def __cinit__(self, Py_ssize_t size=65536):
        self.size = table_size(size)
        self.mask = <uint64_t>(self.size - 1)
        self._bytes = <size_t>self.size * sizeof(int64_t)
        self.slots = <int64_t*>shared_map(self._bytes)

    def __dealloc__(self):
        if self.slots != NULL:
            munmap(self.slots, self._bytes)

    cdef bint outdated(self, uint64_t key, double fetched) noexcept nogil:
        """A response for `key` whose fetch began at `fetched` (wall seconds) was
        invalidated since."""
        cdef int64_t stamp = fastproxy_stamp_load(&self.slots[key & self.mask])
        return stamp != 0 and <double>stamp >= fetched * 1e9

    cdef void mark(self, uint64_t key, double now) noexcept nogil:
        fastproxy_stamp_raise(&self.slots[key & self.mask], <int64_t>(now * 1e9))

    def invalidate(self, uint64_t key, now=None):
        """Mark `key` invalidated at `now` (wall seconds; default: now)."""
        self.mark(key, wall_now() if now is None else now)


cdef class Stored:
    """One stored response (complete, decoded body)."""

    def __cinit__(self, int status, bytes reason, list headers, bytes body,
                  double request_time, double response_time, fresh, bytes variant):
        cdef list lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.request_time = request_time
        self.response_time = response_time
        self.fresh = fresh
        self.fresh_until = response_time + fresh.lifetime - fresh.corrected_initial_age
        self.no_cache = fresh.no_cache
        self.initial_age = fresh.corrected_initial_age
        self.variant = variant
        for name, value in headers:
            lines.append(name + b": " + value + b"\r\n")
        self.prefix = b"".join(lines)
        self.length_line = b"Content-Length: %d\r\n" % len(body)
        self.size = len(self.prefix) + len(body) + 256  # + this object and its lists

    def age(self, double now):
        """The Age the response has at `now` (RFC 9111 §4.2.3)."""
        return self.initial_age + (now - self.response_time if now > self.response_time else 0)


cdef class Variants:
    """The responses stored under one primary key whose response said Vary."""

    def __cinit__(self, tuple names):
        self.names = names
        self.entries = {}
        self.size = 0


cdef class RouteCache:
    """A [caches.NAME] in one worker: the index and the fills in flight."""

    def __cinit__(self, spec):
        self.name = spec.name
        self.index = CacheIndex(spec.memory)
        self.template = Template(spec.key)  # compiled from the config's
        self.key_source = spec.key.source
        self.policy = cachepolicy.Policy(
            heuristic_fraction=spec.heuristic_fraction, heuristic_max=spec.heuristic_max,
            default_ttl_by_status=dict(spec.valid), store_set_cookie=spec.store_set_cookie,
            ignore_no_cache_request=spec.ignore_client_no_cache,
            max_object_size=spec.max_object,
            stale_while_revalidate=spec.stale_while_revalidate,
            stale_if_error=spec.stale_if_error)
        self.max_object = spec.max_object
        self.lock_timeout = spec.lock_timeout
        self.debug = spec.debug
        self.fills = {}
        self.status_name = b"fastproxy"

    # -- lookups ------------------------------------------------------------------------
    cdef object lookup(self, uint64_t primary, MessageHead head):
        """The stored response for this request (its variant), or None."""
        found = self.index.get(primary)
        if found is None:
            return None
        if type(found) is Stored:
            if self.stamps is not None and self.stamps.outdated(
                    primary, (<Stored>found).request_time):
                self.index.remove(primary)  # invalidated by another worker
                return None
            return found
        variants = <Variants>found
        found = variants.entries.get(cachepolicy.secondary_key(variants.names, head.headers()))
        if found is not None and self.stamps is not None and self.stamps.outdated(
                primary, (<Stored>found).request_time):
            self.index.remove(primary)
            return None
        return found

    cdef bint plain(self, MessageHead head) except -1:
        """A request whose stored answer depends only on freshness."""
        cdef bytes name
        for name in _DIRECTIVES:
            if head.get(name) is not None:
                return False
        return True

    def decide(self, Stored stored, list request_headers, double now):
        """cachepolicy.serve for a stored response and this request."""
        return cachepolicy.serve(stored.fresh, stored.response_time, now,
                                 cachepolicy.RequestDirectives.from_headers(request_headers),
                                 self.policy)

    def usable_on_error(self, Stored stored, list request_headers, double now):
        return cachepolicy.usable_on_error(
            stored.fresh, stored.response_time, now,
            cachepolicy.RequestDirectives.from_headers(request_headers))

    # -- storing ------------------------------------------------------------------------
    def admit(self, bytes method, list request_headers, MessageHead head,
              double request_time, double response_time):
        """(storable, reason, freshness or None) for an upstream response, by its head."""
        response_headers = head.headers()
        ok, reason = cachepolicy.storable(method, head.status, request_headers,
                                          response_headers, self.policy)
        if not ok:
            return False, reason, None
        return True, reason, cachepolicy.freshness(response_headers, head.status, request_time,
                                                   response_time, self.policy)

    def store(self, uint64_t primary, list request_headers, MessageHead head, bytes body,
              double request_time, double response_time, fresh):
        """Store a complete response; the Stored, or None when it cannot be."""
        response_headers = head.headers()
        names = cachepolicy.vary_names(response_headers)
        if names is None:
            return None  # Vary: * (admit refused it already)
        kept = [(name, value) for name, value in response_headers
                if name.lower() not in _NOT_STORED]
        variant = cachepolicy.secondary_key(names, request_headers) if names else b""
        stored = Stored(head.status, head.reason or b"", kept, body, request_time,
                        response_time, fresh, variant)
        self.put(primary, stored, names)
        return stored

    cdef int put(self, uint64_t primary, Stored stored, tuple names) except -1:
        cdef Variants variants
        if not names:
            self.index.put(primary, stored, stored.size)
            return 0
        found = self.index.peek(primary)
        if type(found) is Variants and (<Variants>found).names == names:
            variants = <Variants>found
        else:
            variants = Variants(names)
        old = variants.entries.get(stored.variant)
        if old is not None:
            variants.size -= (<Stored>old).size
        variants.entries[stored.variant] = stored
        variants.size += stored.size
        self.index.put(primary, variants, variants.size)
        return 0

    def refreshed(self, uint64_t primary, Stored stored, list request_headers,
                  MessageHead head, double request_time, double response_time):
        """A 304 to our revalidation: the stored response with the 304's fields
        (RFC 9111 §4.3.4), stored again; None when the 304 does not match it."""
        not_modified = head.headers()
        if not cachepolicy.freshens(stored.headers, not_modified):
            return None
        merged = cachepolicy.merge_not_modified(stored.headers, not_modified)
        fresh = cachepolicy.freshness(merged, stored.status, request_time, response_time,
                                      self.policy)
        kept = [(name, value) for name, value in merged if name.lower() not in _NOT_STORED]
        new = Stored(stored.status, stored.reason, kept, stored.body, request_time,
                     response_time, fresh, stored.variant)
        names = cachepolicy.vary_names(merged)
        self.put(primary, new, names or ())
        return new

    def set_stamps(self, Stamps stamps):
        """Share invalidations with the other workers (the master's table)."""
        self.stamps = stamps

    def invalidate(self, uint64_t primary):
        self.index.remove(primary)
        if self.stamps is not None:
            self.stamps.mark(primary, wall_now())

    def invalidate_after(self, uint64_t primary, bytes method, int status, bytes host,
                         bytes target, list response_headers, bytes scheme):
        """RFC 9111 §4.4: a successful unsafe request invalidates its target, and the
        Location and Content-Location URIs of the same origin (those only with the
        default key, which can be made for another URI)."""
        self.invalidate(primary)
        if self.key_source != DEFAULT_KEY:
            return
        for other_host, other_target in cachepolicy.invalidations(
                method, status, host, target, response_headers, scheme=scheme):
            self.invalidate(cache_key(scheme + b"://" + other_host + other_target))

    # -- answers --------------------------------------------------------------------------
    def status_line(self, bint hit=False, fwd=None, fwd_status=None, ttl=None, stored=None,
                    collapsed=None, key=None, detail=None):
        """A Cache-Status line (RFC 9211); the key only when debugging."""
        return b"Cache-Status: " + cachepolicy.cache_status(
            "fastproxy", hit=hit, fwd=fwd, fwd_status=fwd_status, ttl=ttl, stored=stored,
            collapsed=collapsed, key=key if self.debug else None, detail=detail) + b"\r\n"

    # -- client requests answered from a stored response ----------------------------------
    def conditional(self, Stored stored, list request_headers, double now):
        """304 when the client's conditionals match the stored response, else None."""
        return cachepolicy.client_conditional(request_headers, stored.headers,
                                              stored.response_time, now)

    def not_modified_lines(self, Stored stored):
        return b"".join(name + b": " + value + b"\r\n"
                        for name, value in cachepolicy.not_modified_headers(stored.headers))

    def validator_lines(self, Stored stored):
        """If-None-Match / If-Modified-Since lines to revalidate `stored`, or b""."""
        return b"".join(name + b": " + value + b"\r\n"
                        for name, value in cachepolicy.validators(stored.headers))

    def byte_range(self, Stored stored, MessageHead head):
        """The one byte range a GET asks of `stored` (RFC 9110 §14): (start, end)
        inclusive; None to send the whole response (no Range, an If-Range that does
        not match, several ranges, or a syntax we do not serve); (-1, -1) when the
        range cannot be satisfied (416)."""
        cdef Py_ssize_t size = len(stored.body)
        value = head.get(b"range")
        if value is None or stored.status != 200:
            return None
        if_range = head.get(b"if-range")
        if if_range is not None:
            etag = None
            for name, v in stored.headers:
                if name.lower() == b"etag":
                    etag = v
            if if_range.startswith((b'"', b"W/")):
                if etag is None or etag.startswith(b"W/") or if_range != etag:
                    return None  # strong comparison only (§13.1.5)
            else:
                return None  # a date: not used (weak validators cannot vouch for ranges)
        unit, _, spec = value.partition(b"=")
        if unit.strip().lower() != b"bytes" or b"," in spec:
            return None
        first, dash, last = spec.strip().partition(b"-")
        if not dash:
            return None
        try:
            if not first:  # the last N bytes
                n = int(last)
                if n <= 0:
                    return (-1, -1)
                return (max(0, size - n), size - 1) if size else (-1, -1)
            start = int(first)
            end = int(last) if last else size - 1
        except ValueError:
            return None
        if start >= size:
            return (-1, -1)
        if start < 0 or end < start:
            return None
        return (start, min(end, size - 1))
