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
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

from fastproxy import __version__
from fastproxy._peers import PeerTable, slot_layout
from fastproxy.config import Config, Listener

log = logging.getLogger("fastproxy.master")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
_QUICK_DEATH = 5.0  # a worker that dies sooner than this is restarted with back-off
HEALTH = -1  # the slot number of the health-check process


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def open_listener(listener: Listener) -> socket.socket:
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


class Supervisor:
    def __init__(self, config: Config, slots: list[list[socket.socket]],
                 table: PeerTable) -> None:
        self.config = config
        self.slots = slots
        self.table = table
        self.health_checks = any(up.health_check is not None
                                 for up in config.upstreams.values())
        self.pids: dict[int, int] = {}            # pid -> slot (HEALTH: the health checker)
        self.started: dict[int, float] = {}       # slot -> start time
        self.failures: dict[int, int] = {}        # slot -> quick deaths in a row
        self.restart_at: dict[int, float] = {}    # slot -> when to start it again
        self.stopping = False
        self.stop_deadline = 0.0

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for slot in range(len(self.slots)):
            self._spawn(slot)
        if self.health_checks:
            self._spawn(HEALTH)
        while True:
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT,
                                                      signal.SIGQUIT):
                self._stop(fast=info.si_signo == signal.SIGQUIT)
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

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                for other, socks in enumerate(self.slots):
                    if other != slot:
                        for s in socks:
                            s.close()
                code = self._child_main(slot)
            except BaseException:
                log.exception("%s crashed", _name(os.getpid(), slot))
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[pid] = slot
        self.started[slot] = time.monotonic()
        log.info("%s started", _name(pid, slot))

    def _child_main(self, slot: int) -> int:
        if slot == HEALTH:
            from fastproxy.health import HealthChecker

            return HealthChecker(self.config, self.table).run()
        from fastproxy.worker import Worker

        return Worker(self.config, self.slots[slot], self.table).run()

    def _reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
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
        self.restart_at.clear()
        # Our copies of the listening sockets would keep accepting into queues
        # nobody reads: close them so new connections are refused at once.
        for socks in self.slots:
            for s in socks:
                s.close()
        timeout = 0.0 if fast else self.config.server.shutdown_timeout
        self.stop_deadline = time.monotonic() + timeout + 5
        log.info("stopping %d workers (%s)", len(self.pids), "fast" if fast else "graceful")
        for pid in self.pids:
            _kill(pid, signal.SIGKILL if fast else signal.SIGTERM)


def _name(pid: int, slot: int) -> str:
    return f"health checker {pid}" if slot == HEALTH else f"worker {pid} (slot {slot})"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def serve(config: Config) -> int:
    """Run the proxy in the foreground until SIGTERM/SIGINT; return the exit code."""
    setup_logging(config.log.level)
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
    where = ", ".join(f"http://{listener.address}" for listener in config.listeners)
    log.info("fastproxy %s listening on %s with %d worker(s)", __version__, where,
             config.server.workers)
    # Mapped before the first fork: every child shares this one segment.
    table = PeerTable(slot_layout(config.upstreams)[1])
    try:
        return Supervisor(config, slots, table).run()
    finally:
        for socks in slots:
            for s in socks:
                s.close()
