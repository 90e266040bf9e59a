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
from fastproxy.xxhash cimport (XXH3_64bits_digest, XXH3_64bits_reset, XXH3_64bits_update,
                               XXH3_createState, XXH3_freeState, XXH3_state_t)
from fastproxy._ratelimit cimport shared_map, table_size
from posix.mman cimport munmap
from posix.stat cimport S_ISREG, fstat, struct_stat
from posix.unistd cimport close
from libc.errno cimport errno, ENOENT, ENOTDIR, ENOSYS, EINVAL, E2BIG
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from fastproxy._http cimport MessageHead
from fastproxy._actions cimport Template

import dataclasses
from email.utils import formatdate

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


def format_http_date(double when):
    return formatdate(when, usegmt=True)


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
    int64_t fastproxy_counter_add "__atomic_add_fetch"(int64_t* p, int64_t v, int order) nogil
    void fastproxy_counter_store "__atomic_store_n"(int64_t* p, int64_t v, int order) nogil
    int ATOMIC_SEQ_CST "__ATOMIC_SEQ_CST"


cdef extern from *:
    """
    #include <fcntl.h>
    #include <stdint.h>
    #include <sys/syscall.h>
    #include <sys/uio.h>
    #include <unistd.h>
    #include <errno.h>
    /* openat2 (Linux 5.6; RESOLVE_CACHED 5.12) and preadv2 (4.6; RWF_NOWAIT on
       buffered reads 4.14), called directly: older C libraries (manylinux) do not
       declare them. Where the numbers are unknown the calls fail with ENOSYS and
       the disk tier reads in threads only. */
    #if !defined(__NR_openat2) && (defined(__x86_64__) || defined(__aarch64__))
    #define __NR_openat2 437
    #endif
    #if !defined(__NR_preadv2) && defined(__x86_64__)
    #define __NR_preadv2 327
    #elif !defined(__NR_preadv2) && defined(__aarch64__)
    #define __NR_preadv2 286
    #endif
    struct fastproxy_open_how { uint64_t flags; uint64_t mode; uint64_t resolve; };
    static int fastproxy_open_cached(const char* path) {
    #ifdef __NR_openat2
        /* O_NONBLOCK: a FIFO under an entry's name does not wait for a writer;
           O_NOFOLLOW: a symlink there is not ours (the thread removes it). */
        struct fastproxy_open_how how = {O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW, 0,
                                         0x20 /* RESOLVE_CACHED */};
        return (int)syscall(__NR_openat2, AT_FDCWD, path, &how, sizeof(how));
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }
    static long fastproxy_pread_nowait(int fd, char* buf, size_t n) {
    #ifdef __NR_preadv2
        struct iovec iov = {buf, n};
        return syscall(__NR_preadv2, fd, &iov, 1, 0L, 0L, 0x8 /* RWF_NOWAIT */);
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }
    """
    int open_cached "fastproxy_open_cached"(const char* path) nogil
    long pread_nowait "fastproxy_pread_nowait"(int fd, char* buf, size_t n) nogil


cdef bint _cached_reads = True  # cleared when the kernel lacks openat2/RESOLVE_CACHED


def read_cached(bytes path, Py_ssize_t limit):
    """The whole file at `path`, its mtime and inode, read only from the kernel's caches
    (openat2 with RESOLVE_CACHED, preadv2 with RWF_NOWAIT): it never waits for a
    device, so the event loop may call it. None: there is no such file (the
    kernel's cache says so). False: it would have to wait, the file is larger
    than `limit` or not a regular file, or the kernel cannot do this: read it in
    a thread."""
    global _cached_reads
    cdef int fd
    cdef struct_stat st
    cdef long got
    cdef bytes data
    if not _cached_reads:
        return False
    fd = open_cached(path)
    if fd < 0:
        if errno == ENOENT or errno == ENOTDIR:
            return None
        if errno == ENOSYS or errno == EINVAL or errno == E2BIG:
            _cached_reads = False  # an older kernel: threads only, from now on
        return False  # EAGAIN (not all cached), or an error the thread will report
    try:
        if fstat(fd, &st) != 0 or not S_ISREG(st.st_mode) or st.st_size > limit:
            return False
        data = PyBytes_FromStringAndSize(NULL, st.st_size)
        if st.st_size:
            got = pread_nowait(fd, PyBytes_AS_STRING(data), <size_t>st.st_size)
            if got != st.st_size:
                if got < 0 and (errno == ENOSYS or errno == EINVAL):
                    _cached_reads = False
                return False  # EAGAIN or a short read: not all in the page cache
        return data, st.st_mtime, st.st_ino
    finally:
        close(fd)


