"""Rate limits shared by every worker of an instance: GCRA in shared memory.

One `LimitTable` per instance, mapped by the master before it forks (like the
server table in `_peers`): a fixed array of slots, so its memory is bounded. A
slot holds a key's hash and its GCRA "theoretical arrival time" (TAT); a
request at `now` is allowed when max(TAT, now) - now <= tolerance (burst x
interval), and then moves TAT to max(TAT, now) + interval. Workers update slots
with compare-and-swap, so two workers never both spend the same allowance.

Idle keys need no sweeping: a slot whose TAT is in the past holds no state (a
fresh key behaves the same), so a new key may take it over. A key looks at
PROBES slots from its hash; when all of them hold live keys, the one closest
to going idle (the smallest TAT) is taken over, and counted as an eviction:
under a flood of distinct keys the table forgets the keys nearest to being
forgiven anyway, rather than growing.
"""
import math

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

from fastproxy._peers cimport now_ns
from fastproxy.xxhash cimport XXH3_64bits_withSeed


cdef extern from *:
    """
    static inline uint64_t fastproxy_load64(uint64_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline int fastproxy_cas64(uint64_t* p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    }
    static inline int64_t fastproxy_loadi64(int64_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline int fastproxy_casi64(int64_t* p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    }
    static inline void fastproxy_storei64(int64_t* p, int64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline void fastproxy_store64(uint64_t* p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline void fastproxy_inc64(uint64_t* p) {
        __atomic_add_fetch(p, 1, __ATOMIC_RELAXED);
    }
    static inline void fastproxy_addi64(int64_t* p, int64_t v) {
        __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL);
    }
    """
    uint64_t fastproxy_load64(uint64_t* p) nogil
    bint fastproxy_cas64(uint64_t* p, uint64_t expected, uint64_t desired) nogil
    int64_t fastproxy_loadi64(int64_t* p) nogil
    bint fastproxy_casi64(int64_t* p, int64_t expected, int64_t desired) nogil
    void fastproxy_storei64(int64_t* p, int64_t v) nogil
    void fastproxy_store64(uint64_t* p, uint64_t v) nogil
    void fastproxy_inc64(uint64_t* p) nogil
    void fastproxy_addi64(int64_t* p, int64_t v) nogil


DEF PROBES = 8


cdef Py_ssize_t table_size(Py_ssize_t size) except -1:
    """`size` rounded up to a power of two, at least 64 (tables index by mask)."""
    cdef Py_ssize_t n = 64
    if size < 1 or size > (1 << 30):
        raise ValueError("size must be between 1 and 2**30")
    while n < size:
        n <<= 1
    return n


cdef void* shared_map(size_t size) except NULL:
    """Zeroed memory shared with the processes forked after this (MAP_SHARED)."""
    cdef void* mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
    if mem == MAP_FAILED:
        raise MemoryError("cannot map a shared table")
    return mem


