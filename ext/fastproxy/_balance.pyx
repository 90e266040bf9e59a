"""Load-balancing selection: the `Balancer` contract and the unkeyed algorithms.

Every algorithm picks an index into `peers` in O(1) or O(log n) (a few scan
O(n) over small C arrays) and allocates nothing per pick. The proxy reports
each request's start and end (`started`/`finished`), which is what
least-connections, power-of-two-choices and peak-EWMA decide on. The hashing
family (ring, Maglev) lives in `_hashring`.
"""
import os

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport exp
from libc.limits cimport LLONG_MIN
from libc.stdint cimport uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastproxy._peers cimport ADMIN_DRAIN, ADMIN_ENABLED, PeerSlot, PeerTable, now_ns
from fastproxy.xxhash cimport XXH3_64bits


cdef uint64_t hash_bytes(const char* data, Py_ssize_t n) noexcept nogil:
    """The key hash of every keyed algorithm: xxh3-64, seed 0 (the same in
    every worker and across restarts)."""
    return XXH3_64bits(data, <size_t>n)


# Slow start ramps a weight in steps of 1/RAMP_SCALE of it, refreshed every RAMP_STEP.
DEF RAMP_SCALE = 100
DEF RAMP_STEP_NS = 50000000


cdef class Balancer:
    """Chooses one of `peers` per request (see _balance.pxd for the contract).

    Keywords: `table` and `slots`: the shared server state and the slot of each
    peer in it (default: a private table, every peer up); `max_conns`:
    per peer (0 = no limit); `slow_start`: seconds over which a peer coming
    back ramps up; `eject`: (failures in a row, seconds, max seconds) of the
    passive checks, failures 0 = off."""

    ramps_up = True  # slow start applies to the algorithm (the hashing ones: no)

    def __cinit__(self, peers, weights=None, *args, PeerTable table=None, slots=None,
                  max_conns=None, double slow_start=0.0, eject=None, **kwargs):
        cdef Py_ssize_t i, n = len(peers)
        if n == 0:
            raise ValueError("need at least one peer")
        if weights is None:
            weights = [1] * n
        if len(weights) != n:
            raise ValueError("need one weight per peer")
        if max_conns is None:
            max_conns = [0] * n
        if len(max_conns) != n:
            raise ValueError("need one max_conns per peer")
        if table is None:
            table = PeerTable(n)
        if slots is None:
            slots = range(n)
        if len(slots) != n:
            raise ValueError("need one slot per peer")
        if not slow_start >= 0:
            raise ValueError("slow_start must be >= 0")
        failures, eject_time, eject_max = eject if eject is not None else (0, 0.0, 0.0)
        if failures < 0 or (failures and not 0 < eject_time <= eject_max):
            raise ValueError("eject: need failures >= 0 and 0 < time <= max_time")
        self.peers = list(peers)
        self.n = n
        self.table = table
        # A class attribute: while this base __cinit__ runs, a subclass's cdef
        # overrides are not in place yet.
        self.ramps = slow_start > 0 and type(self).ramps_up
        scale = RAMP_SCALE if self.ramps else 1
        self.ramp_ns = <int64_t>(slow_start * 1e9)
        self.eject_after = failures
        self.eject_ns = <int64_t>(eject_time * 1e9)
        self.eject_max_ns = <int64_t>(eject_max * 1e9)
        self.weights = <long long*>PyMem_Malloc(n * sizeof(long long))
        self.active = <long long*>PyMem_Malloc(n * sizeof(long long))
        self.base = <long long*>PyMem_Malloc(n * sizeof(long long))
        self.max_conns = <long long*>PyMem_Malloc(n * sizeof(long long))
        self.live_idx = <Py_ssize_t*>PyMem_Malloc(n * sizeof(Py_ssize_t))
        self.fails = <int*>PyMem_Malloc(n * sizeof(int))
        self.slot_of = <Py_ssize_t*>PyMem_Malloc(n * sizeof(Py_ssize_t))
        if self.slot_of == NULL or (self.weights == NULL or self.active == NULL or self.base == NULL
                or self.max_conns == NULL or self.live_idx == NULL or self.fails == NULL):
            raise MemoryError()
        self.total_weight = 0
        self.capped = False
        for i in range(n):
            if weights[i] < 1:
                raise ValueError("weights must be positive")
            if max_conns[i] < 0:
                raise ValueError("max_conns must be >= 0")
            self.weights[i] = weights[i] * scale
            self.base[i] = weights[i] * scale
            self.active[i] = 0
            self.fails[i] = 0
            self.max_conns[i] = max_conns[i]
            self.capped = self.capped or max_conns[i] > 0
            self.total_weight += weights[i] * scale
            self.live_idx[i] = i
            if not 0 <= slots[i] < table.size:
                raise ValueError("a peer's slot lies outside the table")
            self.slot_of[i] = slots[i]
        self.live = n
        # The first choose() reads the table (and subclasses finish building first).
        self.seen = table.current() - 1

    def __dealloc__(self):
        PyMem_Free(self.weights)
        PyMem_Free(self.active)
        PyMem_Free(self.base)
        PyMem_Free(self.max_conns)
        PyMem_Free(self.live_idx)
        PyMem_Free(self.fails)
        PyMem_Free(self.slot_of)

    cdef int refresh(self) except -1:
        if self.table.current() != self.seen or (self.recheck and now_ns() >= self.recheck):
            self.rebuild()
        return 0

    cdef bint usable(self, Py_ssize_t i) except -1:
        """Peer i may take a request bound to it (a sticky client): up, not ejected,
        not disabled (a drained one still takes its own clients), below its
        max_conns."""
        cdef PeerSlot* s
        self.refresh()
        if self.weights[i] == 0:
            s = &self.table.slots[self.slot_of[i]]
            if not (s.admin == ADMIN_DRAIN and s.health != 0 and now_ns() >= s.ejected_until):
                return False
        return self.max_conns[i] == 0 or self.active[i] < self.max_conns[i]

    cdef Py_ssize_t choose(self, uint64_t key) except -2:
        """The peer for a request with key hash `key`; NO_PEER or ALL_BUSY."""
        cdef Py_ssize_t i, k, j
        self.refresh()
        if self.live == 0:
            return NO_PEER
        i = self.select(key)
        if not self.capped or self.active[i] < self.max_conns[i] or self.max_conns[i] == 0:
            return i
        # At its max_conns: the next live peer with room, in order.
        for k in range(self.live):
            j = self.live_idx[k]
            if j > i and (self.max_conns[j] == 0 or self.active[j] < self.max_conns[j]):
                return j
        for k in range(self.live):
            j = self.live_idx[k]
            if j >= i:
                break
            if self.max_conns[j] == 0 or self.active[j] < self.max_conns[j]:
                return j
        return ALL_BUSY

    cdef Py_ssize_t choose_other(self, uint64_t key, list tried) except -2:
        """As choose, but not one of the peer indexes in `tried` (a retry):
        the algorithm's choice if it was not tried, else the next live peer
        after it (in order) that was not and has room; NO_PEER when none."""
        cdef Py_ssize_t i, k, j, start
        i = self.choose(key)
        if i == ALL_BUSY:
            return NO_PEER
        if i < 0 or i not in tried:
            return i
        start = 0
        while start < self.live and self.live_idx[start] <= i:
            start += 1
        for k in range(self.live):
            j = self.live_idx[(start + k) % self.live]
            if j not in tried and (self.max_conns[j] == 0 or self.active[j] < self.max_conns[j]):
                return j
        return NO_PEER

    cdef int rebuild(self) except -1:
        """Bring the weights up to date with the shared state: 0 for a peer that
        is down or ejected, a ramped weight during slow start."""
        cdef Py_ssize_t i
        cdef int64_t now = now_ns(), recheck = 0, since
        cdef long long w
        cdef PeerSlot* s
        self.seen = self.table.current()
        self.live = 0
        self.total_weight = 0
        for i in range(self.n):
            s = &self.table.slots[self.slot_of[i]]
            w = 0
            if s.health != 0 and s.admin == ADMIN_ENABLED:
                if now < s.ejected_until:
                    if recheck == 0 or s.ejected_until < recheck:
                        recheck = s.ejected_until
                else:
                    w = self.base[i]
                    since = now - s.up_since
                    if self.ramps and s.up_since != 0 and since < self.ramp_ns:
                        w = w * (since * RAMP_SCALE // self.ramp_ns + 1) // RAMP_SCALE
                        if w < 1:
                            w = 1
                        if recheck == 0 or now + RAMP_STEP_NS < recheck:
                            recheck = now + RAMP_STEP_NS
            self.weights[i] = w
            if w:
                self.live_idx[self.live] = i
                self.live += 1
                self.total_weight += w
        self.recheck = recheck
        self.reweighted()
        return 0

    cdef int reweighted(self) except -1:
        """Hook: the weights changed (subclasses rebuild what depends on them)."""
        return 0

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        raise NotImplementedError

    cdef void started(self, Py_ssize_t i) noexcept:
        self.active[i] += 1

    cdef void finished(self, Py_ssize_t i, double seconds) noexcept:
        if self.active[i] > 0:
            self.active[i] -= 1

    cdef void report(self, Py_ssize_t i, bint ok) noexcept:
        """Passive checks: the outcome of one try on peer i."""
        cdef PeerSlot* s = &self.table.slots[self.slot_of[i]]
        cdef int64_t now
        if ok:
            self.fails[i] = 0
            if s.ejections != 0 and now_ns() >= s.ejected_until:
                # The probe after an ejection (not a late answer from before it).
                self.table.probe_passed(self.slot_of[i])
            return
        if self.eject_after == 0:
            return
        now = now_ns()
        if now < s.ejected_until:
            return  # a request sent before the ejection: already counted
        self.fails[i] += 1
        if self.fails[i] >= self.eject_after or s.ejections != 0:
            # The threshold, or the probe after an ejection, failed.
            self.fails[i] = 0
            self.table.eject(self.slot_of[i], self.eject_ns, self.eject_max_ns)

    cpdef object pick(self):
        """The next peer for a request without a key (None: none is usable)."""
        cdef Py_ssize_t i = self.choose(0)
        return self.peers[i] if i >= 0 else None

    cpdef object pick_key(self, bytes key):
        """The peer for a request whose hash_key is `key` (None: none is usable)."""
        cdef Py_ssize_t i = self.choose(hash_bytes(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)))
        return self.peers[i] if i >= 0 else None

    # For tests and tools: the proxy calls the C methods.
    def select_index(self, uint64_t key=0):
        """choose(key): a peer index, -1 (NO_PEER) when none is usable, -3
        (ALL_BUSY) when every usable one is at its max_conns."""
        return self.choose(key)

    def select_other(self, uint64_t key, tried):
        return self.choose_other(key, list(tried))

    def start(self, Py_ssize_t i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.started(i)

    def finish(self, Py_ssize_t i, double seconds=0.0):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.finished(i, seconds)

    def outcome(self, Py_ssize_t i, bint ok):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.report(i, ok)

    def in_flight(self):
        return [self.active[i] for i in range(self.n)]

    def current_weights(self):
        """The weights the last choose() used (0: not usable)."""
        return [self.weights[i] for i in range(self.n)]


@cython.final
cdef class RetryBudget:
    """A token bucket bounding retries to a fraction of the requests: each
    request adds `ratio` tokens, each retry takes one; it starts with, and holds
    at most, `capacity` tokens (a burst allowance). Ratio 0: no tokens ever."""

    def __cinit__(self, double ratio, double capacity=10.0):
        if not 0 <= ratio <= 1 or not capacity >= 1:
            raise ValueError("need 0 <= ratio <= 1 and capacity >= 1")
        self.ratio = ratio
        self.capacity = capacity
        self.tokens = capacity if ratio > 0 else 0.0  # 0: no retries but after connect failures

    cdef void deposit(self) noexcept:
        self.tokens += self.ratio
        if self.tokens > self.capacity:
            self.tokens = self.capacity

    cdef bint withdraw(self) noexcept:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def add_request(self):
        self.deposit()

    def take_retry(self):
        return self.withdraw()


def key_hash(bytes key not None):
    """hash_bytes for Python (tests compare it with the xxhash package's xxh3_64)."""
    return hash_bytes(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


DEF OUT_OF_TURN = -(1 << 62)


@cython.final
cdef class RoundRobin(Balancer):
    """Smooth weighted round robin, as nginx: peers in proportion to their
    weights, interleaved (a, a, b, a, c, a, a for 5:1:1). With equal weights it
    is plain round robin."""

    def __cinit__(self, peers, weights=None, *args, **kwargs):
        cdef Py_ssize_t i
        self._current = <long long*>PyMem_Malloc(self.n * sizeof(long long))
        if self._current == NULL:
            raise MemoryError()
        for i in range(self.n):
            self._current[i] = 0

    def __dealloc__(self):
        PyMem_Free(self._current)

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t i, best = -1, n = self.n
        cdef long long c, top = LLONG_MIN
        cdef long long* current = self._current
        cdef const long long* weights = self.weights
        if self.live == 1:
            return self.live_idx[0]
        for i in range(n):
            c = current[i] + weights[i]
            current[i] = c
            if c > top:
                top = c
                best = i
        current[best] -= self.total_weight
        return best

    cdef int reweighted(self) except -1:
        # A peer that is not usable sits far below any other (no branch in
        # select); one that is usable again starts afresh.
        cdef Py_ssize_t i
        for i in range(self.n):
            if self.weights[i] == 0:
                self._current[i] = OUT_OF_TURN
            elif self._current[i] == OUT_OF_TURN:
                self._current[i] = 0
        return 0


@cython.final
cdef class LeastConn(Balancer):
    """The peer with the fewest requests in flight per unit of weight (least
    active[i]/weights[i], compared as cross products: no floats). Each scan
    starts just after the previous pick, so peers that tie take turns."""

    def __cinit__(self, peers, weights=None, *args, **kwargs):
        self._start = 0

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t start = self._start
        cdef Py_ssize_t best = start
        if self.live != self.n:
            best = self._least_live(start)
        elif self.active[start] != 0:  # nothing beats an idle peer
            # Scan start+1 .. n-1, then 0 .. start-1: the first of equals wins.
            best = _least(self.active, self.weights, start + 1, self.n, start)
            if self.active[best] != 0:
                best = _least(self.active, self.weights, 0, start, best)
        self._start = best + 1 if best + 1 < self.n else 0
        return best

    cdef Py_ssize_t _least_live(self, Py_ssize_t start) noexcept:
        """select() while some peers are not usable: the same rule over live_idx,
        from the first live peer at or after `start`."""
        cdef Py_ssize_t s0 = 0, best, live = self.live
        cdef const Py_ssize_t* idx = self.live_idx
        while s0 < live and idx[s0] < start:
            s0 += 1
        if s0 == live:
            s0 = 0
        best = _least_of(self.active, self.weights, idx, s0 + 1, live, idx[s0])
        if self.active[best] != 0:
            best = _least_of(self.active, self.weights, idx, 0, s0, best)
        return best


cdef inline Py_ssize_t _least_of(const long long* active, const long long* weights,
                                 const Py_ssize_t* idx, Py_ssize_t lo, Py_ssize_t hi,
                                 Py_ssize_t best) noexcept nogil:
    """_least over the peers idx[lo .. hi-1]."""
    cdef Py_ssize_t k, i
    cdef long long a = active[best], w = weights[best]
    if a == 0:
        return best
    for k in range(lo, hi):
        i = idx[k]
        if active[i] * w < a * weights[i]:
            best, a, w = i, active[i], weights[i]
            if a == 0:
                break
    return best


cdef inline Py_ssize_t _least(const long long* active, const long long* weights, Py_ssize_t lo,
                              Py_ssize_t hi, Py_ssize_t best) noexcept nogil:
    """The peer in {best} and lo..hi-1 with the least active/weight, `best` on a tie,
    stopping at the first idle one."""
    cdef Py_ssize_t i
    cdef long long a = active[best], w = weights[best]
    for i in range(lo, hi):
        if active[i] * w < a * weights[i]:
            best, a, w = i, active[i], weights[i]
            if a == 0:
                break
    return best


# -- randomness ----------------------------------------------------------------------------
# splitmix64 (Steele, Lea, Flood 2014): one add and two multiplies per draw, passes
# BigCrush, any 64-bit state is a good seed. Each balancer seeds its own state from
# os.urandom; a forked child mixes a fresh salt into every state on its next draw,
# so workers forked after construction do not make the same choices.

cdef uint64_t _fork_salt = 0
cdef unsigned long _fork_generation = 0


def _reseed_after_fork():
    global _fork_salt, _fork_generation
    _fork_salt = int.from_bytes(os.urandom(8), "little")
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


cdef uint64_t _seed(seed) except? 0:
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    return seed & 0xFFFFFFFFFFFFFFFF


cdef inline uint64_t _next_random(uint64_t* state, unsigned long* generation) noexcept:
    cdef uint64_t z
    if generation[0] != _fork_generation:
        generation[0] = _fork_generation
        state[0] ^= _fork_salt
    state[0] += 0x9E3779B97F4A7C15ULL
    z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef long long* _prefix_sums(long long* weights, Py_ssize_t n) except NULL:
    cdef Py_ssize_t i
    cdef long long* prefix = <long long*>PyMem_Malloc(n * sizeof(long long))
    if prefix == NULL:
        raise MemoryError()
    prefix[0] = weights[0]
    for i in range(1, n):
        prefix[i] = prefix[i - 1] + weights[i]
    return prefix


cdef inline Py_ssize_t _search(const long long* prefix, Py_ssize_t n, long long r) noexcept:
    """The first i with prefix[i] > r (0 <= r < prefix[n-1])."""
    cdef Py_ssize_t mid, lo = 0, hi = n - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if prefix[mid] > r:
            hi = mid
        else:
            lo = mid + 1
    return lo


# The modulo's bias is total/2**64: nil for any real sum of weights.

cdef inline Py_ssize_t _draw(uint64_t x, const long long* prefix, Py_ssize_t n,
                             long long total) noexcept:
    """Peer i with probability weights[i]/total."""
    return _search(prefix, n, <long long>(x % <uint64_t>total))


cdef inline Py_ssize_t _draw_other(uint64_t x, const long long* prefix, const long long* weights,
                                   Py_ssize_t n, long long total, Py_ssize_t a) noexcept:
    """Peer i != a with probability weights[i]/(total - weights[a]): draw over the
    other peers' weight and skip a's slice of the line (no retry loop)."""
    cdef long long r = <long long>(x % <uint64_t>(total - weights[a]))
    if r >= prefix[a] - weights[a]:
        r += weights[a]
    return _search(prefix, n, r)


cdef class WeightedDraw(Balancer):
    """The base of Random and P2C: prefix sums of the weights and the PRNG state.
    `seed` is for tests; by default os.urandom."""

    def __cinit__(self, peers, weights=None, *args, seed=None, **kwargs):
        self._prefix = _prefix_sums(self.weights, self.n)
        self._rng = _seed(seed)
        self._fork_gen = _fork_generation

    def __dealloc__(self):
        PyMem_Free(self._prefix)

    cdef int reweighted(self) except -1:
        cdef Py_ssize_t i
        if self._prefix != NULL:
            self._prefix[0] = self.weights[0]
            for i in range(1, self.n):
                self._prefix[i] = self._prefix[i - 1] + self.weights[i]
        return 0


@cython.final
cdef class Random(WeightedDraw):
    """Weighted random: peer i with probability weights[i]/total, by binary search
    over the prefix sums (O(log n))."""

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        return _draw(_next_random(&self._rng, &self._fork_gen), self._prefix, self.n,
                     self.total_weight)


@cython.final
cdef class P2C(WeightedDraw):
    """Power of two choices: two distinct peers drawn as Random draws them, the one
    with fewer requests in flight per unit of weight wins (a tie: the first drawn)."""

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t a, b
        if self.live == 1:
            return self.live_idx[0]
        a = _draw(_next_random(&self._rng, &self._fork_gen), self._prefix, self.n,
                  self.total_weight)
        b = _draw_other(_next_random(&self._rng, &self._fork_gen), self._prefix, self.weights,
                        self.n, self.total_weight, a)
        if self.active[b] * self.weights[a] < self.active[a] * self.weights[b]:
            return b
        return a


@cython.final
cdef class Ewma(Balancer):
    """Peak-EWMA, as Finagle and Linkerd: each peer has a latency estimate; a sample
    above it replaces it at once (peak), one below pulls it down with weight
    1 - exp(-elapsed/decay), elapsed being the time since that peer's last update.
    A failed request (seconds < 0) counts as a sample of `penalty` seconds (default
    1 s: far above a healthy latency, so a failing peer is avoided at once, yet it
    decays like any sample). Between samples an estimate decays towards 0 (as
    tower's PeakEwma does when it reads the load), so a peer that was slow or failed
    once is retried after a while instead of being shunned for ever; peers start at
    `initial` seconds (small: new peers get tried).
    cost(i) = estimate(i) * (active[i] + 1) / weights[i]; a pick draws two distinct
    peers uniformly (the weight is already in the cost) and takes the cheaper one
    (a tie: the first drawn)."""

    def __cinit__(self, peers, weights=None, *args, decay=10.0, penalty=1.0, initial=0.01,
                  seed=None, **kwargs):
        cdef Py_ssize_t i
        cdef double now
        if not decay > 0 or not penalty >= 0 or not initial > 0:
            raise ValueError("need decay > 0, penalty >= 0 and initial > 0")
        self._decay = decay
        self._penalty = penalty
        self._frozen_now = -1.0
        self._rng = _seed(seed)
        self._fork_gen = _fork_generation
        self._estimate = <double*>PyMem_Malloc(self.n * sizeof(double))
        self._stamp = <double*>PyMem_Malloc(self.n * sizeof(double))
        if self._estimate == NULL or self._stamp == NULL:
            raise MemoryError()
        now = self._now()
        for i in range(self.n):
            self._estimate[i] = initial
            self._stamp[i] = now

    def __dealloc__(self):
        PyMem_Free(self._estimate)
        PyMem_Free(self._stamp)

    cdef double _now(self) noexcept:
        cdef timespec ts
        if self._frozen_now >= 0:
            return self._frozen_now
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9

    cdef double _cost(self, Py_ssize_t i, double now) noexcept:
        cdef double elapsed = now - self._stamp[i]
        cdef double estimate = self._estimate[i]
        if elapsed > 0:
            estimate *= exp(-elapsed / self._decay)
        return estimate * <double>(self.active[i] + 1) / <double>self.weights[i]

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t a, b, n = self.live
        cdef double now
        if n == 1:
            return self.live_idx[0]
        a = <Py_ssize_t>(_next_random(&self._rng, &self._fork_gen) % <uint64_t>n)
        b = <Py_ssize_t>(_next_random(&self._rng, &self._fork_gen) % <uint64_t>(n - 1))
        if b >= a:
            b += 1
        a = self.live_idx[a]
        b = self.live_idx[b]
        now = self._now()
        if self._cost(b, now) < self._cost(a, now):
            return b
        return a

    cdef void finished(self, Py_ssize_t i, double seconds) noexcept:
        cdef double now, elapsed, w
        cdef double sample = seconds if seconds >= 0 else self._penalty
        Balancer.finished(self, i, seconds)
        if seconds != seconds:
            return  # NaN: ended without saying anything about the server
        now = self._now()
        if sample > self._estimate[i]:
            self._estimate[i] = sample
        else:
            elapsed = now - self._stamp[i]
            w = exp(-elapsed / self._decay) if elapsed > 0 else 1.0
            self._estimate[i] = self._estimate[i] * w + sample * (1.0 - w)
        self._stamp[i] = now

    # For tests and tools.
    def freeze_clock(self, now=None):
        """Use `now` (monotonic seconds, >= 0) as the time from here on; None: the clock."""
        if now is not None and not now >= 0:
            raise ValueError("now must be >= 0")
        self._frozen_now = -1.0 if now is None else now

    def estimates(self):
        """Each peer's estimate (seconds) as of its last update, before idle decay."""
        return [self._estimate[i] for i in range(self.n)]

    def costs(self):
        """Each peer's cost now (what a pick compares)."""
        cdef double now = self._now()
        return [self._cost(i, now) for i in range(self.n)]
