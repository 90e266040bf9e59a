"""The cache evictor: one process per instance (forked by the master, supervised
like the health checker) that keeps each disk cache directory under its `size`.

On start it scans every directory (this is the only "index" the disk tier has:
lookups open the file a key names): it counts the bytes in use into the
generation's shared counter and removes temporary files whose writer is gone.
Then, every second, it compares the counter (which the workers' writers and
removals keep up to date) with `size`; when over, it scans again and deletes the
least recently used files (oldest mtime: a write or a disk hit sets it) until
the directory is at 90 % of `size`. A full rescan every few minutes corrects
what the counter cannot know (files removed by hand, writers that died).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from fastproxy._httpcache import SharedCounter
from fastproxy.config import Config, DiskSpec
from fastproxy.diskcache import TEMP_PREFIX, blocks, is_entry, temp_owner_gone

log = logging.getLogger("fastproxy.cache")

INTERVAL = 1.0  # seconds between two looks at the counters
RESCAN = 300.0  # seconds between two full scans when nothing else made one
LOW_WATER = 0.9  # an eviction goes down to this share of `size`
TEMP_MAX_AGE = 3600.0  # a temporary file older than this is abandoned, whoever wrote it
_STOP = {signal.SIGTERM, signal.SIGINT}


@dataclass(slots=True)
class Scan:
    total: int  # bytes in use (in blocks), entries only
    entries: list[tuple[float, int, str]]  # (mtime, bytes, path), when asked for
    temps_removed: int


def scan(root: str, keep_entries: bool = False, now: float | None = None) -> Scan:
    """Count the entries under `root` (optionally listing them) and remove the
    temporary files nobody writes any more."""
    now = time.time() if now is None else now
    total = 0
    removed = 0
    entries: list[tuple[float, int, str]] = []
    for directory in _subdirs(root):
        try:
            listing = list(os.scandir(directory))
        except OSError:
            continue
        for entry in listing:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if entry.name.startswith(TEMP_PREFIX):
                if temp_owner_gone(entry.name, now - st.st_mtime, TEMP_MAX_AGE):
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except OSError:
                        pass
                continue
            if not is_entry(entry.name) or not entry.is_file(follow_symlinks=False):
                continue  # not ours: neither counted nor touched
            size = blocks(st.st_size)
            total += size
            if keep_entries:
                entries.append((st.st_mtime, size, entry.path))
    return Scan(total, entries, removed)


def _subdirs(root: str) -> Iterator[str]:
    for i in range(256):
        path = os.path.join(root, f"{i:02x}")
        if os.path.isdir(path):
            yield path


def evict(root: str, size: int, usage: SharedCounter) -> int:
    """Delete the least recently used entries until `root` holds at most LOW_WATER x
    `size`; the bytes deleted."""
    found = scan(root, keep_entries=True)
    target = int(size * LOW_WATER)
    total = found.total
    deleted = 0
    if total > size:
        found.entries.sort()
        for _, nbytes, path in found.entries:
            if total <= target:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= nbytes
            deleted += nbytes
    usage.set(total)
    return deleted


class CacheEvictor:
    """The evictor process's main loop."""

    def __init__(self, config: Config, usage: Mapping[str, SharedCounter]) -> None:
        self.disks: list[tuple[str, DiskSpec, SharedCounter]] = [
            (name, spec.disk, usage[name]) for name, spec in config.caches.items()
            if spec.disk is not None]

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
        next_scan = 0.0
        for name, disk, _ in self.disks:
            try:
                os.makedirs(disk.path, exist_ok=True)
            except OSError as e:
                log.error("[caches.%s] disk %s: %s", name, disk.path, e)
        while True:
            now = time.monotonic()
            for name, disk, usage in self.disks:
                try:
                    if now >= next_scan:
                        found = scan(disk.path)
                        usage.set(found.total)
                        if found.temps_removed:
                            log.info("[caches.%s] removed %d unfinished file(s) in %s", name,
                                     found.temps_removed, disk.path)
                    if usage.value > disk.size:
                        deleted = evict(disk.path, disk.size, usage)
                        log.info("[caches.%s] evicted %d bytes from %s (now %d of %d)", name,
                                 deleted, disk.path, usage.value, disk.size)
                except OSError as e:
                    log.error("[caches.%s] disk %s: %s", name, disk.path, e)
                if signal.sigpending() & _STOP:
                    return 0
            if now >= next_scan:
                next_scan = now + RESCAN
            if signal.sigtimedwait(_STOP, INTERVAL) is not None:
                return 0
