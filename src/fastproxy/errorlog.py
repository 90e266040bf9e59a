"""The error log: levels, text or JSON lines, and a cap on repeats.

A message that repeats (the same template from the same logger at the same
level: "upstream %s: timed out" for every request while a server is down) is
written at most `repeats` times a minute; the rest are counted and one line
says how many were left out when the minute is over and the message comes
again. Everything goes to stderr (the master and its children share it).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

_WINDOW = 60.0  # seconds over which repeats are counted
_MAX_KEYS = 4096  # message templates followed at once (then the table starts over)


class RepeatFilter(logging.Filter):
    """Lets at most `limit` records of one template through per minute."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self._lock = threading.Lock()  # the access log's writer threads log too
        # (logger, level, template) -> [window start, passed, suppressed]
        self._seen: dict[tuple[str, int, str], list[Any]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(key)
            if state is None:
                if len(self._seen) >= _MAX_KEYS:
                    self._seen.clear()
                self._seen[key] = [now, 1, 0]
                return True
            if now - state[0] >= _WINDOW:
                suppressed = state[2]
                state[0], state[1], state[2] = now, 1, 0
                if suppressed:
                    record.msg = f"{record.msg} [{suppressed} more like this were not logged " \
                                 f"in the last minute]"
                return True
            if state[1] < self.limit:
                state[1] += 1
                return True
            state[2] += 1
            return False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, pid, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        entry: dict[str, Any] = {
            "time": "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
                                  int(record.msecs)),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


TEXT_FORMAT = "%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s"


def setup(level: str, fmt: str = "text", repeats: int = 0) -> None:
    """Configure the root logger for the master and the children it forks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    if repeats:
        handler.addFilter(RepeatFilter(repeats))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler], force=True)