cdef class LimitTable:
    """`size` slots (rounded up to a power of two, at least 64) in shared memory."""

    def __cinit__(self, Py_ssize_t size):
        cdef Py_ssize_t n = table_size(size)
        self.size = n
        self.mask = <uint64_t>(n - 1)
        self._bytes = 64 + <size_t>n * sizeof(LimitSlot)
        self._mem = shared_map(self._bytes)
        self._evictions = <uint64_t*>self._mem
        self.slots = <LimitSlot*>(<char*>self._mem + 64)  # anonymous maps start zeroed

    def __dealloc__(self):
        if self._mem != NULL:
            munmap(self._mem, self._bytes)

    @property
    def evictions(self):
        """Live keys taken over by new ones because their slots were all busy."""
        return fastproxy_load64(self._evictions)

    @property
    def memory(self):
        return self._bytes

    cdef int64_t acquire(self, uint64_t key, int64_t now, int64_t interval,
                         int64_t tolerance, int64_t* tat_out) noexcept nogil:
        """0 when one request of `key` is allowed now (tat_out: its new TAT), else
        the nanoseconds until one would be (tat_out: the current TAT)."""
        cdef uint64_t h = key | 1  # never 0 (0 marks a slot never used)
        cdef uint64_t i, k, start = h & self.mask
        cdef LimitSlot* s = NULL
        cdef LimitSlot* oldest = NULL
        cdef int64_t tat, t, oldest_tat = 0
        cdef int probe
        while s == NULL:
            # The key's own slot first, wherever it is in the probe run: a free slot
            # before it must not give the key a second, fresh state.
            for probe in range(PROBES):
                i = (start + <uint64_t>probe) & self.mask
                if fastproxy_load64(&self.slots[i].key) == h:
                    s = &self.slots[i]
                    break
            if s != NULL:
                break
            for probe in range(PROBES):
                i = (start + <uint64_t>probe) & self.mask
                k = fastproxy_load64(&self.slots[i].key)
                if k == h:
                    s = &self.slots[i]
                    break
                tat = fastproxy_loadi64(&self.slots[i].tat)
                if k == 0 or tat <= now:
                    # Never used, or idle (its state is the same as a fresh key's).
                    if fastproxy_cas64(&self.slots[i].key, k, h):
                        s = &self.slots[i]
                        break
                    if fastproxy_load64(&self.slots[i].key) == h:
                        s = &self.slots[i]  # another worker took it for the same key
                        break
                elif oldest == NULL or tat < oldest_tat:
                    oldest = &self.slots[i]
                    oldest_tat = tat
            if s == NULL:
                # Every probed slot holds a live key: take over the one nearest to
                # going idle (its owner's next request starts afresh).
                k = fastproxy_load64(&oldest.key)
                if fastproxy_cas64(&oldest.key, k, h):
                    fastproxy_storei64(&oldest.tat, now)
                    fastproxy_inc64(self._evictions)
                    s = oldest
                oldest = NULL
        while True:
            tat = fastproxy_loadi64(&s.tat)
            t = tat if tat > now else now
            if t - now > tolerance:
                tat_out[0] = t
                return t - now - tolerance
            if fastproxy_casi64(&s.tat, tat, t + interval):
                tat_out[0] = t + interval
                return 0

    # For tests and tools.
    def try_acquire(self, uint64_t key, double rate, long long burst, now=None):
        """(allowed, seconds to wait) for one request of `key` at `now` (seconds on
        CLOCK_MONOTONIC; default: now)."""
        cdef int64_t interval = <int64_t>(1e9 / rate)
        cdef int64_t tat
        cdef int64_t at = now_ns() if now is None else <int64_t>(now * 1e9)
        cdef int64_t wait = self.acquire(key, at, interval, burst * interval, &tat)
        return wait == 0, wait / 1e9


