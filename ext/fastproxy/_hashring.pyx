"""Consistent hashing: a ketama-style ring and a Maglev table, with bounded loads.

Both map the request's key hash (`hash_bytes`: xxh3-64, seed 0, see _balance)
to a peer so that the same key goes to the same peer in every worker and
after a restart, and adding or removing one peer moves only about 1/n of the
keys. Peers are placed by *name* (default: their index as a string), not by
position, so a peer keeps its keys when others come and go.

Bounded load (`factor` > 1, 0 = off; HAProxy's hash-balance-factor,
"Consistent Hashing with Bounded Loads", Mirrokni et al. 2018): peer i may take
a request only while

    active[i] + 1 <= ceil(factor * (total_active + 1) * weights[i] / total_weight)

(with equal weights: ceil(factor * (total_active + 1) / n)). When the key's
peer is full the pick walks on: the ring to the following points, Maglev to
the following table slots (key + 1, key + 2, ... mod M), and takes the first
peer with room. Since the bounds add up to factor * (total_active + 1) >
total_active, some peer always has room, and every peer owns at least one
point or slot, so the walk ends within one lap.

A peer that is down or ejected (weight 0, see _balance.Balancer.rebuild) is
walked past the same way, so its keys spread over the following peers and
the others' keys stay where they are; it gets its own keys back when it
returns. Slow start does not apply here: the returning peer's keys come back
at once (ramping would move keys twice).
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy

from fastproxy._balance cimport Balancer
from fastproxy.xxhash cimport XXH3_64bits, XXH3_64bits_withSeed

# Maglev table sizes: the first prime above 2**k. The default is the smallest
# one above 100 * total_weight, which keeps every peer's share within about 1 %
# of its weight's.
MAGLEV_PRIMES = (65537, 131101, 262147, 524309, 1048583, 2097169, 4194319, 8388617,
                 16777259)
# Seeds of the two name hashes that give a Maglev peer its offset and skip.
DEF OFFSET_SEED = 1
DEF SKIP_SEED = 2
MAX_RING_POINTS = 1 << 26


cdef inline bint has_room(HashBalancer b, Py_ssize_t i) noexcept:
    # active + 1 <= ceil(x)  <=>  active < x, for an integer active.
    return b.active[i] < <double>(b.total_active + 1) * b._share[i]


cdef inline bint takes(HashBalancer b, Py_ssize_t i) noexcept:
    """Peer i may take the request: usable now and, with bounded load, has room."""
    return b.weights[i] != 0 and (b.factor == 0.0 or has_room(b, i))


cdef tuple peer_names(names, Py_ssize_t n):
    if names is None:
        return tuple([str(i) for i in range(n)])
    names = tuple(names)
    if len(names) != n:
        raise ValueError("need one name per peer")
    for name in names:
        if not isinstance(name, str):
            raise TypeError("peer names must be str")
    if len(set(names)) != n:
        raise ValueError("peer names must be unique")
    return names


cdef class HashBalancer(Balancer):
    """The base of Ring and Maglev: peer names and bounded-load bookkeeping."""

    ramps_up = False  # a returning peer takes its keys back at once

    def __cinit__(self, peers, weights=None, *args, names=None, double factor=0.0, **kwargs):
        if not (factor == 0.0 or factor > 1.0):
            raise ValueError("factor must be 0 (off) or greater than 1")
        self.names = peer_names(names, self.n)
        self.factor = factor
        self.total_active = 0
        self._share = <double*>PyMem_Malloc(self.n * sizeof(double))
        if self._share == NULL:
            raise MemoryError()
        self.reweighted()

    def __dealloc__(self):
        PyMem_Free(self._share)

    cdef int reweighted(self) except -1:
        # Down peers have weight 0, so no room; the others share the bound.
        cdef Py_ssize_t i
        if self._share != NULL and self.total_weight > 0:
            for i in range(self.n):
                self._share[i] = self.factor * <double>self.weights[i] / <double>self.total_weight
        return 0

    cdef void started(self, Py_ssize_t i) noexcept:
        Balancer.started(self, i)
        self.total_active += 1

    cdef void finished(self, Py_ssize_t i, double seconds) noexcept:
        if self.active[i] > 0:
            self.total_active -= 1
        Balancer.finished(self, i, seconds)


ctypedef struct RingPoint:
    uint64_t hash
    int32_t peer


cdef int compare_points(const void* a, const void* b) noexcept nogil:
    cdef const RingPoint* x = <const RingPoint*>a
    cdef const RingPoint* y = <const RingPoint*>b
    if x.hash != y.hash:
        return -1 if x.hash < y.hash else 1
    return (x.peer > y.peer) - (x.peer < y.peer)


cdef Py_ssize_t format_label(char* buf, const char* name, Py_ssize_t size,
                             Py_ssize_t replica) noexcept nogil:
    # buf = name + b"#" + decimal(replica); returns the length.
    cdef char digits[24]
    cdef Py_ssize_t k = 0, length = size + 1
    memcpy(buf, name, size)
    buf[size] = b'#'
    while True:
        digits[k] = <char>(48 + replica % 10)
        k += 1
        replica //= 10
        if replica == 0:
            break
    while k > 0:
        k -= 1
        buf[length] = digits[k]
        length += 1
    return length


@cython.final
cdef class Ring(HashBalancer):
    """A ketama-style ring: peer i has vnodes * weights[i] points, the
    xxh3-64 hashes of f"{name}#{replica}" (UTF-8) for replica in
    range(vnodes * weights[i]). A key goes to the first point at or after it,
    wrapping around (ties between equal points: the lower peer index first).
    O(log points) per pick."""

    def __cinit__(self, peers, weights=None, *, names=None, Py_ssize_t vnodes=160,
                  double factor=0.0, **kwargs):
        cdef Py_ssize_t i, r, k = 0, total, size, length
        cdef RingPoint* points
        cdef char* buf
        cdef bytes raw
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        if self.total_weight > MAX_RING_POINTS // vnodes:
            raise ValueError("too many ring points (vnodes * total weight)")
        self.vnodes = vnodes
        total = vnodes * self.total_weight
        self._npoints = total
        self._hashes = <uint64_t*>PyMem_Malloc(total * sizeof(uint64_t))
        self._owners = <int32_t*>PyMem_Malloc(total * sizeof(int32_t))
        points = <RingPoint*>PyMem_Malloc(total * sizeof(RingPoint))
        if self._hashes == NULL or self._owners == NULL or points == NULL:
            PyMem_Free(points)
            raise MemoryError()
        try:
            for i in range(self.n):
                raw = (<str>self.names[i]).encode("utf-8")
                size = len(raw)
                buf = <char*>PyMem_Malloc(size + 24)
                if buf == NULL:
                    raise MemoryError()
                for r in range(vnodes * self.weights[i]):
                    length = format_label(buf, raw, size, r)
                    points[k].hash = XXH3_64bits(buf, <size_t>length)
                    points[k].peer = <int32_t>i
                    k += 1
                PyMem_Free(buf)
            qsort(points, <size_t>total, sizeof(RingPoint), compare_points)
            for k in range(total):
                self._hashes[k] = points[k].hash
                self._owners[k] = points[k].peer
        finally:
            PyMem_Free(points)

    def __dealloc__(self):
        PyMem_Free(self._hashes)
        PyMem_Free(self._owners)

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t lo = 0, hi = self._npoints, mid, k, peer, step
        cdef uint64_t* hashes = self._hashes
        while lo < hi:
            mid = (lo + hi) >> 1
            if hashes[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo == self._npoints:
            lo = 0
        peer = self._owners[lo]
        if takes(self, peer):
            return peer
        k = lo
        for step in range(self._npoints - 1):
            k += 1
            if k == self._npoints:
                k = 0
            if takes(self, self._owners[k]):
                return self._owners[k]
        return self.live_idx[0]  # unreachable: every peer owns a point

    def points(self):
        """The ring as (hash, peer index) pairs in ring order (for tests and tools)."""
        return [(self._hashes[k], self._owners[k]) for k in range(self._npoints)]


cdef bint is_prime(Py_ssize_t m):
    cdef Py_ssize_t d = 3
    if m < 2 or m % 2 == 0:
        return m == 2
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


cdef void maglev_populate(int32_t* table, Py_ssize_t m, const long long* weights, Py_ssize_t n,
                          const int32_t* order, uint64_t* next_slot,
                          const uint64_t* skips) noexcept nogil:
    cdef Py_ssize_t i, k, filled = 0
    cdef long long turn
    cdef uint64_t c
    for c in range(<uint64_t>m):
        table[c] = -1
    while True:
        for k in range(n):
            i = order[k]
            for turn in range(weights[i]):
                c = next_slot[i]
                while table[c] >= 0:
                    c = (c + skips[i]) % <uint64_t>m
                table[c] = <int32_t>i
                next_slot[i] = (c + skips[i]) % <uint64_t>m
                filled += 1
                if filled == m:
                    return


@cython.final
cdef class Maglev(HashBalancer):
    """The Maglev lookup table (Eisenbud et al., NSDI 2016). Table size M is a
    prime (default: the smallest of MAGLEV_PRIMES above 100 * total_weight; an
    explicit one must be a prime >= total_weight). Peer i walks its
    permutation offset, offset + skip, ... (mod M), with offset = xxh3(name,
    seed=1) % M and skip = xxh3(name, seed=2) % (M - 1) + 1, and claims the
    next free slot of it on each of its turns; the peers take turns in the
    order of their names (so the table depends on the names and weights, not
    on the peers' order), peer i weights[i] turns a round, until the table is
    full. A key
    goes to table[key % M]: O(1) per pick."""

    def __cinit__(self, peers, weights=None, *, names=None, Py_ssize_t table_size=0,
                  double factor=0.0, **kwargs):
        cdef Py_ssize_t i, k, m = table_size
        cdef uint64_t* offsets
        cdef uint64_t* skips
        cdef int32_t* order
        cdef bytes raw
        if m == 0:
            for m in MAGLEV_PRIMES:
                if m > 100 * self.total_weight:
                    break
            else:
                raise ValueError("too many peers (or too much weight) for a Maglev table")
        elif m < self.total_weight or m >= 1 << 31 or not is_prime(m):
            raise ValueError("table_size must be a prime >= the total weight")
        self.table_size = m
        self._table = <int32_t*>PyMem_Malloc(m * sizeof(int32_t))
        offsets = <uint64_t*>PyMem_Malloc(self.n * sizeof(uint64_t))
        skips = <uint64_t*>PyMem_Malloc(self.n * sizeof(uint64_t))
        order = <int32_t*>PyMem_Malloc(self.n * sizeof(int32_t))
        try:
            if self._table == NULL or offsets == NULL or skips == NULL or order == NULL:
                raise MemoryError()
            for i, k in enumerate(sorted(range(self.n), key=self.names.__getitem__)):
                order[i] = <int32_t>k
            for i in range(self.n):
                raw = (<str>self.names[i]).encode("utf-8")
                offsets[i] = XXH3_64bits_withSeed(<char*>raw, <size_t>len(raw), OFFSET_SEED) % <uint64_t>m
                skips[i] = XXH3_64bits_withSeed(<char*>raw, <size_t>len(raw), SKIP_SEED) % <uint64_t>(m - 1) + 1
            maglev_populate(self._table, m, self.weights, self.n, order, offsets, skips)
        finally:
            PyMem_Free(order)
            PyMem_Free(offsets)
            PyMem_Free(skips)

    def __dealloc__(self):
        PyMem_Free(self._table)

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t m = self.table_size
        cdef Py_ssize_t slot = <Py_ssize_t>(key % <uint64_t>m)
        cdef Py_ssize_t peer = self._table[slot], step
        if takes(self, peer):
            return peer
        for step in range(m - 1):
            slot += 1
            if slot == m:
                slot = 0
            if takes(self, self._table[slot]):
                return self._table[slot]
        return self.live_idx[0]  # unreachable: every peer owns a slot

    def lookup_table(self):
        """The table as a list of peer indexes (for tests and tools)."""
        return [self._table[k] for k in range(self.table_size)]