cdef class ContentHash:
    """XXH3-64 over pieces, in order: the disk tier's check of a file's body and
    header (about 10x faster than zlib's crc32; the GIL is released while it runs)."""
    cdef XXH3_state_t* state

    def __cinit__(self):
        self.state = XXH3_createState()
        if self.state == NULL:
            raise MemoryError()
        XXH3_64bits_reset(self.state)

    def __dealloc__(self):
        if self.state != NULL:
            XXH3_freeState(self.state)

    def update(self, const unsigned char[::1] data not None):
        cdef size_t n = data.shape[0]
        if n:
            with nogil:
                XXH3_64bits_update(self.state, &data[0], n)

    def digest(self):
        return XXH3_64bits_digest(self.state)


cdef class SharedCounter:
    """One number in shared memory, mapped before the fork, changed atomically by
    every process (the disk tier's bytes in use: the writers add, the evictor
    sets it after a scan)."""

    def __cinit__(self):
        self.value_ptr = <int64_t*>shared_map(4096)

    def __dealloc__(self):
        if self.value_ptr != NULL:
            munmap(self.value_ptr, 4096)

    def add(self, int64_t n):
        """Add `n` (may be negative); the new value."""
        return fastproxy_counter_add(self.value_ptr, n, ATOMIC_SEQ_CST)

    def set(self, int64_t n):
        fastproxy_counter_store(self.value_ptr, n, ATOMIC_SEQ_CST)

    @property
    def value(self):
        return fastproxy_stamp_load(self.value_ptr)


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

    def invalidated(self, uint64_t key, double fetched):
        """A response for `key` whose fetch began at `fetched` was invalidated since."""
        return self.outdated(key, fetched)

    def invalidate(self, uint64_t key, now=None):
        """Mark `key` invalidated at `now` (wall seconds; default: now)."""
        self.mark(key, wall_now() if now is None else now)


# -- purges (the admin API) ----------------------------------------------------------

