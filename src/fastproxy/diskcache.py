"""The disk tier of the HTTP cache: one file per stored response, shared by the
workers, written and read in threads so the event loop never waits on the disk.

Files are named by the primary key's hash (`_cache.cache_key`: XXH3-64 with a
fixed seed, the same in every worker and after a restart), in 256
subdirectories named by its last two hex digits::

    ROOT/c4/9f0e3a1b2c3d4ec4            a response (no Vary), or a Vary record
    ROOT/c4/9f0e3a1b2c3d4ec4.0123...    one variant (the hash of its secondary key)
    ROOT/c4/.tmp.PID.N                  a file being written

A file is the body first, then a JSON header, then a fixed trailer::

    b"FPCACHE1" | body | header (JSON, UTF-8) | body length u64, header length u32,
                                               XXH3-64 u64 (body, then header), b"FPC-END\\n"

The body comes first so that a response can be written while it streams (the
first client is not kept waiting); the header (status, fields, times,
freshness) is known when it ends. A reader checks the magic, that the lengths
add up to the file's size, the CRC, the format version and that the key text
in the header is the one asked for (two keys with one hash: a miss, never the
other's answer). Anything wrong is a miss, logged, and the file is removed.

Writes go to a temporary file in the target's directory and are renamed over
it (`os.replace`) once complete, so a reader sees a whole file or none; a
writer that dies leaves only a `.tmp.` file, which no lookup opens and the
evictor removes (`fastproxy.cacheevictor`).

On the loop side each worker has one `DiskStore` per disk cache: a writer
thread (writes, renames and removals in submission order, with a bound on the
bytes waiting for it) and reader threads (a bounded number of lookups in
flight; beyond it a lookup is a miss).
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fastproxy import cachepolicy
from fastproxy._cache import cache_key
from fastproxy._httpcache import ContentHash, SharedCounter, Stamps, Stored, read_cached

log = logging.getLogger("fastproxy.cache")

MAGIC = b"FPCACHE1"
END = b"FPC-END\n"
TRAILER = struct.Struct("<QIQ8s")  # body length, header length, XXH3-64, END
VERSION = 1
TEMP_PREFIX = ".tmp."
BLOCK = 4096  # sizes are counted in blocks: a 10-byte file takes one

FLUSH_AT = 256 * 1024  # a streaming body goes to the writer in pieces of this much
WRITE_QUEUE = 64 * 1024 * 1024  # bytes waiting for the writer thread, per store
READS_IN_FLIGHT = 64  # lookups waiting for or in a reader thread, per store
READ_THREADS = 2
ERROR_LOG_EVERY = 10.0  # seconds between two log lines about failing writes

LOOP_READ_MAX = 256 * 1024  # files up to this size may be read on the loop (from caches)
TOUCH_AFTER = 60.0  # a hit sets the file's mtime when it is older than this (seconds)

# What a lookup found: (Stored, vary names), a miss, or the Vary record without
# this request's variant; WOULD_BLOCK: not all in the kernel's caches.
VARY_MISS = "vary-miss"
WOULD_BLOCK = "would-block"
Found = tuple[Stored, tuple[bytes, ...]] | str | None
Entry = tuple[list[Any], bytes, float]  # header fields, body, mtime


def blocks(size: int) -> int:
    """The bytes a file of `size` bytes is counted as (whole 4 KiB blocks)."""
    return (size + BLOCK - 1) // BLOCK * BLOCK if size > 0 else BLOCK


def entry_name(primary: int, variant: bytes | None = None) -> str:
    name = f"{primary:016x}"
    if variant is not None:
        name += f".{cache_key(variant):016x}"
    return name


def entry_path(root: str, primary: int, variant: bytes | None = None) -> str:
    """The file of a primary key (its response or Vary record), or of one variant."""
    return os.path.join(root, f"{primary & 0xFF:02x}", entry_name(primary, variant))


def is_entry(name: str) -> bool:
    """A name the store gives its files (what the evictor counts and may delete)."""
    base, dot, variant = name.partition(".")
    return (len(base) == 16 and _hex(base)
            and (not dot or (len(variant) == 16 and _hex(variant))))


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# -- the file format -------------------------------------------------------------------


def _text(value: bytes) -> str:
    return value.decode("latin-1")


# The header is a JSON array (flat: it is parsed on every disk hit):
#   [VERSION, "r", key, variant, [vary names], status, reason, [name, value, ...],
#    request_time, response_time, [freshness: FRESH_FIELDS in order], url, [tags]]
#                                                                       a response
#   [VERSION, "v", key, [vary names]]                                   a Vary record
# Text is bytes as latin-1. Of the freshness, what serving needs (not explanations).
FRESH_FIELDS = ("lifetime", "source", "corrected_initial_age", "must_revalidate", "no_cache",
                "stale_while_revalidate", "stale_if_error", "revalidate_directive")
_NUMBER: tuple[type, ...] = (int, float)
FRESH_TYPES: tuple[type | tuple[type, ...], ...] = (_NUMBER, str, _NUMBER, bool, bool, _NUMBER,
                                                     _NUMBER, str)
RESPONSE = "r"
VARY_RECORD = "v"


def _json(value: list[Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def response_header(key: bytes, stored: Stored, names: Sequence[bytes]) -> bytes:
    """The JSON header of a stored response."""
    fresh = stored.fresh
    return _json([
        VERSION, RESPONSE, _text(key), _text(stored.variant), [_text(n) for n in names],
        stored.status, _text(stored.reason),
        [_text(part) for field in stored.headers for part in field],
        stored.request_time, stored.response_time,
        [getattr(fresh, name) for name in FRESH_FIELDS],
        _text(stored.url if stored.url is not None else key), [_text(t) for t in stored.tags]])


def vary_header(key: bytes, names: Sequence[bytes]) -> bytes:
    """The JSON header of a Vary record: which request fields select the variant."""
    return _json([VERSION, VARY_RECORD, _text(key), [_text(n) for n in names]])


def whole_file(body: bytes, header: bytes) -> list[bytes]:
    """The parts of a complete file."""
    return [MAGIC, body, header, TRAILER.pack(len(body), len(header), _digest(body, header), END)]


def _digest(body: bytes | memoryview, header: bytes | memoryview) -> int:
    hasher = ContentHash()
    hasher.update(body)
    hasher.update(header)
    return int(hasher.digest())


class Corrupt(Exception):
    """A file that is not a whole entry of this format."""


def _check_trailer(trailer: bytes, size: int) -> tuple[int, int, int]:
    """(body length, header length, hash) from a file's last bytes, or Corrupt."""
    if size < len(MAGIC) + TRAILER.size or len(trailer) != TRAILER.size:
        raise Corrupt("truncated")
    body_len, header_len, digest, end = TRAILER.unpack(trailer)
    if end != END:
        raise Corrupt("no trailer (truncated?)")
    if len(MAGIC) + body_len + header_len + TRAILER.size != size:
        raise Corrupt("lengths do not match the file size")
    return body_len, header_len, digest


