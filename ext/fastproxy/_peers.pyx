"""Upstream server state shared by every process of one instance.

The master maps one anonymous shared segment before it forks: a version
counter and one `PeerSlot` per configured server (upstreams in config order,
each one's servers in order; see `slot_layout`). The health-check process
writes the active checks' verdicts into it, the workers write passive
ejections, and every worker's balancers read it. Readers do not lock: a
writer updates a slot and then bumps the version, and a balancer rebuilds its
view of its servers when it sees a new version (see _balance.Balancer.choose).
Times are CLOCK_MONOTONIC nanoseconds, which all processes share.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from *:
    """
    static inline void fastproxy_bump(uint64_t* v) {
        __atomic_add_fetch(v, 1, __ATOMIC_RELEASE);
    }
    static inline uint64_t fastproxy_load(uint64_t* v) {
        return __atomic_load_n(v, __ATOMIC_ACQUIRE);
    }
    """
    void fastproxy_bump(uint64_t* v) nogil
    uint64_t fastproxy_load(uint64_t* v) nogil


ADMIN_STATES = ("enabled", "drain", "disabled")  # by PeerSlot.admin


cdef int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def monotonic_ns():
    """The clock of the table (CLOCK_MONOTONIC, as time.monotonic_ns on Linux)."""
    return now_ns()


def slot_layout(upstreams):
    """{upstream name: its first slot} for a mapping of config.Upstream in config
    order, and the number of slots. Every process computes the same layout."""
    cdef Py_ssize_t total = 0
    first = {}
    for name, upstream in upstreams.items():
        first[name] = total
        total += len(upstream.servers)
    return first, total


cdef class PeerTable:
    """`size` shared slots, every server up and not ejected at first."""

    def __cinit__(self, Py_ssize_t size):
        cdef Py_ssize_t i
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size = size
        # The version on a 64-byte line of its own, then the slots.
        self._bytes = 64 + <size_t>(size if size > 0 else 1) * sizeof(PeerSlot)
        self._mem = mmap(NULL, self._bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                         -1, 0)
        if self._mem == MAP_FAILED:
            self._mem = NULL
            raise MemoryError("cannot map the shared server state")
        self._version = <uint64_t*>self._mem
        self.slots = <PeerSlot*>(<char*>self._mem + 64)
        for i in range(size):
            self.slots[i].health = 1
            self.slots[i].ejections = 0
            self.slots[i].up_since = 0
            self.slots[i].ejected_until = 0
            self.slots[i].admin = ADMIN_ENABLED

    def __dealloc__(self):
        if self._mem != NULL:
            munmap(self._mem, self._bytes)

    cdef uint64_t current(self) noexcept nogil:
        return fastproxy_load(self._version)

    cdef void changed(self) noexcept nogil:
        fastproxy_bump(self._version)

    cdef void eject(self, Py_ssize_t i, int64_t base_ns, int64_t max_ns) noexcept nogil:
        """Eject slot i for base_ns, doubled for each ejection in a row, at most max_ns."""
        cdef PeerSlot* s = &self.slots[i]
        cdef int32_t k = s.ejections + 1 if s.ejections < 62 else 62
        cdef int64_t span = base_ns
        cdef int32_t j
        for j in range(1, k):
            if span >= max_ns:
                break
            span *= 2
        if span > max_ns:
            span = max_ns
        s.ejections = k
        s.ejected_until = now_ns() + span
        self.changed()

    cdef void probe_passed(self, Py_ssize_t i) noexcept nogil:
        """A server on probation answered: its ejections are forgiven and it ramps
        up again (slow start) from now."""
        cdef PeerSlot* s = &self.slots[i]
        if s.ejections != 0:
            s.ejections = 0
            s.up_since = now_ns()
            self.changed()

    # -- Python side: the health checker, tools and tests ---------------------------------
    @property
    def version(self):
        return self.current()

    def _check(self, Py_ssize_t i):
        if not 0 <= i < self.size:
            raise IndexError(i)

    def is_up(self, Py_ssize_t i):
        """What the active checks say about slot i."""
        self._check(i)
        return self.slots[i].health != 0

    def set_health(self, Py_ssize_t i, bint up):
        """Record the active checks' verdict; True when it changed. A server coming
        back up also ends any passive ejection and starts its slow start."""
        cdef PeerSlot* s
        self._check(i)
        s = &self.slots[i]
        if (s.health != 0) == up:
            return False
        s.health = 1 if up else 0
        if up:
            s.up_since = now_ns()
            s.ejected_until = 0
            s.ejections = 0
        self.changed()
        return True

    def set_admin(self, Py_ssize_t i, str state):
        """The admin API's verdict on slot i: "enabled", "drain" (no new clients;
        those bound to it by a sticky cookie still go) or "disabled". True when it
        changed. Enabling starts the server's slow start from now."""
        cdef PeerSlot* s
        cdef int32_t code = ADMIN_STATES.index(state)
        self._check(i)
        s = &self.slots[i]
        if s.admin == code:
            return False
        s.admin = code
        if code == ADMIN_ENABLED:
            s.up_since = now_ns()
        self.changed()
        return True

    def eject_for(self, Py_ssize_t i, double base, double max_time):
        """Eject slot i (seconds; see eject)."""
        self._check(i)
        self.eject(i, <int64_t>(base * 1e9), <int64_t>(max_time * 1e9))

    def passed_probe(self, Py_ssize_t i):
        self._check(i)
        self.probe_passed(i)

    def copy_slot(self, PeerTable source not None, Py_ssize_t src, Py_ssize_t dst):
        """Slot `dst` takes the state of `source`'s slot `src` (a reload keeps the
        verdicts about servers both configs have)."""
        source._check(src)
        self._check(dst)
        self.slots[dst] = source.slots[src]
        self.changed()

    def state(self, Py_ssize_t i):
        """Slot i as a dict: up (active checks), ejections, ejected_for (seconds
        left, 0 when not ejected), up_for (seconds since it came back; None: from
        the start)."""
        cdef PeerSlot* s
        cdef int64_t now = now_ns()
        self._check(i)
        s = &self.slots[i]
        return {
            "up": s.health != 0,
            "ejections": s.ejections,
            "ejected_for": max(0.0, (s.ejected_until - now) / 1e9),
            "up_for": None if s.up_since == 0 else (now - s.up_since) / 1e9,
            "admin": ADMIN_STATES[s.admin] if 0 <= s.admin < 3 else "enabled",
        }
