"""A coarse clock shared by a worker: one time read per tick, not per request."""

from __future__ import annotations

import time
from email.utils import formatdate


class Clock:
    """Seconds (monotonic), plus the HTTP Date and access-log timestamps of this second."""

    __slots__ = ("now", "wall", "http_date", "log_time", "_second")

    def __init__(self) -> None:
        self.now = 0.0
        self.wall = 0.0
        self.http_date = b""
        self.log_time = ""
        self._second = -1
        self.tick()

    def tick(self) -> None:
        self.now = time.monotonic()
        self.wall = time.time()
        second = int(self.wall)
        if second != self._second:
            self._second = second
            self.http_date = formatdate(second, usegmt=True).encode("ascii")
            self.log_time = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
