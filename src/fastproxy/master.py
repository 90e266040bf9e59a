"""The master process: opens the listeners, forks the workers, keeps them alive.

Each worker slot gets its own SO_REUSEPORT socket per listener, opened here.
The kernel spreads new connections across the slots' sockets; the master keeps
every socket open, so a worker that dies is replaced on the same socket and
connections waiting in its accept queue are served by the replacement rather
than refused.

State that every process shares (the verdicts of the health checks, passive
ejections) lives in a `PeerTable`: shared memory mapped here before the first
fork, so every child inherits the same segment. When an upstream has active
health checks, one more child runs them for the whole instance (not one prober
per worker, which would multiply the probes by the number of workers); it is
supervised like a worker.

SIGHUP reloads: the master reads and checks the config file again (and the
certificates it names); if anything is wrong it logs why and keeps the running
generation. Otherwise it starts a new generation of workers (and health
checker) with the new config, handing them the listening sockets of the
addresses both configs have, so no connection is refused, then asks the old
generation to stop gracefully: open connections finish on the old config. TLS
contexts are built here, before the fork, so every worker of a generation
shares the session-ticket keys (a ticket from one worker resumes on another).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

from fastproxy import __version__, errorlog, metrics
from fastproxy._httpcache import Purges, SharedCounter, Stamps
from fastproxy._peers import PeerTable, slot_layout
from fastproxy._ratelimit import BanTable, ConnTable, LimitTable
from fastproxy._stats import Stats
from fastproxy.admin import StatusBoard, config_digest, load_purges
from fastproxy.config import AdminSettings, Config, ConfigError, Listener, load_config

log = logging.getLogger("fastproxy.master")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
            signal.SIGUSR1, signal.SIGIO}
_QUICK_DEATH = 5.0  # a worker that dies sooner than this is restarted with back-off
HEALTH = -1  # the slot number of the health-check process
EVICTOR = -2  # ... and of the cache evictor (when a cache has a disk tier)
ADMIN = -3  # ... and of the admin API (with [admin])


def setup_logging(level: str, fmt: str = "text", repeats: int = 0) -> None:
    errorlog.setup(level, fmt, repeats)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about the service's state, when it asked
    (NOTIFY_SOCKET); a failure is logged, never fatal."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("cannot notify %s: %s", address, e.strerror or e)


def drop_privileges(server: Any) -> None:
    """(In a child) Become [server] user/group when the master runs as root."""
    if not server.user or os.geteuid() != 0:
        return
    import grp
    import pwd

    entry = pwd.getpwnam(server.user)
    gid = grp.getgrnam(server.group).gr_gid if server.group else entry.pw_gid
    os.setgroups([])
    os.setgid(gid)
    os.setuid(entry.pw_uid)


def _import_child_modules() -> None:
    """Import what the children run before they drop root: the interpreter's
    and the virtualenv's files may not be readable by the user."""
    import concurrent.futures.thread  # noqa: F401  (uvloop and the disk tier use it)

    import fastproxy.admin
    import fastproxy.cacheevictor
    import fastproxy.health
    import fastproxy.worker  # noqa: F401


def write_pid_file(config: Config) -> str | None:
    """Write the master's PID to [server] pid_file (atomically); its path."""
    if not config.server.pid_file:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(config.source)), config.server.pid_file)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(temp, path)
    return path


def remove_pid_file(path: str | None) -> None:
    if path is None:
        return
    try:
        with open(path, encoding="ascii") as f:
            if f.read().strip() != str(os.getpid()):
                return  # another master's now
        os.unlink(path)
    except (OSError, ValueError):
        pass


