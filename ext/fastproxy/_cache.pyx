"""The in-memory cache index of a worker: uint64 key -> stored response, LRU
within a byte budget (and optionally a count).

Keys are hashes of the cache key (`cache_key`: XXH3-64 with a fixed seed,
so the disk tier can name files by it across restarts). The table is open
addressing with linear probing, and each slot holds the whole entry: key,
value (an owned PyObject*), size, and the LRU links as slot numbers. A hit
therefore costs the probe, which lands on the entry itself, plus the two LRU
neighbours it is unlinked from; nothing is allocated.

- Home slots mix the key with a random per-table seed: the keys come from
  client-chosen URLs, and with `key & mask` a client could precompute many
  URLs with one home slot and make every probe walk them.
- Deletion shifts the following entries of the cluster back (no tombstones),
  so lookups stay as short as the load factor says, after any number of
  removals. An entry that moves has its LRU neighbours repointed.
- The table doubles when 3/4 full; `clear()` shrinks it back. Tables of 2 MiB
  and more are mmap'd and advised for transparent huge pages, since lookups at
  a million entries are random reads over tens of MiB (TLB misses).
- Values leave the table (eviction, replacement) onto a small stack and are
  released, and shown to `on_evict`, only after the table is consistent: a
  destructor or a hook may call back into the index.
"""
import os

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastproxy.xxhash cimport XXH3_64bits_withSeed


cdef extern from "Python.h":
    void incref "Py_INCREF"(PyObject* o)
    void decref "Py_DECREF"(PyObject* o)


cdef extern from *:
    """
    #include <stdlib.h>
    #include <sys/mman.h>
    #define FASTPROXY_CACHE_NIL 0xFFFFFFFFu
    #define FASTPROXY_CACHE_MAP_MIN ((size_t)2 << 20)

    /* Zeroed memory for a table: calloc when small; mmap (zero pages, given back
       to the system on free, huge pages where the kernel agrees) when large. */
    static void* fastproxy_cache_alloc(size_t n) {
        if (n < FASTPROXY_CACHE_MAP_MIN) return calloc(1, n);
        void* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
    #ifdef MADV_HUGEPAGE
        madvise(p, n, MADV_HUGEPAGE);
    #endif
        return p;
    }
    static void fastproxy_cache_free(void* p, size_t n) {
        if (p == NULL) return;
        if (n < FASTPROXY_CACHE_MAP_MIN) free(p); else munmap(p, n);
    }
    """
    uint32_t NIL "FASTPROXY_CACHE_NIL"
    void* table_alloc "fastproxy_cache_alloc"(size_t n) nogil
    void table_free "fastproxy_cache_free"(void* p, size_t n) nogil


# Fixed: the disk tier names entries by this hash, across restarts and workers.
CACHE_KEY_SEED = 0x66617374_63616368   # "fastcach"
cdef uint64_t _CACHE_KEY_SEED = CACHE_KEY_SEED

cdef uint64_t MIN_CAPACITY = 16
cdef uint64_t MAX_CAPACITY = <uint64_t>1 << 31   # slot numbers stay below NIL


cpdef uint64_t cache_key(bytes key):
    """The index key of a cache key: XXH3-64 with CACHE_KEY_SEED."""
    return XXH3_64bits_withSeed(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key),
                                _CACHE_KEY_SEED)


cdef inline uint64_t home(uint64_t key, uint64_t seed, uint64_t mask) noexcept nogil:
    return XXH3_64bits_withSeed(&key, sizeof(key), seed) & mask


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


