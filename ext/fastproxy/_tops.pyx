"""Heavy hitters of one worker, for the dashboard's top paths, clients and user
agents: the space-saving algorithm (Metwally, Agrawal, El Abbadi, 2005) over
k counters per dimension.

A key that is counted keeps an exact count while it stays; a new key when all
k counters are taken replaces the smallest one and inherits its count (+1),
remembered as the entry's `error`: a count overestimates by at most `error`,
and every key seen more than N/k times out of N is in the table. Counts only
grow, so two snapshots of a worker's table give the counts in between (for the
keys that stayed), which is how the admin process makes windows of them.

Cost per request: one dict lookup per dimension (the keys are bytes the
request already has), plus a scan of k int64 counters when a new key evicts.
"""
from libc.stdint cimport int64_t
from libc.string cimport memset
from cpython.mem cimport PyMem_Malloc, PyMem_Free

MAX_KEY = 200  # bytes of a key kept (longer paths and user agents are cut)


cdef class TopK:
    def __cinit__(self, Py_ssize_t k=64):
        if k < 1 or k > 4096:
            raise ValueError("k must be 1..4096")
        self.k = k
        self.n = 0
        self.counts = <int64_t*>PyMem_Malloc(k * sizeof(int64_t))
        self.errors = <int64_t*>PyMem_Malloc(k * sizeof(int64_t))
        if self.counts == NULL or self.errors == NULL:
            raise MemoryError()
        memset(self.counts, 0, k * sizeof(int64_t))
        memset(self.errors, 0, k * sizeof(int64_t))
        self.keys = [None] * k
        self.index = {}

    def __dealloc__(self):
        PyMem_Free(self.counts)
        PyMem_Free(self.errors)

    cdef int add(self, object key) except -1:
        cdef object at = self.index.get(key)
        cdef Py_ssize_t i, low
        cdef int64_t least
        if at is not None:
            self.counts[<Py_ssize_t>at] += 1
            return 0
        if self.n < self.k:
            i = self.n
            self.n += 1
            self.keys[i] = key
            self.index[key] = i
            self.counts[i] = 1
            self.errors[i] = 0
            return 0
        low = 0
        least = self.counts[0]
        for i in range(1, self.k):
            if self.counts[i] < least:
                least = self.counts[i]
                low = i
        del self.index[self.keys[low]]
        self.keys[low] = key
        self.index[key] = low
        self.errors[low] = least
        self.counts[low] = least + 1
        return 0

    def count(self, key):
        """Python-side add (tests, tools)."""
        self.add(key)

    def items(self):
        """[(key, count, error)], the largest counts first."""
        cdef Py_ssize_t i
        out = [(self.keys[i], self.counts[i], self.errors[i]) for i in range(self.n)]
        out.sort(key=lambda e: (-e[1], e[0]))
        return out

    def __len__(self):
        return self.n


cdef class Analytics:
    """A worker's three tables: request paths (without the query), client
    addresses, User-Agent values."""

    def __cinit__(self, Py_ssize_t k=64):
        self.paths = TopK(k)
        self.clients = TopK(k)
        self.agents = TopK(k)

    cdef int note(self, bytes path, bytes client, bytes agent) except -1:
        if path is not None:
            self.paths.add(path if len(path) <= MAX_KEY else path[:MAX_KEY])
        if client is not None:
            self.clients.add(client)
        self.agents.add(b"" if agent is None else
                        agent if len(agent) <= MAX_KEY else agent[:MAX_KEY])
        return 0

    def record(self, path, client, agent):
        """Python-side note (tests, benchmarks)."""
        self.note(path, client, agent)

    def snapshot(self):
        """What the worker publishes: {dimension: [[key (latin-1 text), count,
        error], ...]}."""
        return {name: [[key.decode("latin-1"), count, error]
                       for key, count, error in table.items()]
                for name, table in (("paths", self.paths), ("clients", self.clients),
                                    ("user_agents", self.agents))}