def _check_header(header: bytes, body: bytes, digest: int) -> list[Any]:
    if _digest(body, header) != digest:
        raise Corrupt("checksum mismatch")
    try:
        fields = json.loads(header.decode("latin-1"))
    except ValueError as e:
        raise Corrupt(f"bad header: {e}") from None
    if not (isinstance(fields, list) and len(fields) >= 4 and fields[0] == VERSION
            and fields[1] in (RESPONSE, VARY_RECORD) and isinstance(fields[2], str)):
        raise Corrupt("unknown header version")
    return fields


def parse_entry(data: bytes) -> tuple[list[Any], bytes]:
    """The header and body of a whole file's bytes, or Corrupt."""
    size = len(data)
    body_len, header_len, digest = _check_trailer(data[size - TRAILER.size:], size)
    if not data.startswith(MAGIC):
        raise Corrupt("not a cache file of this version")
    start = len(MAGIC)
    body = data[start:start + body_len]
    header = data[start + body_len:start + body_len + header_len]
    return _check_header(header, body, digest), body


def read_entry(fd: int, size: int) -> tuple[list[Any], bytes]:
    """The header and body of the file open as `fd` (`size` bytes), or Corrupt.
    The body is read straight into its own bytes object (no copy after)."""
    trailer = os.pread(fd, TRAILER.size, size - TRAILER.size) if size >= TRAILER.size else b""
    body_len, header_len, digest = _check_trailer(trailer, size)
    if os.pread(fd, len(MAGIC), 0) != MAGIC:
        raise Corrupt("not a cache file of this version")
    body = _pread_all(fd, body_len, len(MAGIC))
    header = _pread_all(fd, header_len, len(MAGIC) + body_len)
    return _check_header(header, body, digest), body


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            raise Corrupt("short read")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def stored_from(fields: list[Any], body: bytes) -> tuple[Stored, tuple[bytes, ...]]:
    """The Stored of a response header (a "r" array), and its Vary names; TypeError,
    ValueError... when a field is not what it should be."""
    (_, kind, key, variant, vary, status, reason, flat, request_time, response_time,
     fresh) = fields[:11]
    if kind != RESPONSE or len(fresh) != len(FRESH_FIELDS):
        raise ValueError("not a response")
    if not all(isinstance(value, types) for value, types in zip(fresh, FRESH_TYPES, strict=True)):
        raise TypeError("freshness fields of the wrong types")
    url, tags = fields[11:13] if len(fields) >= 13 else (key, [])
    if not (isinstance(url, str) and isinstance(tags, list)
            and all(isinstance(t, str) for t in tags)):
        raise TypeError("url or tags of the wrong types")
    raw = [part.encode("latin-1") for part in flat]
    headers = list(zip(raw[::2], raw[1::2], strict=True))
    stored = Stored(int(status), reason.encode("latin-1"), headers, body, float(request_time),
                    float(response_time), cachepolicy.Freshness(*fresh),
                    variant.encode("latin-1"))
    stored.url = url.encode("latin-1")
    stored.tags = tuple(t.encode("latin-1") for t in tags)
    return stored, tuple(n.encode("latin-1") for n in vary)