cdef extern from *:
    """
    #include <string.h>
    #define FP_PURGE_SLOTS 4096
    #define FP_PURGE_TEXT 2048
    #define FP_PURGE_NAME 64
    typedef struct {
        int64_t seq;        /* 0 while being written */
        int64_t time_ns;    /* wall clock: what was fetched before is purged */
        int32_t kind, soft, name_len, text_len;
        char name[FP_PURGE_NAME];  /* the cache, "" for all */
        char text[FP_PURGE_TEXT];  /* the URL, prefix or tag */
    } fp_purge_t;
    typedef struct {
        int64_t seq;        /* the last purge written */
        int32_t lock;       /* held by a writer (an old and a new admin process may overlap) */
        fp_purge_t slots[FP_PURGE_SLOTS];
    } fp_purges_t;
    #include <sched.h>
    static inline void fp_lock(int32_t* lock) {
        while (__atomic_exchange_n(lock, 1, __ATOMIC_ACQUIRE)) sched_yield();
    }
    static inline void fp_unlock(int32_t* lock) { __atomic_store_n(lock, 0, __ATOMIC_RELEASE); }
    static inline void fp_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    static inline void fp_store(int64_t* p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    enum: FP_PURGE_SLOTS
    enum: FP_PURGE_TEXT
    enum: FP_PURGE_NAME
    ctypedef struct fp_purge_t:
        int64_t seq
        int64_t time_ns
        int kind, soft, name_len, text_len
        char name[64]
        char text[2048]
    ctypedef struct fp_purges_t:
        int64_t seq
        int lock
        fp_purge_t slots[4096]
    void fp_lock(int* lock) nogil
    void fp_unlock(int* lock) nogil
    void fp_fence() nogil
    void fp_store(int64_t* p, int64_t v) nogil
    void* memcpy(void* dst, const void* src, size_t n) nogil


PURGE_KINDS = {"url": 1, "prefix": 2, "tag": 3, "all": 4}
PURGE_KIND_NAMES = {v: k for k, v in PURGE_KINDS.items()}
PURGE_SLOTS = FP_PURGE_SLOTS
PURGE_TEXT_MAX = FP_PURGE_TEXT
PURGE_NAME_MAX = FP_PURGE_NAME


cdef class Purges:
    """The purges asked of the admin API, seen by every worker: a ring of the last
    PURGE_SLOTS in shared memory, mapped by the master before it forks. One
    process writes (the admin process; the master before forking); each worker
    reads what is new, under a sequence number per slot so that a slot rewritten
    while it is read is noticed. A purge applies to what was fetched before its
    time: workers check a stored response against the purges newer than it the
    first time they meet it (see RouteCache.purged)."""

    def __cinit__(self):
        self._bytes = sizeof(fp_purges_t)
        self.table = shared_map(self._bytes)

    def __dealloc__(self):
        if self.table != NULL:
            munmap(self.table, self._bytes)

    cdef int64_t current(self) noexcept nogil:
        return fastproxy_stamp_load(&(<fp_purges_t*>self.table).seq)

    @property
    def seq(self):
        """The number of the last purge written (0: none yet)."""
        return self.current()

    def add(self, str kind, bytes text, str cache="", bint soft=False, time=None):
        """Write a purge; its sequence number. `kind`: url, prefix, tag or all."""
        cdef fp_purges_t* t = <fp_purges_t*>self.table
        cdef bytes name = cache.encode()
        cdef int code = PURGE_KINDS[kind]
        if len(text) > FP_PURGE_TEXT or len(name) > FP_PURGE_NAME:
            raise ValueError("too long")
        cdef int64_t when = <int64_t>((wall_now() if time is None else <double>time) * 1e9)
        cdef int64_t seq
        cdef fp_purge_t* slot
        cdef const char* name_p = PyBytes_AS_STRING(name)
        cdef const char* text_p = PyBytes_AS_STRING(text)
        cdef int name_len = len(name), text_len = len(text)
        with nogil:
            fp_lock(&t.lock)
            seq = t.seq + 1
            slot = &t.slots[seq % FP_PURGE_SLOTS]
            fp_store(&slot.seq, 0)
            fp_fence()
            slot.time_ns = when
            slot.kind = code
            slot.soft = soft
            slot.name_len = name_len
            slot.text_len = text_len
            memcpy(slot.name, name_p, name_len)
            memcpy(slot.text, text_p, text_len)
            fp_fence()
            fp_store(&slot.seq, seq)
            fp_store(&t.seq, seq)
            fp_unlock(&t.lock)
        return seq

    def since(self, int64_t after):
        """The purges after number `after`: a list of (seq, time, kind, soft, cache,
        text), oldest first, and whether some were lost (written over before they
        were read: more than PURGE_SLOTS since `after`)."""
        cdef fp_purges_t* t = <fp_purges_t*>self.table
        cdef int64_t last = self.current()
        cdef int64_t seq, first = after + 1
        cdef fp_purge_t copy
        cdef fp_purge_t* slot
        cdef bint lost = False
        cdef list found = []
        if last - after > FP_PURGE_SLOTS:
            first = last - FP_PURGE_SLOTS + 1
            lost = True
        seq = first
        while seq <= last:
            slot = &t.slots[seq % FP_PURGE_SLOTS]
            if fastproxy_stamp_load(&slot.seq) != seq:
                lost = True  # written over meanwhile
                seq += 1
                continue
            memcpy(&copy, slot, sizeof(fp_purge_t))
            fp_fence()
            if fastproxy_stamp_load(&slot.seq) != seq or copy.text_len > FP_PURGE_TEXT \
                    or copy.name_len > FP_PURGE_NAME:
                lost = True
                seq += 1
                continue
            found.append((seq, copy.time_ns * 1e-9, PURGE_KIND_NAMES.get(copy.kind, "all"),
                          bool(copy.soft), copy.name[:copy.name_len].decode(),
                          copy.text[:copy.text_len]))
            seq += 1
        return found, lost


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
        self.tags = ()
        self.purge_seq = 0

    def expire(self, double at):
        """A soft purge: stale from `at` on (still there to revalidate, and for
        stale-if-error); nothing changes when it is stale by then already."""
        if self.fresh_until <= at:
            return
        self.fresh = dataclasses.replace(
            self.fresh, lifetime=max(0.0, at - self.response_time + self.initial_age),
            lifetime_detail="purged (soft) at " + format_http_date(at))
        self.fresh_until = at

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
            max_object_size=spec.store_limit,
            stale_while_revalidate=spec.stale_while_revalidate,
            stale_if_error=spec.stale_if_error)
        self.max_object = spec.max_object
        self.capture_limit = spec.max_object
        self.store_limit = spec.store_limit
        self.lock_timeout = spec.lock_timeout
        self.debug = spec.debug
        self.fills = {}
        self.status_name = b"fastproxy"
        self.stats_base = -1
        self.tag_headers = tuple(name.lower().encode() for name in spec.tag_headers)
        self.rules = []

    # -- lookups ------------------------------------------------------------------------
    cdef object lookup(self, uint64_t primary, MessageHead head):
        """The stored response for this request (its variant), or None."""
        found = self.index.get(primary)
        if found is None:
            return None
        if type(found) is not Stored:
            variants = <Variants>found
            found = variants.entries.get(cachepolicy.secondary_key(variants.names,
                                                                   head.headers()))
            if found is None:
                return None
        if self.stamps is not None and self.stamps.outdated(primary,
                                                            (<Stored>found).request_time):
            self.index.remove(primary)  # invalidated by another worker
            return None
        if self.purges is not None and (<Stored>found).purge_seq != self.purges.current() \
                and self.purged(primary, <Stored>found):
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
              double request_time, double response_time, fresh, bytes key=None, write=None,
              done=None, bytes url=None):
        """Store a complete response: in memory when `body` is not None and within
        max_object; in Redis when `body` is not None (the tier checks its own
        max_object); on disk through `write`, a diskcache.DiskWrite that has the
        body; `key` is the key text. Returns the Stored kept in memory, or None.
        `done(ok)` is called once the disk write is over, or without one the Redis
        write (not at all without either)."""
        response_headers = head.headers()
        names = cachepolicy.vary_names(response_headers)
        if names is None:  # Vary: * (admit refused it already)
            if write is not None:
                write.abort()
            if done is not None and (write is not None or self.redis is not None):
                done(False)
            return None
        kept = [(name, value) for name, value in response_headers
                if name.lower() not in _NOT_STORED]
        variant = cachepolicy.secondary_key(names, request_headers) if names else b""
        stored = Stored(head.status, head.reason or b"", kept, body if body is not None else b"",
                        request_time, response_time, fresh, variant)
        stored.url = url
        if self.tag_headers:
            stored.tags = cachepolicy.tags_of(response_headers, self.tag_headers)
        if write is not None:
            write.commit(key, stored, names, done)
        if body is None:
            return None
        if self.redis is not None and key is not None:
            if self.stamps is None or not self.stamps.outdated(primary, request_time):
                self.redis.write(primary, key, stored, names, done if write is None else None)
            elif write is None and done is not None:
                done(False)  # invalidated while it was fetched: not shared
        if len(body) > self.max_object:
            return None
        self.put(primary, stored, names)
        return stored

    def selects(self, Stored stored, list request_headers):
        """`stored` is the variant a request with these fields asks for."""
        names = cachepolicy.vary_names(stored.headers)
        if names is None:
            return False
        variant = cachepolicy.secondary_key(names, request_headers) if names else b""
        return variant == stored.variant

    def adopt(self, uint64_t primary, Stored stored, tuple names):
        """A response read from disk or Redis: None when it was invalidated since it
        was fetched (its copies are removed); else kept in memory too, if it fits."""
        if self.stamps is not None and self.stamps.outdated(primary, stored.request_time):
            self.forget_shared(primary)
            return None
        if self.purges is not None and self.purged(primary, stored):
            return None
        if len(stored.body) <= self.max_object:
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

    cdef bint charge(self, uint64_t primary, Stored stored, long long extra) except -1:
        """`extra` more bytes kept with `stored` (its encoded forms): counted against the
        budget, as a put. False when `stored` is not in memory (any more): then the
        caller does not keep them."""
        cdef Variants variants
        found = self.index.peek(primary)
        if found is stored:
            stored.size += extra
            return self.index.put(primary, stored, stored.size) == 1
        if type(found) is Variants:
            variants = <Variants>found
            if variants.entries.get(stored.variant) is stored:
                stored.size += extra
                variants.size += extra
                return self.index.put(primary, variants, variants.size) == 1
        return False

    def refreshed(self, uint64_t primary, Stored stored, list request_headers,
                  MessageHead head, double request_time, double response_time, bytes key=None):
        """A 304 to our revalidation: the stored response with the 304's fields
        (RFC 9111 §4.3.4), stored again (unless they say Vary: *); None when the
        304 does not match it."""
        not_modified = head.headers()
        if not cachepolicy.freshens(stored.headers, not_modified):
            return None
        merged = cachepolicy.merge_not_modified(stored.headers, not_modified)
        fresh = cachepolicy.freshness(merged, stored.status, request_time, response_time,
                                      self.policy)
        kept = [(name, value) for name, value in merged if name.lower() not in _NOT_STORED]
        new = Stored(stored.status, stored.reason, kept, stored.body, request_time,
                     response_time, fresh, stored.variant)
        new.url = stored.url
        new.tags = (cachepolicy.tags_of(merged, self.tag_headers) if self.tag_headers
                    else stored.tags)
        names = cachepolicy.vary_names(merged)
        if names is None:
            # Vary: * now: it answers the request that revalidated, no other (stored
            # with no names it would answer every variant, in memory and on disk).
            return new
        if len(new.body) <= self.max_object:
            self.put(primary, new, names)
        if self.disk is not None and key is not None:
            self.disk.write_whole(primary, key, new, names)
        if self.redis is not None and key is not None:
            self.redis.write(primary, key, new, names)
        return new

    def set_stamps(self, Stamps stamps):
        """Share invalidations with the other workers (the master's table)."""
        self.stamps = stamps

    def set_purges(self, Purges purges):
        """Follow the admin API's purges (the master's table). What the table held
        before is applied too: those purges were made before this worker started."""
        self.purges = purges
        self.rules = []
        self.rules_seq = 0
        self.sync_purges()

    def poll_purges(self):
        """Read the purges written since the last look (a worker calls this every
        second, so that the ring is never written over before it is read)."""
        self.sync_purges()

    cdef int sync_purges(self) except -1:
        cdef double last_time
        cdef Py_ssize_t excess
        if self.purges is None or self.purges.current() == self.rules_seq:
            return 0
        found, lost = self.purges.since(self.rules_seq)
        if lost:
            # Purges were written over before this worker read them: what was
            # fetched before the oldest one still there may have been purged.
            self.index.clear()
            self.floor = max(self.floor, (<tuple>found[0])[1] if found else wall_now())
        last_time = (<tuple>self.rules[len(self.rules) - 1])[1] if self.rules else 0.0
        for seq, when, kind, soft, name, text in found:
            self.rules_seq = seq
            if name and name != self.name:
                continue
            # Kept in time order (a clock stepping back makes a purge reach later,
            # never earlier), so that `purged` can stop at the first older one.
            last_time = max(last_time, when)
            self.rules.append((seq, last_time, kind, soft, text))
        excess = len(self.rules) - PURGE_SLOTS
        if excess > 0:
            self.floor = max(self.floor, (<tuple>self.rules[excess - 1])[1])
            del self.rules[:excess]
        return 0

    cdef bint purged(self, uint64_t primary, Stored stored) except -1:
        """Check a stored response against the purges newer than it: True when one
        removes it (it is dropped from memory and disk here); a soft one makes it
        stale. Each purge is checked once per response."""
        cdef tuple rule
        cdef Py_ssize_t i
        cdef bint hit
        cdef bytes text
        self.sync_purges()
        if stored.request_time < self.floor:
            self.drop(primary)
            return True
        i = len(self.rules) - 1
        while i >= 0:
            rule = <tuple>self.rules[i]
            if <int64_t>rule[0] <= stored.purge_seq or <double>rule[1] <= stored.request_time:
                break  # checked before, or fetched after this purge (and all older ones)
            kind = rule[2]
            text = <bytes>rule[4]
            if kind == "url":
                hit = stored.url == text
            elif kind == "prefix":
                hit = stored.url is not None and stored.url.startswith(text)
            elif kind == "tag":
                hit = text in stored.tags
            else:
                hit = True
            if hit:
                if not rule[3]:
                    self.drop(primary)
                    return True
                stored.expire(<double>rule[1])
            i -= 1
        stored.purge_seq = self.rules_seq
        return False

    def drop(self, uint64_t primary):
        """Remove what is stored under a primary key, in memory, on disk and in Redis
        (whose deletion the other instances hear as an invalidation)."""
        self.index.remove(primary)
        self.forget_shared(primary)

    def set_disk(self, disk):
        """The disk tier of this cache in this worker (a diskcache.DiskStore)."""
        self.disk = disk

    def set_redis(self, redis):
        """The Redis tier of this cache in this worker (a rediscache.RedisCache)."""
        self.redis = redis
        self.capture_limit = max(self.max_object, redis.max_object)
        redis.on_invalidate = self.invalidated_elsewhere

    def invalidated_elsewhere(self, uint64_t primary):
        """Another instance invalidated `primary` (heard through Redis): this
        instance's copies go, in every worker's memory (the stamps) and on disk."""
        self.index.remove(primary)
        if self.stamps is not None:
            self.stamps.mark(primary, wall_now())
        if self.disk is not None:
            self.disk.remove(primary)

    def forget_shared(self, uint64_t primary):
        """Remove a primary key's copies from the disk and Redis tiers."""
        if self.disk is not None:
            self.disk.remove(primary)
        if self.redis is not None:
            self.redis.remove(primary)

    def invalidate(self, uint64_t primary):
        """Every copy of `primary` goes: this instance's (as when another one
        invalidated it) and Redis' (which tells the other instances)."""
        self.invalidated_elsewhere(primary)
        if self.redis is not None:
            self.redis.remove(primary)

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
