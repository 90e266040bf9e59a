"""The access log: one line per request to files, streams and syslog, off the event loop.

Lines are formatted on the loop (only the variables a format names are read),
gathered per output, and handed, joined, to that output's writer thread every
worker tick (or sooner when the buffer grows). A slow disk, a stalled stdout
reader or an unreachable syslog collector therefore never blocks request
handling; what an output cannot take in time is dropped and counted (and said
in the error log), never queued without bound.

Several workers append to one file: each batch is one write(2) of whole lines
on an O_APPEND descriptor, so lines of different workers never mix (on a pipe,
batches are cut at line ends into writes of at most PIPE_BUF bytes, which the
kernel keeps whole). SIGUSR1 makes every file output reopen its path (after
logrotate renamed it): lines queued before go to the old file, later ones to
the new one.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import socket
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

from fastproxy.config import AccessOutput, LogSettings
from fastproxy.logformat import Formatter, Refused, Stamp, formatter

if TYPE_CHECKING:
    from fastproxy._proxy import Exchange
    from fastproxy.clock import Clock

log = logging.getLogger("fastproxy.accesslog")

_FLUSH_BYTES = 64 * 1024  # a batch is handed over at this size (else every tick)
_MAX_QUEUED = 32 * 1024 * 1024  # bytes waiting for one output's thread before lines drop
_PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is never split
_REOPEN = b"\x00reopen"  # a marker in a writer's queue (lines never hold a NUL)
_SYSLOG_TIMEOUT = 5.0  # seconds a TCP collector may take to connect or to take a batch
_RETRY_AFTER = 1.0  # seconds between two connection attempts to a failed collector


class Output:
    """One destination: its filters, its lines not handed over yet, its writer thread."""

    __slots__ = ("spec", "formatter", "min_status", "sample", "name", "_lines", "_size",
                 "_queue", "_put", "_done", "_thread", "dropped", "_reported")

    def __init__(self, spec: AccessOutput, fmt: Formatter) -> None:
        self.spec = spec
        self.formatter = fmt
        self.min_status = spec.min_status
        self.sample = spec.sample
        self.name = spec.target or spec.kind
        self._lines: list[str] = []
        self._size = 0
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        # Bytes handed to the queue (by the loop) and taken from it (by the writer):
        # each counter has one writer, so their difference needs no lock.
        self._put = 0
        self._done = 0
        self.dropped = 0  # lines dropped because the writer was too far behind
        self._reported = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"access-log {self.name}",
                                        daemon=True)
        self._thread.start()

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        if self._put - self._done > _MAX_QUEUED:
            self.dropped += len(self._lines)
        else:
            data = "".join(self._lines).encode("utf-8", "replace")
            self._put += len(data)
            self._queue.put(data)
        self._lines.clear()
        self._size = 0
        if self.dropped != self._reported:
            log.warning("access log %s: the writer is behind; %d lines dropped so far",
                        self.name, self.dropped)
            self._reported = self.dropped

    def reopen(self) -> None:
        self.flush()
        self._queue.put(_REOPEN)

    def close(self) -> None:
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        try:
            while True:
                data = self._queue.get()
                if data is None:
                    return
                if data is _REOPEN:
                    self.reopen_now()
                    continue
                self.write(data)
                self._done += len(data)
        finally:
            self.release()

    # In the writer thread:
    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def reopen_now(self) -> None:
        pass

    def release(self) -> None:
        pass


class FileOutput(Output):
    """A file (appended to, reopened on SIGUSR1), stdout or stderr."""

    __slots__ = ("_fd", "_own", "_pipe", "_failed")

    def __init__(self, spec: AccessOutput, fmt: Formatter) -> None:
        super().__init__(spec, fmt)
        self._failed = False
        if spec.kind == "file":
            self._fd = os.open(spec.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o644)
            self._own = True
        else:
            self._fd = 1 if spec.kind == "stdout" else 2
            self._own = False
        try:
            self._pipe = stat.S_ISFIFO(os.fstat(self._fd).st_mode) or \
                stat.S_ISSOCK(os.fstat(self._fd).st_mode)
        except OSError:
            self._pipe = False

    def write(self, data: bytes) -> None:
        if not self._pipe or len(data) <= _PIPE_BUF:
            self._write_all(data)
            return
        start = 0
        while start < len(data):
            end = data.rfind(b"\n", start, start + _PIPE_BUF) + 1
            if end <= start:  # one line longer than PIPE_BUF: it cannot be atomic
                end = data.find(b"\n", start) + 1 or len(data)
            self._write_all(data[start:end])
            start = end

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError as e:
                # The log went away (closed pipe, full disk): drop, keep serving.
                if not self._failed:
                    self._failed = True
                    log.error("access log %s: write failed: %s; lines are dropped",
                              self.name, e.strerror or e)
                return
            if self._failed:
                self._failed = False
                log.warning("access log %s: writing again", self.name)
            view = view[n:]

    def reopen_now(self) -> None:
        if not self._own:
            return
        try:
            fd = os.open(self.spec.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
        except OSError as e:
            log.error("access log %s: cannot reopen: %s; still writing to the old file",
                      self.name, e.strerror or e)
            return
        old, self._fd = self._fd, fd
        os.close(old)

    def release(self) -> None:
        if self._own:
            os.close(self._fd)
            self._own = False


_FACILITY = {name: number for number, name in enumerate(
    ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
     "authpriv", "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2",
     "local3", "local4", "local5", "local6", "local7"))}
_INFO = 6  # the severity of access lines


def syslog_header(facility: str, host: str, app_name: str, pid: int, when: float) -> bytes:
    """The RFC 5424 header before MSG: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD."""
    second = int(when)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return b"<%d>1 %s.%06dZ %s %s %d access - " % (
        _FACILITY[facility] * 8 + _INFO, stamp.encode(), int((when - second) * 1e6),
        host.encode(), app_name.encode(), pid)


def _hostname() -> str:
    name = socket.gethostname()
    # RFC 5424 HOSTNAME: 1*255 PRINTUSASCII
    return name if name and len(name) <= 255 and all(33 <= ord(c) < 127 for c in name) else "-"


class SyslogOutput(Output):
    """RFC 5424 messages to a collector: one datagram each over UDP or a unix
    datagram socket; octet-counted frames (RFC 6587) over TCP or a unix stream socket."""

    __slots__ = ("_scheme", "_where", "_sock", "_stream", "_retry_at", "_down", "_lost",
                 "_host", "_pid")

    def __init__(self, spec: AccessOutput, fmt: Formatter) -> None:
        super().__init__(spec, fmt)
        scheme, _, rest = spec.target.partition("://")
        self._scheme = scheme
        if scheme == "unix":
            self._where: Any = rest
        else:
            host, _, port = rest.rpartition(":")
            self._where = (host.strip("[]"), int(port))
        self._sock: socket.socket | None = None
        self._stream = scheme == "tcp"
        self._retry_at = 0.0
        self._down = False
        self._lost = 0
        self._host = _hostname()
        self._pid = 0

    def _connect(self) -> socket.socket:
        if self._scheme == "unix":
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.connect(self._where)
                self._stream = False
            except OSError:
                sock.close()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(_SYSLOG_TIMEOUT)
                try:
                    sock.connect(self._where)
                except OSError:
                    sock.close()
                    raise
                self._stream = True
            return sock
        host, port = self._where
        kind = socket.SOCK_STREAM if self._stream else socket.SOCK_DGRAM
        last: OSError = OSError("no address")
        for family, _, _, _, address in socket.getaddrinfo(host, port, type=kind):
            sock = socket.socket(family, kind)
            sock.settimeout(_SYSLOG_TIMEOUT)
            try:
                sock.connect(address)
            except OSError as e:
                sock.close()
                last = e
                continue
            return sock
        raise last

    def write(self, data: bytes) -> None:
        lines = data.split(b"\n")
        lines.pop()  # after the last newline
        now = time.monotonic()
        if self._sock is None:
            if now < self._retry_at:
                self._lose(len(lines), None)
                return
            try:
                self._sock = self._connect()
            except OSError as e:
                self._retry_at = now + _RETRY_AFTER
                self._lose(len(lines), e)
                return
        if not self._pid:
            self._pid = os.getpid()
        header = syslog_header(self.spec.facility, self._host, self.spec.app_name, self._pid,
                               time.time())
        sock = self._sock
        try:
            if self._stream:
                frames = []
                for line in lines:
                    n = len(header) + len(line)
                    frames.append(b"%d " % n)
                    frames.append(header)
                    frames.append(line)
                sock.sendall(b"".join(frames))
            else:
                for line in lines:
                    sock.send(header + line)
        except OSError as e:
            # A datagram refused (no listener yet) or a broken stream: connect again later.
            sock.close()
            self._sock = None
            self._retry_at = now + _RETRY_AFTER
            self._lose(len(lines), e)
            return
        if self._down:
            self._down = False
            log.warning("access log syslog %s: sending again (%d lines were lost)",
                        self.spec.target, self._lost)
            self._lost = 0

    def _lose(self, count: int, error: OSError | None) -> None:
        self._lost += count
        if not self._down:
            self._down = True
            log.error("access log syslog %s: %s; lines are dropped until it answers",
                      self.spec.target, (error.strerror or error) if error else "unreachable")

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def make_output(spec: AccessOutput, formatters: dict[str, Formatter]) -> Output:
    fmt = formatters.get(spec.format)
    if fmt is None:
        fmt = formatters[spec.format] = formatter(spec.format)
    if spec.kind == "syslog":
        return SyslogOutput(spec, fmt)
    return FileOutput(spec, fmt)


class AccessLog:
    """The worker's access log: `record(exchange)` per request (the core calls it only
    when `enabled`), `flush()` every tick, `reopen()` on SIGUSR1, `close()` at exit."""

    __slots__ = ("enabled", "outputs", "_single", "_clock")

    def __init__(self, settings: LogSettings, clock: Clock) -> None:
        self._clock = clock
        formatters: dict[str, Formatter] = {}
        self.outputs: list[Output] = []
        try:
            for spec in settings.access_outputs():
                self.outputs.append(make_output(spec, formatters))
        except BaseException:
            for output in self.outputs:
                output.release()
            raise
        for output in self.outputs:
            output.start()
        self.enabled = bool(self.outputs)
        # One output that logs everything: the common case, without the loop.
        self._single = self.outputs[0] if len(self.outputs) == 1 and \
            self.outputs[0].min_status == 0 and self.outputs[0].sample == 1.0 else None

    def record(self, ex: Exchange | Refused) -> None:
        stamp = Stamp(time.time(), time.monotonic())
        single = self._single
        if single is not None:
            single.add(single.formatter.line(ex, stamp))
            return
        made: dict[Formatter, str] = {}
        status = ex.status
        for output in self.outputs:
            if status < output.min_status or (output.sample < 1.0
                                              and random.random() >= output.sample):
                continue
            fmt = output.formatter
            line = made.get(fmt)
            if line is None:
                line = made[fmt] = fmt.line(ex, stamp)
            output.add(line)

    def stream(self, conn: Any) -> None:
        """One tcp listener connection that is over (a _stream.StreamClient): one line
        in every output (their status and sample filters are for HTTP requests)."""
        stamp = Stamp(time.time(), time.monotonic())
        for output in self.outputs:
            output.add(stream_line(conn, stamp, output.formatter.name == "json"))

    def refused(self, client: Any, status: int, sent: int) -> None:
        """A request that could not be parsed: no request line to show."""
        if self.enabled:
            self.record(Refused(client, status, sent))

    def flush(self) -> None:
        for output in self.outputs:
            output.flush()

    def reopen(self) -> None:
        """SIGUSR1: files are opened again by path (after a rotation)."""
        for output in self.outputs:
            output.reopen()

    def close(self) -> None:
        for output in self.outputs:
            output.close()


def stream_line(conn: Any, stamp: Stamp, as_json: bool) -> str:
    """A tcp connection's access line: client, listener, upstream and server, bytes
    from and to the client, duration, how it ended, the SNI name when read."""
    server_name = conn.server_name.decode("ascii") if conn.server_name is not None else None
    if as_json:
        return json.dumps({
            "time": stamp.iso(), "kind": "tcp", "client": conn.ip.decode("ascii", "replace"),
            "listener": conn.listener_name, "upstream": conn.upstream_name,
            "server": conn.server, "sni": server_name, "bytes_in": conn.bytes_in,
            "bytes_out": conn.bytes_out, "duration": round(conn.duration, 6),
            "end": conn.how}, separators=(",", ":")) + "\n"
    return '%s [%s] tcp %s %s %s %d %d %.3f %s sni=%s\n' % (
        conn.ip.decode("ascii", "replace"), stamp.local(), conn.listener_name,
        conn.upstream_name or "-", conn.server or "-", conn.bytes_in, conn.bytes_out,
        conn.duration, conn.how, server_name or "-")
