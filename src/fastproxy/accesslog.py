"""Access log in nginx "combined" format, written off the event loop.

Lines are gathered in memory and handed, joined, to one writer thread every
worker tick (or sooner when the buffer grows), so a slow disk or a stalled
stdout reader never blocks request handling.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from typing import TYPE_CHECKING

from fastproxy.config import LogSettings

if TYPE_CHECKING:
    from fastproxy._proxy import Exchange
    from fastproxy.clock import Clock

_UNSAFE = re.compile(rb'["\\\x00-\x1f\x7f-\xff]')
_FLUSH_BYTES = 64 * 1024


def _escape(value: bytes | None) -> str:
    """As nginx does: unprintable bytes, quote and backslash become \\xHH."""
    if not value:
        return "-"
    if _UNSAFE.search(value):
        value = _UNSAFE.sub(lambda m: b"\\x%02X" % m.group()[0], value)
    return value.decode("ascii")


class AccessLog:
    __slots__ = ("enabled", "_clock", "_lines", "_size", "_queue", "_thread", "_fd", "_own_fd")

    def __init__(self, settings: LogSettings, clock: Clock) -> None:
        self._clock = clock
        self._lines: list[str] = []
        self._size = 0
        self.enabled = settings.access != "off"
        self._own_fd = False
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        if not self.enabled:
            return
        if settings.access == "stdout":
            self._fd = 1
        elif settings.access == "stderr":
            self._fd = 2
        else:
            self._fd = os.open(settings.access, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._own_fd = True
        self._thread = threading.Thread(target=self._write_loop, name="access-log", daemon=True)
        self._thread.start()

    def record(self, ex: Exchange) -> None:
        if not self.enabled:
            return
        head = ex.head
        line = '%s - - [%s] "%s %s HTTP/1.%d" %d %d "%s" "%s"\n' % (
            # The client address behind trusted proxies, when the request got that far.
            (ex.ctx.client_ip if ex.ctx is not None else ex.client.ip).decode(),
            self._clock.log_time, head.method.decode(),
            _escape(head.target), head.http_minor, ex.status, ex.sent,
            _escape(head.get(b"referer")), _escape(head.get(b"user-agent")),
        )
        self._add(line)

    def refused(self, ip: bytes, status: int, sent: int) -> None:
        """A request that could not be parsed: no request line to show."""
        if self.enabled:
            self._add('%s - - [%s] "-" %d %d "-" "-"\n' % (ip.decode(), self._clock.log_time,
                                                           status, sent))

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            self._queue.put("".join(self._lines).encode("utf-8", "replace"))
            self._lines.clear()
            self._size = 0

    def close(self) -> None:
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_fd:
            os.close(self._fd)
            self._own_fd = False

    def _write_loop(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._fd, view)
                except InterruptedError:
                    continue
                except OSError:
                    break  # the log went away (closed pipe, full disk): drop, keep serving
                view = view[n:]