def open_listener(listener: Listener | AdminSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def tls_contexts(config: Config) -> list[Any]:
    """Each listener's TLS context (None for plain ones), built once per generation."""
    if not any(listener.tls for listener in config.listeners):
        return [None] * len(config.listeners)
    from fastproxy.tls import server_context

    return [server_context(listener.tls) if listener.tls else None
            for listener in config.listeners]


def new_limit_table(config: Config) -> LimitTable:
    """The shared rate-limit table: two slots per key it must hold."""
    return LimitTable(2 * config.limits.rate_limit_keys)


def _address(listener: Listener) -> tuple[str, int]:
    return (listener.host, listener.port)


class Generation:
    """One config's worth of children: its workers' sockets (per slot, one per
    listener in config order), shared server table and TLS contexts."""

    def __init__(self, number: int, config: Config, slots: list[list[socket.socket]],
                 table: PeerTable, contexts: list[Any], limits: LimitTable | None,
                 purges: Purges | None = None, admin: socket.socket | None = None,
                 stats: tuple[Stats, metrics.Registry] | None = None) -> None:
        self.number = number
        self.config = config
        self.slots = slots
        self.table = table
        self.contexts = contexts
        self.limits = limits  # the shared rate-limit table, None without rate limits
        # Connections per client address, for the whole generation.
        self.conns = ConnTable(65536) if config.limits.max_connections_per_ip else None
        # Automatic bans: replaced by the previous generation's table on a reload
        # that keeps the same [auto_ban] (banned clients stay banned).
        ban = config.auto_ban
        self.bans = (BanTable(2 * ban.clients, ban.window, ban.after, ban.ban_time)
                     if ban is not None else None)
        # Cache invalidations, seen by every worker of the generation.
        self.cache_stamps = Stamps(65536) if config.caches else None
        # The admin API's purges (kept across reloads: see Supervisor.reload).
        self.purges = purges
        if purges is None and config.caches:
            self.purges = Purges()
            load_purges(config.caches, self.purges)
        self.admin = admin  # the admin API's listening socket, None without [admin]
        # Metrics: the master's table (kept for its life) and this config's view of it.
        self.stats: Stats | None = None
        self.layout: metrics.Layout | None = None
        if stats is not None and config.counting:
            from fastproxy.routing import https_redirects

            self.stats = stats[0]
            self.layout = metrics.Layout.of(config, stats[1],
                                            [*https_redirects(config), *config.routes])
            if stats[1].full:
                log.warning("the metrics table is full: series new since the start are "
                            "not counted until a restart")
        # Bytes in use in each disk cache directory (the writers add, the evictor sets).
        self.cache_usage = {name: SharedCounter() for name, spec in config.caches.items()
                            if spec.disk is not None}
        self.health_checks = any(up.health_check is not None
                                 for up in config.upstreams.values())
        self.digest = config_digest(config.source)

    def sockets(self) -> set[socket.socket]:
        return {s for socks in self.slots for s in socks}


def carry_health(old: Generation, new: Generation) -> None:
    """A server in both configs keeps its verdict (same upstream and address)."""
    old_first, _ = slot_layout(old.config.upstreams)
    new_first, _ = slot_layout(new.config.upstreams)
    for name, upstream in new.config.upstreams.items():
        before = old.config.upstreams.get(name)
        if before is None:
            continue
        where = {s.address: old_first[name] + i for i, s in enumerate(before.servers)}
        for i, server in enumerate(upstream.servers):
            if server.address in where:
                new.table.copy_slot(old.table, where[server.address], new_first[name] + i)


class Supervisor:
    def __init__(self, generation: Generation,
                 stats: tuple[Stats, metrics.Registry] | None = None) -> None:
        self.gen = generation
        self.pids: dict[int, tuple[int, int]] = {}  # pid -> (generation, slot); HEALTH slot
        self.started: dict[int, float] = {}       # slot -> start time (current generation)
        self.failures: dict[int, int] = {}        # slot -> quick deaths in a row
        self.restart_at: dict[int, float] = {}    # slot -> when to start it again
        self.stopping = False
        self.stop_deadline = 0.0
        self.board = StatusBoard()  # what the admin process shows
        # Metrics: the table's blocks (block 0 keeps what dead processes counted).
        self.stats = stats
        self.free_blocks = list(range(stats[0].blocks - 1, 0, -1)) if stats else []
        self.blocks: dict[int, int] = {}  # pid -> its block
        self.started_at = time.time()
        self.reloads = 0
        self.deaths = 0  # children of the current generation that died (and were restarted)
        self.last_reload: dict[str, Any] = {}
        # The admin process asks for reloads by writing to this pipe: it may run as
        # [server] user, and a process of another user may not signal the master.
        # The read end wakes the master with SIGIO (see run).
        self.reload_pipe = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.publish()

    @property
    def config(self) -> Config:
        return self.gen.config

    def publish(self) -> None:
        """What the admin API's GET /status shows of the master's state."""
        gen = self.gen
        self.board.publish({
            "master_pid": os.getpid(), "started": self.started_at,
            "generation": gen.number,
            "config": {"file": os.path.abspath(gen.config.source),
                       "sha256": gen.digest},
            "workers": sorted(({"pid": pid, "slot": _role(slot), "generation": number}
                               for pid, (number, slot) in self.pids.items()),
                              key=lambda w: (w["generation"], str(w["slot"]))),
            "reloads": self.reloads, "last_reload": self.last_reload,
            "child_deaths": self.deaths,
            "stopping": self.stopping})

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        import fcntl

        asked = self.reload_pipe[0]
        fcntl.fcntl(asked, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(asked, fcntl.F_SETFL, fcntl.fcntl(asked, fcntl.F_GETFL) | os.O_ASYNC)
        self._spawn_all()
        sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=generation {self.gen.number}")
        while True:
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT,
                                                      signal.SIGQUIT):
                self._stop(fast=info.si_signo == signal.SIGQUIT)
            elif info is not None and info.si_signo == signal.SIGHUP and not self.stopping:
                self.reload()
            elif info is not None and info.si_signo == signal.SIGUSR1:
                self.reopen_logs()
            if self._reload_asked() and not self.stopping:
                self.reload()
            self._reap()
            now = time.monotonic()
            if self.stopping:
                if not self.pids:
                    log.info("all workers stopped")
                    return 0
                if now >= self.stop_deadline:
                    log.warning("workers did not stop in time: killing %s", sorted(self.pids))
                    for pid in self.pids:
                        _kill(pid, signal.SIGKILL)
                    self.stop_deadline = now + 5
                continue
            for slot, when in list(self.restart_at.items()):
                if now >= when:
                    del self.restart_at[slot]
                    self._spawn(slot)

    def _reload_asked(self) -> bool:
        """The admin process wrote to the reload pipe (one reload for all it wrote)."""
        asked = False
        try:
            while os.read(self.reload_pipe[0], 4096):
                asked = True
        except BlockingIOError:
            pass
        return asked

    def reopen_logs(self) -> None:
        """SIGUSR1 (after logrotate renamed the files): every worker, of every
        generation still running, opens its access-log files again."""
        workers = sorted(pid for pid, (_, slot) in self.pids.items() if slot >= 0)
        log.info("reopening the log files of %d worker(s)", len(workers))
        for pid in workers:
            _kill(pid, signal.SIGUSR1)

    def _spawn_all(self) -> None:
        for slot in range(len(self.gen.slots)):
            self._spawn(slot)
        if self.gen.health_checks:
            self._spawn(HEALTH)
        if self.gen.cache_usage:
            self._spawn(EVICTOR)
        if self.gen.admin is not None:
            self._spawn(ADMIN)

    def _spawn(self, slot: int) -> None:
        gen = self.gen
        block = 0
        if slot >= 0 and gen.stats is not None:
            # Its own block; when every one is taken (reloads in a row with slow
            # drains) the last one is shared, and a few counts may be lost.
            block = self.free_blocks.pop() if self.free_blocks else gen.stats.blocks - 1
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                # Until a worker's loop handles it, SIGUSR1 must not kill the child.
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                os.environ.pop("NOTIFY_SOCKET", None)  # the master speaks to systemd
                mine = set(gen.slots[slot]) if slot >= 0 else set()
                for s in gen.sockets() - mine:
                    s.close()
                if gen.admin is not None and slot != ADMIN:
                    gen.admin.close()
                os.close(self.reload_pipe[0])
                if slot != ADMIN:
                    os.close(self.reload_pipe[1])
                if gen.config.server.user and os.geteuid() == 0:
                    _import_child_modules()  # while the files are surely readable
                drop_privileges(gen.config.server)
                code = self._child_main(gen, slot, block)
            except BaseException:
                log.exception("%s crashed", _name(os.getpid(), slot))
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[pid] = (gen.number, slot)
        if block:
            self.blocks[pid] = block
        self.started[slot] = time.monotonic()
        log.info("%s started", _name(pid, slot))
        self.publish()

    def _child_main(self, gen: Generation, slot: int, block: int = 0) -> int:
        if slot == HEALTH:
            from fastproxy.health import HealthChecker

            return HealthChecker(gen.config, gen.table).run()
        if slot == EVICTOR:
            from fastproxy.cacheevictor import CacheEvictor

            return CacheEvictor(gen.config, gen.cache_usage).run()
        if slot == ADMIN:
            from fastproxy.admin import AdminServer

            assert gen.admin is not None
            return AdminServer(gen.config, gen.admin, gen.number, gen.purges,
                               self.board, gen.table, gen.stats, gen.layout,
                               self.reload_pipe[1]).run()
        from fastproxy.worker import Worker

        return Worker(gen.config, gen.slots[slot], gen.table, gen.contexts, gen.limits,
                      gen.conns, gen.bans, gen.cache_stamps, gen.cache_usage,
                      gen.purges, gen.stats, gen.layout, block).run()

    def reload(self) -> None:
        """SIGHUP: start a generation on the config file as it is now, if it is good."""
        source = self.config.source
        log.info("reloading %s", source)
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        try:
            config = load_config(source)
            contexts = tls_contexts(config)
        except ConfigError as e:
            log.error("reload failed, the running config stays in service:\n%s", e)
            self._reload_failed(str(e))
            return
        except (OSError, ValueError) as e:
            log.error("reload failed, the running config stays in service: %s", e)
            self._reload_failed(str(e))
            return
        old = self.gen
        try:
            admin = reuse_admin(old, config)
        except OSError as e:
            log.error("reload failed, the running config stays in service: %s", e)
            self._reload_failed(str(e))
            return
        try:
            slots = reuse_sockets(old, config)
        except OSError as e:
            if admin is not None and admin is not old.admin:
                admin.close()
            log.error("reload failed, the running config stays in service: %s", e)
            self._reload_failed(str(e))
            return
        limits = old.limits
        if limits is None or old.config.limits.rate_limit_keys != config.limits.rate_limit_keys:
            limits = new_limit_table(config) if config.rate_limits else None
        # else: the same table, so clients keep their counts across the reload.
        purges = old.purges
        if purges is not None:  # the disk tiers new to this config bring their purges
            load_purges({name: spec for name, spec in config.caches.items()
                         if spec.disk is not None and name not in old.config.caches}, purges)
        if self.stats is None and config.counting:
            self.stats = metrics.new_stats(config, config.server.workers)
            self.free_blocks = list(range(self.stats[0].blocks - 1, 0, -1))
        elif self.stats is not None and config.counting and \
                config.metrics.buckets != self.stats[1].buckets:
            log.warning("metrics.buckets changed: the histograms keep the old buckets "
                        "until a restart")
        new = Generation(old.number + 1, config, slots, PeerTable(slot_layout(config.upstreams)[1]),
                         contexts, limits, purges, admin, self.stats)
        carry_health(old, new)
        if old.bans is not None and old.config.auto_ban == config.auto_ban:
            new.bans = old.bans
        self.gen = new
        self.restart_at.clear()
        self.failures.clear()
        # Sockets the new generation does not use: the old workers close theirs on
        # SIGTERM; ours must go too, or the kernel would keep queueing connections
        # on them that nobody accepts. Before the fork: a child only closes the
        # sockets of its own generation, so one forked now would keep them open.
        for sock in old.sockets() - new.sockets():
            sock.close()
        if old.admin is not None and old.admin is not admin:
            old.admin.close()
        self._spawn_all()
        for pid, (number, _) in self.pids.items():
            if number != new.number:
                _kill(pid, signal.SIGTERM)  # graceful: in-flight requests finish
        log.info("reloaded: generation %d with %d worker(s); generation %d stopping",
                 new.number, len(new.slots), old.number)
        self._reloaded({"ok": True, "time": time.time(), "generation": new.number,
                        "config_sha256": new.digest})

    def _reload_failed(self, error: str) -> None:
        self._reloaded({"ok": False, "time": time.time(), "generation": self.gen.number,
                        "error": error})

    def _reloaded(self, result: dict[str, Any]) -> None:
        # The count and the result change together: the admin API waits for the count.
        self.reloads += 1
        self.last_reload = result
        self.publish()
        sd_notify(f"READY=1\nSTATUS=generation {self.gen.number}"
                  + ("" if result["ok"] else " (the last reload failed)"))

    def _reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.pids.pop(pid, None)
            if entry is None:
                continue
            number, slot = entry
            code = os.waitstatus_to_exitcode(status)
            block = self.blocks.pop(pid, 0)
            if block and self.stats is not None and block not in self.blocks.values():
                # Its counts go on in block 0; its gauges (in flight, open) die with it.
                # Not while another process still counts in the block (one shared when
                # blocks ran out): emptying it would take that one's open connections
                # and requests in flight from the gauges, which its closes would then
                # drive below zero. What the dead one left in the gauges stays until
                # the last user of the block is gone.
                self.stats[0].retire(block, bytes(self.stats[1].gauges))
                if block not in self.free_blocks:
                    self.free_blocks.append(block)
            died = not self.stopping and number == self.gen.number  # it is started again
            if died:
                self.deaths += 1
            self.publish()
            if not died:
                log.info("%s exited (%d)", _name(pid, slot), code)
                continue
            lived = time.monotonic() - self.started.get(slot, 0.0)
            fails = self.failures.get(slot, 0) + 1 if lived < _QUICK_DEATH else 0
            self.failures[slot] = fails
            delay = min(30.0, 0.5 * (2 ** (fails - 1))) if fails else 0.0
            log.error("%s died (%s); restarting in %.1fs", _name(pid, slot),
                      f"signal {-code}" if code < 0 else f"exit {code}", delay)
            self.restart_at[slot] = time.monotonic() + delay

    def _stop(self, fast: bool) -> None:
        if self.stopping and not fast:
            return
        self.stopping = True
        sd_notify("STOPPING=1")
        self.restart_at.clear()
        # Our copies of the listening sockets would keep accepting into queues
        # nobody reads: close them so new connections are refused at once.
        for s in self.gen.sockets():
            s.close()
        if self.gen.admin is not None:
            self.gen.admin.close()
        timeout = 0.0 if fast else self.config.server.shutdown_timeout
        self.stop_deadline = time.monotonic() + timeout + 5
        log.info("stopping %d workers (%s)", len(self.pids), "fast" if fast else "graceful")
        for pid in self.pids:
            _kill(pid, signal.SIGKILL if fast else signal.SIGTERM)


def reuse_sockets(old: Generation, config: Config) -> list[list[socket.socket]]:
    """Sockets for `config`'s worker slots: slot i keeps old slot i's socket for
    an address both configs listen on; new addresses get new sockets."""
    old_index = {_address(listener): i for i, listener in enumerate(old.config.listeners)}
    slots: list[list[socket.socket]] = []
    opened: list[socket.socket] = []
    try:
        for i in range(config.server.workers):
            slot: list[socket.socket] = []
            for listener in config.listeners:
                j = old_index.get(_address(listener))
                if j is not None and i < len(old.slots):
                    slot.append(old.slots[i][j])
                else:
                    try:
                        sock = open_listener(listener)
                    except OSError as e:
                        raise OSError(f"cannot listen on {listener.address}: "
                                      f"{e.strerror or e}") from e
                    opened.append(sock)
                    slot.append(sock)
            slots.append(slot)
    except OSError:
        for sock in opened:
            sock.close()
        raise
    return slots


def reuse_admin(old: Generation, config: Config) -> socket.socket | None:
    """The admin API's socket for `config`: the old one when the address stays."""
    if config.admin is None:
        return None
    if old.admin is not None and old.config.admin is not None \
            and old.config.admin.address == config.admin.address:
        return old.admin
    try:
        return open_listener(config.admin)
    except OSError as e:
        raise OSError(f"cannot listen on {config.admin.address} (admin): "
                      f"{e.strerror or e}") from e


def _role(slot: int) -> int | str:
    return {HEALTH: "health", EVICTOR: "evictor", ADMIN: "admin"}.get(slot, slot)


def _name(pid: int, slot: int) -> str:
    if slot == HEALTH:
        return f"health checker {pid}"
    if slot == EVICTOR:
        return f"cache evictor {pid}"
    if slot == ADMIN:
        return f"admin API {pid}"
    return f"worker {pid} (slot {slot})"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def serve(config: Config) -> int:
    """Run the proxy in the foreground until SIGTERM/SIGINT; return the exit code."""
    setup_logging(config.log.level, config.log.error_format, config.log.error_repeats)
    try:
        contexts = tls_contexts(config)
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 1
    slots: list[list[socket.socket]] = []
    try:
        for _ in range(config.server.workers):
            slot: list[socket.socket] = []
            slots.append(slot)
            for listener in config.listeners:
                try:
                    slot.append(open_listener(listener))
                except OSError as e:
                    raise OSError(f"cannot listen on {listener.address}: {e.strerror or e}") from e
    except OSError as e:
        log.error("%s", e)
        for socks in slots:
            for s in socks:
                s.close()
        return 1
    where = ", ".join(f"{'https' if listener.tls else 'http'}://{listener.address}"
                      if listener.mode == "http" else f"tcp://{listener.address}"
                      + (" (tls)" if listener.tls else "")
                      for listener in config.listeners)
    log.info("fastproxy %s listening on %s with %d worker(s)", __version__, where,
             config.server.workers)
    # Mapped before the first fork: every child shares this one segment.
    admin = None
    if config.admin is not None:
        try:
            admin = open_listener(config.admin)
        except OSError as e:
            log.error("cannot listen on %s (admin): %s", config.admin.address, e.strerror or e)
            for socks in slots:
                for s in socks:
                    s.close()
            return 1
        log.info("admin API on http://%s", config.admin.address)
    table = PeerTable(slot_layout(config.upstreams)[1])
    limits = new_limit_table(config) if config.rate_limits else None
    stats = metrics.new_stats(config, config.server.workers) if config.counting else None
    supervisor = Supervisor(Generation(1, config, slots, table, contexts, limits, None, admin,
                                       stats), stats)
    try:
        pid_file = write_pid_file(config)
    except OSError as e:
        log.error("cannot write server.pid_file: %s", e)
        pid_file = None
    try:
        return supervisor.run()
    finally:
        for s in supervisor.gen.sockets():
            s.close()
        if supervisor.gen.admin is not None:
            supervisor.gen.admin.close()
        remove_pid_file(pid_file)