cdef class RateLimit:
    """One configured limit: `rate` requests per second per key with `burst`
    extra, keyed by the rendered `key` template, in `table`."""

    def __cinit__(self, str name, key, double rate, long long burst, LimitTable table not None,
                  long long delay=-1):
        if not rate > 0 or burst < 0:
            raise ValueError("need rate > 0 and burst >= 0")
        if delay < -1 or delay > burst:
            raise ValueError("delay must be -1 (never) or 0..burst")
        self.delay = delay
        self.name = name
        self.key = key
        self.rate = rate
        self.burst = burst
        self.interval = <int64_t>(1e9 / rate)
        if self.interval < 1:
            self.interval = 1
        self.tolerance = burst * self.interval if burst < (1 << 62) // self.interval else 1 << 62
        raw = name.encode()
        self.seed = XXH3_64bits_withSeed(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), 0)
        self.table = table
        self.delay_free = delay * self.interval if delay >= 0 else -1
        quota = burst + 1
        # The time a full quota takes to refill, in whole seconds (rounded up, with
        # a margin for the float division: 6 at 10/m is 36 s, not 37).
        window = max(1, math.ceil(quota / rate - 1e-9))
        self.policy = f'RateLimit-Policy: "{name}";q={quota};w={window}\r\n'.encode()

    cdef int64_t check(self, bytes key, int64_t now, long long* remaining,
                       int64_t* reset, int64_t* hold) noexcept:
        """0 when allowed, else ns to wait; remaining: requests left now; reset: ns
        until the quota is whole again; hold: with a `delay`, ns the allowed request
        waits before it goes on (as nginx's limit_req without nodelay: the excess
        past `delay` requests is spaced at the rate), else 0."""
        cdef int64_t tat
        cdef uint64_t h = XXH3_64bits_withSeed(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                                               self.seed)
        cdef int64_t wait = self.table.acquire(h, now, self.interval, self.tolerance, &tat)
        cdef int64_t room = now + self.tolerance - tat
        remaining[0] = room // self.interval + 1 if wait == 0 and room >= 0 else 0
        reset[0] = tat - now if tat > now else 0
        # The allowed request is the k-th in excess when tat = now + (k + 1) x interval.
        hold[0] = 0
        if wait == 0 and self.delay_free >= 0:
            room = tat - now - self.interval - self.delay_free
            if room > 0:
                hold[0] = room
        return wait

    def headers(self, bytes key, now=None):
        """(allowed, header lines) for one request of `key` (tests and tools)."""
        cdef long long remaining
        cdef int64_t reset, hold
        cdef int64_t at = now_ns() if now is None else <int64_t>(now * 1e9)
        cdef int64_t wait = self.check(key, at, &remaining, &reset, &hold)
        return wait == 0, self.lines(wait, remaining, reset)

    def check_now(self, bytes key):
        """(wait, remaining, reset, hold) in ns for one request of `key` now."""
        cdef long long remaining
        cdef int64_t reset, hold
        cdef int64_t wait = self.check(key, now_ns(), &remaining, &reset, &hold)
        return wait, remaining, reset, hold

    def hold(self, bytes key, now=None):
        """(allowed, seconds the request is held back) for one request of `key`."""
        cdef long long remaining
        cdef int64_t reset, hold
        cdef int64_t at = now_ns() if now is None else <int64_t>(now * 1e9)
        cdef int64_t wait = self.check(key, at, &remaining, &reset, &hold)
        return wait == 0, hold / 1e9

    cpdef bytes lines(self, int64_t wait, long long remaining, int64_t reset):
        """The RateLimit-Policy and RateLimit lines (and Retry-After when refused)."""
        cdef bytes out = self.policy + (
            b'RateLimit: "%s";r=%d;t=%d\r\n' % (self.name.encode(), remaining,
                                                (reset + 999999999) // 1000000000))
        if wait:
            out += b"Retry-After: %d\r\n" % ((wait + 999999999) // 1000000000)
        return out


DEF COUNT_PROBES = 16


cdef class ConnTable:
    """Open connections per client address, for the whole instance: `size` slots
    (a power of two, at least 64) in shared memory, each a key hash and a count.
    A slot whose count is 0 is free for any key. When every probed slot is busy
    the connection is let through uncounted (the table is sized for the clients
    one instance sees; better to under-count than to refuse everyone). A worker
    that dies leaves its connections counted until those clients' counts are
    taken over by others; the table is rebuilt on reload."""

    def __cinit__(self, Py_ssize_t size):
        cdef Py_ssize_t n = table_size(size)
        self.size = n
        self.mask = <uint64_t>(n - 1)
        self._bytes = <size_t>n * sizeof(CountSlot)
        self._mem = shared_map(self._bytes)
        self.slots = <CountSlot*>self._mem

    def __dealloc__(self):
        if self._mem != NULL:
            munmap(self._mem, self._bytes)

    cdef bint acquire(self, uint64_t key, int64_t limit) noexcept nogil:
        """Count one more connection of `key` unless it has `limit` open already."""
        cdef uint64_t h = key | 1, i, k, start = h & self.mask
        cdef CountSlot* s = NULL
        cdef int64_t c, seen
        cdef int probe
        for probe in range(COUNT_PROBES):
            i = (start + <uint64_t>probe) & self.mask
            k = fastproxy_load64(&self.slots[i].key)
            if k == h:
                s = &self.slots[i]
                break
            if (k == 0 or fastproxy_loadi64(&self.slots[i].count) <= 0) and \
                    fastproxy_cas64(&self.slots[i].key, k, h):
                s = &self.slots[i]
                break
        if s == NULL:
            return True
        while True:
            seen = fastproxy_loadi64(&s.count)
            c = seen if seen > 0 else 0
            if c >= limit:
                return False
            if fastproxy_casi64(&s.count, seen, c + 1):
                return True

    cdef void release(self, uint64_t key) noexcept nogil:
        cdef uint64_t h = key | 1, i, start = h & self.mask
        cdef int probe
        for probe in range(COUNT_PROBES):
            i = (start + <uint64_t>probe) & self.mask
            if fastproxy_load64(&self.slots[i].key) == h:
                if fastproxy_loadi64(&self.slots[i].count) > 0:
                    fastproxy_addi64(&self.slots[i].count, -1)
                return

    # For tests and tools.
    def open(self, bytes ip not None, long long limit):
        return self.acquire(ip_key(ip), limit)

    def close(self, bytes ip not None):
        self.release(ip_key(ip))

    def count(self, bytes ip not None):
        cdef uint64_t h = ip_key(ip) | 1, i, start = h & self.mask
        cdef int probe
        for probe in range(COUNT_PROBES):
            i = (start + <uint64_t>probe) & self.mask
            if self.slots[i].key == h:
                return max(0, self.slots[i].count)
        return 0


cpdef uint64_t ip_key(bytes ip):
    """The ConnTable key of a client address (as the proxy writes it)."""
    return XXH3_64bits_withSeed(PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip), 0x636f6e6e)


cdef class BanTable:
    """Automatic bans, for the whole instance (fail2ban style): a client refused
    `after` times within `window` (WAF blocks, 4xx answers...: the caller says
    what counts) is refused for `ban` seconds. `size` slots (a power of two, at
    least 64) in shared memory, each a key hash, a count state and a ban end.

    The count is a sliding window, estimated from two fixed ones (the current
    window's count plus the previous one's, weighted by how much of it still
    overlaps the sliding window), packed with the window's number into one
    64-bit word so that workers update it with compare-and-swap: window number
    (32 bits), previous count (16), current count (16). A ban starts the count
    afresh; refusals while banned do not count (a ban is not made longer by the
    refusals it causes). A slot is free for any key when its counts are stale
    and its ban is over; when the probed slots are all live, the one whose
    state ends first is taken over (counted in `evictions`).
    """

    def __cinit__(self, Py_ssize_t size, double window, long long after, double ban):
        cdef Py_ssize_t n = table_size(size)
        if after < 1 or after > 65535 or not window >= 0.001 or not ban > 0:
            raise ValueError("need 1 <= after <= 65535, window >= 1 ms and ban > 0")
        self.size = n
        self.mask = <uint64_t>(n - 1)
        self.window = <int64_t>(window * 1e9)
        self.after = after
        self.ban = <int64_t>(ban * 1e9)
        self._bytes = 64 + <size_t>n * sizeof(BanSlot)
        self._mem = shared_map(self._bytes)
        self._counters = <uint64_t*>self._mem
        self.slots = <BanSlot*>(<char*>self._mem + 64)

    def __dealloc__(self):
        if self._mem != NULL:
            munmap(self._mem, self._bytes)

    @property
    def evictions(self):
        return fastproxy_load64(&self._counters[0])

    @property
    def bans(self):
        """Bans made since the table was created (by every worker)."""
        return fastproxy_load64(&self._counters[1])

    cdef inline int64_t state_end(self, BanSlot* s, int64_t now) noexcept nogil:
        """When the slot's state stops mattering: its counts are stale two windows
        after theirs (window numbers wrap at 2**32: compared by difference), and
        its ban ends when it ends."""
        cdef uint64_t state = fastproxy_load64(&s.state)
        cdef uint64_t w = <uint64_t>(now // self.window) & 0xffffffffULL
        cdef uint64_t behind = (w - (state >> 32)) & 0xffffffffULL
        cdef int64_t end = now - <int64_t>behind * self.window + 2 * self.window
        cdef int64_t until = fastproxy_loadi64(&s.until)
        if state == 0:
            end = 0  # never counted
        return until if until > end else end

    cdef BanSlot* find(self, uint64_t h, int64_t now, bint take) noexcept nogil:
        """The slot of `h`; with `take`, a free one (or the one ending first) if
        it has none yet, else NULL."""
        cdef uint64_t i, k, start = h & self.mask
        cdef BanSlot* oldest = NULL
        cdef int64_t end, oldest_end = 0
        cdef int probe
        for probe in range(PROBES):  # the key's own slot first, wherever it is
            i = (start + <uint64_t>probe) & self.mask
            if fastproxy_load64(&self.slots[i].key) == h:
                return &self.slots[i]
        if not take:
            return NULL
        for probe in range(PROBES):
            i = (start + <uint64_t>probe) & self.mask
            k = fastproxy_load64(&self.slots[i].key)
            if k == h:
                return &self.slots[i]
            end = self.state_end(&self.slots[i], now)
            if k == 0 or end <= now:
                if fastproxy_cas64(&self.slots[i].key, k, h):
                    fastproxy_store64(&self.slots[i].state, 0)
                    fastproxy_storei64(&self.slots[i].until, 0)
                    return &self.slots[i]
                if fastproxy_load64(&self.slots[i].key) == h:
                    return &self.slots[i]
            elif oldest == NULL or end < oldest_end:
                oldest = &self.slots[i]
                oldest_end = end
        if oldest != NULL:
            k = fastproxy_load64(&oldest.key)
            if fastproxy_cas64(&oldest.key, k, h):
                fastproxy_store64(&oldest.state, 0)
                fastproxy_storei64(&oldest.until, 0)
                fastproxy_inc64(&self._counters[0])
                return oldest
        return NULL

    cdef int64_t banned(self, uint64_t key, int64_t now) noexcept nogil:
        """Nanoseconds left of `key`'s ban (0: not banned)."""
        cdef BanSlot* s = self.find(key | 1, now, False)
        cdef int64_t until
        if s == NULL:
            return 0
        until = fastproxy_loadi64(&s.until)
        return until - now if until > now else 0

    cdef int64_t event(self, uint64_t key, int64_t now) noexcept nogil:
        """Count one refusal of `key`: the length of the ban it starts (ns), else 0."""
        cdef BanSlot* s = self.find(key | 1, now, True)
        cdef uint64_t state, w, seen, prev, curr
        cdef double overlap
        if s == NULL:
            return 0
        w = <uint64_t>(now // self.window) & 0xffffffffULL
        overlap = 1.0 - <double>(now % self.window) / <double>self.window
        while True:
            if fastproxy_loadi64(&s.until) > now:
                return 0  # banned already
            state = fastproxy_load64(&s.state)
            seen = state >> 32
            if seen == w:
                prev = (state >> 16) & 0xffff
                curr = state & 0xffff
            elif ((seen + 1) & 0xffffffffULL) == w:
                prev = state & 0xffff
                curr = 0
            else:
                prev = 0
                curr = 0
            if curr < 0xffff:
                curr += 1
            if prev * overlap + curr >= self.after:
                if fastproxy_cas64(&s.state, state, w << 32):
                    fastproxy_storei64(&s.until, now + self.ban)
                    fastproxy_inc64(&self._counters[1])
                    return self.ban
            elif fastproxy_cas64(&s.state, state, (w << 32) | (prev << 16) | curr):
                return 0

    # For tests and tools: times in seconds on CLOCK_MONOTONIC (default: now).
    def record(self, bytes ip not None, now=None):
        """Count a refusal of `ip`: seconds of the ban it starts, else 0."""
        cdef int64_t at = now_ns() if now is None else <int64_t>(now * 1e9)
        return self.event(ip_key(ip), at) / 1e9

    def remaining(self, bytes ip not None, now=None):
        """Seconds left of `ip`'s ban (0: not banned)."""
        cdef int64_t at = now_ns() if now is None else <int64_t>(now * 1e9)
        return self.banned(ip_key(ip), at) / 1e9