def write_all(fd: int, parts: Sequence[bytes]) -> int:
    """Write every part (os.writev may take less than all); the bytes written."""
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts) if parts else 0
    if done < total:
        rest = memoryview(b"".join(parts))[done:]
        while rest:
            n = os.write(fd, rest)
            rest = rest[n:]
    return total


# -- a worker's view of one disk cache -------------------------------------------------


class DiskStore:
    """One [caches.NAME] disk tier in one worker. The `read`, `begin`, `write_whole`
    and `remove` methods are called on the loop; the file work runs in threads."""

    def __init__(self, root: str, size: int, max_object: int,
                 usage: SharedCounter | None = None, stamps: Stamps | None = None) -> None:
        self.root = root
        self.size = size
        self.max_object = max_object
        self.usage = usage if usage is not None else SharedCounter()
        self.stamps = stamps  # the invalidations of every worker
        self.loop: Any = None  # set by start()
        self._reader: ThreadPoolExecutor | None = None
        self._writer: ThreadPoolExecutor | None = None
        self.reads = 0  # lookups in flight (loop side only)
        self._queued = 0  # bytes submitted to the writer and not written yet
        self._lock = threading.Lock()
        self._temp_names = itertools.count()
        self._error_logged = 0.0
        # Counters, for tests and later metrics.
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0, "writes": 0, "write_errors": 0,
                      "dropped": 0, "busy": 0}

    def start(self, loop: Any) -> None:
        self.loop = loop
        self._reader = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="cache-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cache-write")

    def close(self) -> None:
        """Finish the writes submitted (bounded by WRITE_QUEUE), then stop the threads."""
        for pool in (self._reader, self._writer):
            if pool is not None:
                pool.shutdown(wait=True)
        self._reader = self._writer = None

    # -- lookups -----------------------------------------------------------------------

    def lookup_now(self, primary: int, key: bytes,
                   request_headers: Sequence[tuple[bytes, bytes]]) -> Found | str:
        """(On the loop.) The lookup, from the kernel's caches only (`read_cached`: the
        file's name and bytes are cached, and it is at most LOOP_READ_MAX bytes);
        WOULD_BLOCK when anything is not: then `read` it in a thread."""
        found = self._select(primary, key, request_headers, True)
        if found is not WOULD_BLOCK:
            self.stats["hits" if isinstance(found, tuple) else "misses"] += 1
        return found

    def read(self, primary: int, key: bytes, request_headers: list[tuple[bytes, bytes]],
             done: Callable[[Found], None]) -> bool:
        """Look `key` up in a thread; `done(found)` is called on the loop. False when
        too many lookups are in flight already (count it as a miss)."""
        if self._reader is None or self.reads >= READS_IN_FLIGHT:
            self.stats["busy"] += 1
            return False
        self.reads += 1
        future = self._reader.submit(self.lookup, primary, key, request_headers)
        future.add_done_callback(lambda f: _on_loop(self.loop, self._read_done, f, done))
        return True

    def _read_done(self, future: Future[Found], done: Callable[[Found], None]) -> None:
        self.reads -= 1
        try:
            found = future.result()
        except Exception:  # a broken lookup is a miss, never a crash
            log.exception("disk cache lookup failed")
            found = None
        self.stats["hits" if isinstance(found, tuple) else "misses"] += 1
        done(found)

    def lookup(self, primary: int, key: bytes,
               request_headers: Sequence[tuple[bytes, bytes]]) -> Found:
        """(In a thread.) The stored response for this request, with its Vary names;
        VARY_MISS when another variant is stored; None otherwise."""
        found = self._select(primary, key, request_headers, False)
        assert found is not WOULD_BLOCK
        return found

    def _select(self, primary: int, key: bytes, request_headers: Sequence[tuple[bytes, bytes]],
                on_loop: bool) -> Found | str:
        """The lookup: on the loop from the caches only, else in a thread."""
        load = self._load_now if on_loop else self._load
        path = entry_path(self.root, primary)
        entry = load(path, key)
        if entry is None or entry is WOULD_BLOCK:
            return entry
        assert not isinstance(entry, str)
        fields, body, mtime = entry
        used = [(path, mtime)]
        if fields[1] == VARY_RECORD:
            if not (isinstance(fields[3], list) and all(isinstance(n, str) for n in fields[3])):
                self._bad(on_loop, path, None, "bad Vary record")
                return None
            names = tuple(n.encode("latin-1") for n in fields[3])
            variant = cachepolicy.secondary_key(names, request_headers)
            path = entry_path(self.root, primary, variant)
            entry = load(path, key)
            if entry is WOULD_BLOCK:
                return WOULD_BLOCK
            if entry is None:
                return VARY_MISS
            assert not isinstance(entry, str)
            fields, body, mtime = entry
            if fields[1] != RESPONSE or fields[3] != variant.decode("latin-1"):
                return VARY_MISS
            used.append((path, mtime))
        try:
            found = stored_from(fields, body)
        except (IndexError, TypeError, ValueError, AttributeError) as e:
            self._bad(on_loop, path, None, f"bad header fields: {e!r}")
            return None
        now = time.time()
        old = [name for name, mtime in used if now - mtime > TOUCH_AFTER]
        if old:  # used now: the evictor keeps it longer (at most a write a minute)
            if not on_loop:
                _touch(old)
            elif self._writer is not None:
                self._writer.submit(_touch, old)
        return found

    def _load_now(self, path: str, key: bytes) -> Entry | str | None:
        got = read_cached(os.fsencode(path), LOOP_READ_MAX)
        if got is None:
            return None
        if not isinstance(got, tuple):
            return WOULD_BLOCK
        data, mtime, ino = got
        try:
            fields, body = parse_entry(data)
        except Corrupt as e:
            self._bad(True, path, ino, str(e))
            return None
        if fields[2] != key.decode("latin-1"):
            return None  # another key with the same hash: a miss (it stays)
        return fields, body, mtime

    def _load(self, path: str, key: bytes) -> Entry | None:
        try:
            # Not a FIFO's wait for a writer, nor a symlink's target.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                self._corrupt(path, None, "a symlink, not a file of the cache")
            else:
                self._write_error(f"cannot open {path}: {e}")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._corrupt(path, st.st_ino, "not a regular file")
                return None
            try:
                fields, body = read_entry(fd, st.st_size)
            except Corrupt as e:
                self._corrupt(path, st.st_ino, str(e))
                return None
            except OSError as e:
                self._corrupt(path, st.st_ino, f"read error: {e}")
                return None
        finally:
            os.close(fd)
        if fields[2] != key.decode("latin-1"):
            return None  # another key with the same hash: a miss (it stays)
        return fields, body, st.st_mtime

    def _bad(self, on_loop: bool, path: str, ino: int | None, why: str) -> None:
        """A bad file: removed now in a thread; seen on the loop, by the writer thread
        (an unlink may wait for the file system's journal)."""
        if on_loop and self._writer is not None:
            self._writer.submit(self._corrupt, path, ino, why)
        elif not on_loop:
            self._corrupt(path, ino, why)

    def _corrupt(self, path: str, ino: int | None, why: str) -> None:
        """(In a thread.) Log a bad file and remove it, unless it was replaced since."""
        self.stats["corrupt"] += 1
        log.warning("disk cache: ignored %s: %s (removed)", path, why)
        try:
            now = os.lstat(path)
            if ino is None or now.st_ino == ino:
                os.unlink(path)
                if stat.S_ISREG(now.st_mode):  # what the evictor counts
                    self.usage.add(-blocks(now.st_size))
        except OSError:
            pass

    # -- writes ----------------------------------------------------------------------

    def begin(self, primary: int) -> DiskWrite | None:
        """A file for a response that is arriving; None when the writer is too far behind."""
        if self._writer is None or self._queued >= WRITE_QUEUE:
            self.stats["dropped"] += 1
            return None
        return DiskWrite(self, primary)

    def write_whole(self, primary: int, key: bytes, stored: Stored,
                    names: Sequence[bytes]) -> None:
        """Store a response whose body is at hand (a 304 refreshed it)."""
        if len(stored.body) > self.max_object:
            return
        write = self.begin(primary)
        if write is not None and write.add(stored.body):
            write.commit(key, stored, names)

    def remove(self, primary: int) -> None:
        """Forget a primary key: its file and its variants' (after the writes queued)."""
        if self._writer is not None:
            self._writer.submit(self._remove, primary)

    def _remove(self, primary: int) -> None:
        directory = os.path.dirname(entry_path(self.root, primary))
        prefix = entry_name(primary)
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            if entry.name == prefix or entry.name.startswith(prefix + "."):
                try:
                    size = entry.stat().st_size
                    os.unlink(entry.path)
                    self.usage.add(-blocks(size))
                except OSError:
                    pass

    def _submit(self, n: int, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._queued += n
        assert self._writer is not None
        self._writer.submit(self._run, n, fn, args)

    def _run(self, n: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("disk cache write failed")
        finally:
            with self._lock:
                self._queued -= n

    def _write_error(self, message: str) -> None:
        self.stats["write_errors"] += 1
        now = time.monotonic()
        if now >= self._error_logged:  # a full disk fails every write: log now and then
            self._error_logged = now + ERROR_LOG_EVERY
            log.error("disk cache %s: %s", self.root, message)

    def temp_path(self, directory: str) -> str:
        return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}.{next(self._temp_names)}")


class DiskWrite:
    """One response going to disk as it arrives. `add` and `commit`/`abort` are
    called on the loop; the file is written by the store's writer thread, in
    order. Until `commit` renames it, it is a temporary file nobody reads."""

    __slots__ = ("store", "primary", "pending", "pending_size", "body_size", "fd", "temp",
                 "hasher", "written", "failed", "over")

    def __init__(self, store: DiskStore, primary: int) -> None:
        self.store = store
        self.primary = primary
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.body_size = 0
        self.over = False  # abandoned (on the loop side)
        # Writer-thread side:
        self.fd = -1
        self.temp = ""
        self.hasher = ContentHash()
        self.written = 0
        self.failed = False

    def add(self, data: bytes) -> bool:
        """A piece of the body; False when the file is abandoned (too big, or the
        writer is too far behind)."""
        if self.over:
            return False
        store = self.store
        self.body_size += len(data)
        if self.body_size > store.max_object or store._queued + self.pending_size > WRITE_QUEUE:
            self.abort()
            return False
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= FLUSH_AT:
            self._flush_pending()
        return True

    def _flush_pending(self) -> None:
        chunks, n = self.pending, self.pending_size
        self.pending, self.pending_size = [], 0
        self.store._submit(n, self._write, chunks)

    def commit(self, key: bytes, stored: Stored, names: Sequence[bytes],
               done: Callable[[bool], None] | None = None) -> None:
        """The whole body was added: write the header, rename the file into place
        (and the Vary record beside it); `done(ok)` on the loop afterwards."""
        if self.over:
            if done is not None:
                done(False)
            return
        self.over = True
        header = response_header(key, stored, names)
        record = vary_header(key, names) if names else None
        variant = stored.variant if names else None
        chunks, n = self.pending, self.pending_size
        self.pending, self.pending_size = [], 0
        self.store._submit(n + len(header), self._commit, chunks, header, variant, record,
                           stored.request_time, done)

    def abort(self) -> None:
        if self.over:
            return
        self.over = True
        self.pending = []
        self.pending_size = 0
        self.store._submit(0, self._discard)

    # -- in the writer thread ----------------------------------------------------------

    def _write(self, chunks: list[bytes]) -> None:
        if self.failed:
            return
        try:
            if self.fd < 0:
                self._open()
            self.written += write_all(self.fd, chunks)
            for chunk in chunks:
                self.hasher.update(chunk)
        except OSError as e:
            self._fail(e)

    def _open(self) -> None:
        directory = os.path.dirname(entry_path(self.store.root, self.primary))
        self.temp = self.store.temp_path(directory)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self.fd = os.open(self.temp, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            self.fd = os.open(self.temp, flags, 0o600)
        self.written = os.write(self.fd, MAGIC)

    def _fail(self, e: OSError) -> None:
        self.failed = True
        self.store._write_error(f"cannot write {self.temp or self.store.root}: {e}")
        self._discard()

    def _discard(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1  # never closed twice (the number may be reused)
            try:
                os.close(fd)
            except OSError:
                pass
        if self.temp:
            try:
                os.unlink(self.temp)
            except OSError:
                pass
            self.temp = ""

    def _commit(self, chunks: list[bytes], header: bytes, variant: bytes | None,
                record: bytes | None, request_time: float,
                done: Callable[[bool], None] | None) -> None:
        ok = False
        try:
            self._write(chunks)
            if self.failed:
                return
            body_len = self.written - len(MAGIC)
            self.hasher.update(header)
            digest = int(self.hasher.digest())
            self.written += write_all(self.fd, [
                header, TRAILER.pack(body_len, len(header), digest, END)])
            fd, self.fd = self.fd, -1  # closed once, even when close() reports an error
            os.close(fd)
            store = self.store
            final = entry_path(store.root, self.primary, variant)
            _replace(self.temp, final, self.written, store.usage)
            self.temp = ""
            if record is not None:
                _write_file(store, os.path.dirname(final),
                            entry_path(store.root, self.primary), whole_file(b"", record))
            if store.stamps is not None and store.stamps.invalidated(self.primary, request_time):
                # Invalidated while it was written (the removal may have run before
                # the rename): checked after the rename, so one of the two removes it.
                store._remove(self.primary)
                return
            store.stats["writes"] += 1
            ok = True
        except OSError as e:
            self._fail(e)
        finally:
            if done is not None:
                _on_loop(self.store.loop, done, ok)


def _on_loop(loop: Any, fn: Callable[..., None], *args: Any) -> None:
    """(In a thread.) Call `fn` on the loop, unless the loop is gone (a worker that
    stopped while this was in flight: nobody waits for it any more)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _touch(paths: list[str]) -> None:
    """(In a thread.) Mark files used now, for the evictor's least-recently-used order."""
    now = time.time()
    for path in paths:
        try:
            os.utime(path, (now, now))
        except OSError:
            pass


def _replace(temp: str, final: str, size: int, usage: SharedCounter) -> None:
    """Rename `temp` over `final`, counting the change in the directory's size."""
    try:
        old = blocks(os.stat(final).st_size)
    except OSError:
        old = 0
    os.replace(temp, final)
    usage.add(blocks(size) - old)


def _write_file(store: DiskStore, directory: str, final: str, parts: list[bytes]) -> None:
    """A small whole file, written aside and renamed into place."""
    temp = store.temp_path(directory)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            size = write_all(fd, parts)
        finally:
            os.close(fd)
        _replace(temp, final, size, store.usage)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def temp_owner_gone(name: str, age: float, max_age: float) -> bool:
    """A temporary file whose writer is gone (its process does not exist) or that is
    older than `max_age` seconds: safe to remove."""
    if age > max_age:
        return True
    pid_text = name[len(TEMP_PREFIX):].partition(".")[0]
    if not pid_text.isdigit():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError as e:
        return e.errno != errno.EPERM
    return False