@cython.final
cdef class CacheIndex:
    """CacheIndex(budget, max_entries=0): entries of `size` bytes each, at most
    `budget` bytes in all and, unless 0, at most `max_entries` of them."""

    def __cinit__(self, long long budget, Py_ssize_t max_entries=0):
        if budget < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, not {budget}")
        if max_entries < 0:
            raise ValueError(f"cache max_entries must be >= 0, not {max_entries}")
        self.budget = budget
        self.max_entries = max_entries
        self.seed = int.from_bytes(os.urandom(8), "little")
        self.newest = NIL
        self.oldest = NIL
        self._resize(MIN_CAPACITY)

    def __dealloc__(self):
        cdef uint64_t i
        cdef PyObject* p
        if self.slots != NULL:
            for i in range(self.mask + 1):
                p = self.slots[i].value
                if p != NULL:
                    self.slots[i].value = NULL
                    decref(p)
            table_free(self.slots, self.table_bytes)
            self.slots = NULL
        PyMem_Free(self.released)   # empty: every put releases before it returns

    # -- the C API -------------------------------------------------------------------

    cdef Py_ssize_t find(self, uint64_t key) noexcept nogil:
        """The slot holding `key`, or -1."""
        cdef uint64_t mask = self.mask
        cdef uint64_t i = home(key, self.seed, mask)
        cdef CacheSlot* slots = self.slots
        while slots[i].value != NULL:
            if slots[i].key == key:
                return <Py_ssize_t>i
            i = (i + 1) & mask
        return -1

    cpdef object get(self, uint64_t key):
        """The value stored under `key` (now the most recently used), or None."""
        cdef Py_ssize_t i = self.find(key)
        if i < 0:
            return None
        if <uint32_t>i != self.newest:
            self._unlink(<uint32_t>i)
            self._link_newest(<uint32_t>i)
        return <object>self.slots[i].value

    cpdef object peek(self, uint64_t key):
        """The value stored under `key`, or None; the LRU order is left alone."""
        cdef Py_ssize_t i = self.find(key)
        if i < 0:
            return None
        return <object>self.slots[i].value

    cpdef int put(self, uint64_t key, object value, long long size) except -1:
        """Store `value` (charged `size` bytes) under `key` as the most recently used,
        replacing what was there and evicting least recently used entries until it
        fits. Returns 1, or 0 when `size` exceeds the whole budget: then nothing is
        stored and an earlier value under `key` is dropped (it is out of date)."""
        if size < 0:
            raise ValueError(f"cache entry size must be >= 0, not {size}")
        cdef Py_ssize_t base = self.n_released
        cdef Py_ssize_t found
        cdef uint64_t i, mask
        cdef CacheSlot* s
        cdef int stored = 0
        try:
            found = self.find(key)
            if found >= 0:
                self._take(<uint64_t>found, False)
            if size <= self.budget:
                while self.count > 0 and (
                        size > self.budget - self.bytes_used
                        or (self.max_entries > 0 and self.count >= self.max_entries)):
                    self._take(self.oldest, True)
                    self.evictions += 1
                if self.count >= self.grow_at:
                    self._resize((self.mask + 1) * 2)
                mask = self.mask
                i = home(key, self.seed, mask)
                while self.slots[i].value != NULL:
                    i = (i + 1) & mask
                s = &self.slots[i]
                s.key = key
                incref(<PyObject*>value)
                s.value = <PyObject*>value
                s.size = size
                self._link_newest(<uint32_t>i)
                self.count += 1
                self.bytes_used += size
                stored = 1
        finally:
            if self.n_released > base:
                self._release(base)
        return stored

    cpdef bint remove(self, uint64_t key) noexcept:
        """Drop the entry under `key` (not an eviction: on_evict is not called).
        Returns whether there was one."""
        cdef Py_ssize_t i = self.find(key)
        if i < 0:
            return False
        decref(self._detach(<uint64_t>i))   # the table is consistent again by now
        return True

    # -- internals -------------------------------------------------------------------

    cdef void _unlink(self, uint32_t i) noexcept nogil:
        cdef CacheSlot* slots = self.slots
        cdef CacheSlot* s = &slots[i]
        if s.older != NIL:
            slots[s.older].newer = s.newer
        else:
            self.oldest = s.newer
        if s.newer != NIL:
            slots[s.newer].older = s.older
        else:
            self.newest = s.older

    cdef void _link_newest(self, uint32_t i) noexcept nogil:
        cdef CacheSlot* slots = self.slots
        slots[i].older = self.newest
        slots[i].newer = NIL
        if self.newest != NIL:
            slots[self.newest].newer = i
        else:
            self.oldest = i
        self.newest = i

    cdef void _relink(self, uint32_t i) noexcept nogil:
        """The entry now in slot `i` moved there: point its neighbours at it."""
        cdef CacheSlot* slots = self.slots
        cdef CacheSlot* s = &slots[i]
        if s.older != NIL:
            slots[s.older].newer = i
        else:
            self.oldest = i
        if s.newer != NIL:
            slots[s.newer].older = i
        else:
            self.newest = i

    cdef void _vacate(self, uint64_t i) noexcept nogil:
        """Empty slot `i` (already unlinked), shifting back the entries after it in
        its cluster that may live closer to their home slot."""
        cdef CacheSlot* slots = self.slots
        cdef uint64_t mask = self.mask
        cdef uint64_t j = i
        cdef uint64_t h
        while True:
            j = (j + 1) & mask
            if slots[j].value == NULL:
                break
            h = home(slots[j].key, self.seed, mask)
            # The entry at j may move to i unless its home lies in (i, j].
            if ((j - h) & mask) >= ((j - i) & mask):
                slots[i] = slots[j]
                self._relink(<uint32_t>i)
                i = j
        slots[i].value = NULL

    cdef PyObject* _detach(self, uint64_t i) noexcept nogil:
        """Take the entry in slot `i` out of the table; returns its value (the
        reference passes to the caller)."""
        cdef PyObject* value = self.slots[i].value
        self._unlink(<uint32_t>i)
        self.bytes_used -= self.slots[i].size
        self.count -= 1
        self._vacate(i)
        return value

    cdef int _take(self, uint64_t i, bint evicted) except -1:
        """Detach slot `i` onto the release stack."""
        cdef Released* r
        cdef Py_ssize_t cap
        if self.n_released == self.released_cap:
            cap = self.released_cap * 2 if self.released_cap else 8
            r = <Released*>PyMem_Realloc(self.released, cap * sizeof(Released))
            if r == NULL:
                raise MemoryError()
            self.released = r
            self.released_cap = cap
        r = &self.released[self.n_released]
        r.key = self.slots[i].key
        r.evicted = evicted
        r.value = self._detach(i)
        self.n_released += 1
        return 0

    cdef int _release(self, Py_ssize_t base) except -1:
        """Release the values pushed since `base`, in order, calling on_evict for the
        evicted ones. A hook or a destructor may use the index meanwhile: its own
        pushes go above ours and are gone again when it returns. The first error of
        a hook is raised once every value is released."""
        cdef Py_ssize_t j = base
        cdef Released r
        cdef object value
        cdef object hook = self.on_evict
        cdef object error = None
        while j < self.n_released:
            r = self.released[j]        # re-read: a nested put may have moved the stack
            self.released[j].value = NULL
            j += 1
            value = <object>r.value
            decref(r.value)             # the stack's reference is `value`'s now
            if r.evicted and hook is not None:
                try:
                    hook(r.key, value)
                except BaseException as e:
                    if error is None:
                        error = e
                    else:
                        error.add_note(f"on_evict also raised {e!r}")
            value = None
        self.n_released = base
        if error is not None:
            raise error
        return 0

    cdef int _resize(self, uint64_t capacity) except -1:
        """Move every entry into a new table of `capacity` slots (LRU order kept)."""
        if capacity > MAX_CAPACITY:
            raise MemoryError(f"cache index: more than {MAX_CAPACITY * 3 // 4} entries")
        cdef size_t nbytes = capacity * sizeof(CacheSlot)
        cdef CacheSlot* table = <CacheSlot*>table_alloc(nbytes)
        if table == NULL:
            raise MemoryError(f"cache index: cannot allocate {nbytes} bytes")
        cdef uint64_t mask = capacity - 1
        cdef uint32_t src = self.oldest
        cdef uint32_t prev = NIL
        cdef uint32_t first = NIL
        cdef uint64_t dst
        cdef CacheSlot* s
        while src != NIL:
            s = &self.slots[src]
            dst = home(s.key, self.seed, mask)
            while table[dst].value != NULL:
                dst = (dst + 1) & mask
            table[dst] = s[0]
            table[dst].older = prev
            table[dst].newer = NIL
            if prev != NIL:
                table[prev].newer = <uint32_t>dst
            else:
                first = <uint32_t>dst
            prev = <uint32_t>dst
            src = s.newer
        table_free(self.slots, self.table_bytes)
        self.slots = table
        self.table_bytes = nbytes
        self.mask = mask
        self.grow_at = <Py_ssize_t>(capacity // 4 * 3)
        self.oldest = first
        self.newest = prev
        return 0

    # -- Python side: tests, tools, stats ----------------------------------------------

    def __len__(self) -> int:
        return self.count

    def __contains__(self, uint64_t key) -> bool:
        return self.find(key) >= 0

    @property
    def capacity(self) -> int:
        """Slots in the table (a power of two; it doubles at 3/4 full)."""
        return self.mask + 1

    @property
    def memory(self) -> int:
        """Bytes of the table itself (the stored values not counted)."""
        return self.table_bytes

    def home_slot(self, uint64_t key) -> int:
        """The slot where a probe for `key` starts (for tests)."""
        return home(key, self.seed, self.mask)

    def size_of(self, uint64_t key) -> int | None:
        cdef Py_ssize_t i = self.find(key)
        return None if i < 0 else self.slots[i].size

    def items_lru(self):
        """(key, value, size) of every entry, least recently used first (a snapshot)."""
        cdef list out = []
        cdef uint32_t i = self.oldest
        while i != NIL:
            out.append((self.slots[i].key, <object>self.slots[i].value, self.slots[i].size))
            i = self.slots[i].newer
        return iter(out)

    def clear(self) -> None:
        """Drop every entry (on_evict is not called) and shrink the table."""
        cdef list values = [None] * self.count     # allocated before anything changes
        cdef size_t nbytes = MIN_CAPACITY * sizeof(CacheSlot)
        cdef CacheSlot* fresh = <CacheSlot*>table_alloc(nbytes)
        if fresh == NULL:
            raise MemoryError(f"cache index: cannot allocate {nbytes} bytes")
        cdef CacheSlot* old = self.slots
        cdef uint64_t old_capacity = self.mask + 1
        cdef size_t old_bytes = self.table_bytes
        cdef uint64_t i
        cdef Py_ssize_t k = 0
        cdef PyObject* p
        self.slots = fresh
        self.table_bytes = nbytes
        self.mask = MIN_CAPACITY - 1
        self.grow_at = <Py_ssize_t>(MIN_CAPACITY // 4 * 3)
        self.oldest = NIL
        self.newest = NIL
        self.count = 0
        self.bytes_used = 0
        for i in range(old_capacity):
            p = old[i].value
            if p != NULL:
                values[k] = <object>p
                decref(p)
                k += 1
        table_free(old, old_bytes)
        # `values` goes last: destructors run with the index already empty.

    def check(self) -> None:
        """Raise AssertionError unless the table and the LRU list agree (for tests)."""
        cdef uint64_t cap = self.mask + 1
        cdef uint64_t i, j, h
        cdef Py_ssize_t n = 0
        cdef long long total = 0
        cdef uint32_t prev = NIL
        cdef uint32_t cur = self.oldest
        while cur != NIL:
            if cur >= cap or self.slots[cur].value == NULL:
                raise AssertionError(f"LRU list reaches empty slot {cur}")
            if self.slots[cur].older != prev:
                raise AssertionError(f"slot {cur}: older link {self.slots[cur].older} != {prev}")
            n += 1
            if n > self.count:
                raise AssertionError("LRU list longer than the count (a cycle?)")
            total += self.slots[cur].size
            prev = cur
            cur = self.slots[cur].newer
        if prev != self.newest:
            raise AssertionError(f"newest is {self.newest}, the list ends at {prev}")
        if n != self.count or total != self.bytes_used:
            raise AssertionError(f"list has {n} entries / {total} bytes, "
                                 f"count {self.count} / bytes_used {self.bytes_used}")
        if self.bytes_used > self.budget or (self.max_entries and n > self.max_entries):
            raise AssertionError("over budget")
        n = 0
        for i in range(cap):
            if self.slots[i].value == NULL:
                continue
            n += 1
            # No empty slot between an entry's home and the entry.
            h = home(self.slots[i].key, self.seed, self.mask)
            j = h
            while j != i:
                if self.slots[j].value == NULL:
                    raise AssertionError(f"slot {i}: gap at {j} after its home {h}")
                j = (j + 1) & self.mask
            if self.find(self.slots[i].key) != <Py_ssize_t>i:
                raise AssertionError(f"slot {i}: key {self.slots[i].key} found elsewhere")
        if n != self.count:
            raise AssertionError(f"{n} occupied slots, count {self.count}")
        if self.count > self.grow_at:
            raise AssertionError("load factor above 3/4")


# -- benchmark loops: the C-level cost, without a Python call per operation -------------

def bench_get(CacheIndex index, const uint64_t[::1] keys, Py_ssize_t n):
    """`n` index.get calls over `keys` (cycled) from C: (ns per get, hits)."""
    cdef Py_ssize_t m = keys.shape[0]
    cdef Py_ssize_t i, j = 0, hits = 0
    cdef object v
    cdef int64_t t0 = now_ns()
    for i in range(n):
        v = index.get(keys[j])
        if v is not None:
            hits += 1
        j += 1
        if j == m:
            j = 0
    return (now_ns() - t0) / <double>n, hits


def bench_peek(CacheIndex index, const uint64_t[::1] keys, Py_ssize_t n):
    """Like bench_get with index.peek (no LRU update)."""
    cdef Py_ssize_t m = keys.shape[0]
    cdef Py_ssize_t i, j = 0, hits = 0
    cdef object v
    cdef int64_t t0 = now_ns()
    for i in range(n):
        v = index.peek(keys[j])
        if v is not None:
            hits += 1
        j += 1
        if j == m:
            j = 0
    return (now_ns() - t0) / <double>n, hits


def bench_put(CacheIndex index, const uint64_t[::1] keys, object value, long long size):
    """index.put(key, value, size) for every key, from C: ns per put."""
    cdef Py_ssize_t i
    cdef int64_t t0 = now_ns()
    for i in range(keys.shape[0]):
        index.put(keys[i], value, size)
    return (now_ns() - t0) / <double>keys.shape[0]
