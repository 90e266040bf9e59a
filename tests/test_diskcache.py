"""The disk tier's store on its own: the file format, DiskStore/DiskWrite in their
threads, Vary records, collisions, bounds and errors (no proxy; see
test_cache_disk.py for the end-to-end tests)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastproxy import cachepolicy
from fastproxy._httpcache import RouteCache, SharedCounter, Stamps, Stored, read_cached
from fastproxy.cacheevictor import evict, scan
from fastproxy.config import parse_config
from fastproxy.diskcache import (
    LOOP_READ_MAX,
    TEMP_PREFIX,
    VARY_MISS,
    WOULD_BLOCK,
    DiskStore,
    blocks,
    entry_path,
    is_entry,
    temp_owner_gone,
    whole_file,
)


def entries(disk: Path) -> list[Path]:
    return sorted(p for p in disk.glob("*/*") if is_entry(p.name))


async def _write(store: DiskStore, primary: int, key: bytes, body: bytes,
                 names: tuple[bytes, ...] = (), headers: list[tuple[bytes, bytes]] | None = None,
                 request_time: float | None = None) -> bool:
    now = time.time() if request_time is None else request_time
    fresh = cachepolicy.Freshness(lifetime=60.0, source="max-age", corrected_initial_age=0.0,
                                  notes=("a note",))
    variant = cachepolicy.secondary_key(names, [(b"Accept-Language", body)]) if names else b""
    stored = Stored(200, b"OK", headers or [(b"Cache-Control", b"max-age=60")], body, now,
                    now, fresh, variant)
    write = store.begin(primary)
    assert write is not None
    for i in range(0, len(body), 100_000):
        assert write.add(body[i:i + 100_000])
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    write.commit(key, stored, names, done.set_result)
    return await done


def test_store_round_trip_collisions_and_budget(tmp_path: Path) -> None:
    disk = tmp_path / "cache"

    async def main() -> None:
        store = DiskStore(str(disk), 1 << 30, 1 << 20)
        store.start(asyncio.get_running_loop())
        try:
            body = bytes(range(256)) * 2000  # 512000 bytes: written in two pieces
            headers = [(b"ETag", b'"\xe9"'), (b"X-Many", b"a"), (b"X-Many", b"b")]
            assert await _write(store, 42, b"http://site/a", body, headers=headers)
            found = store.lookup(42, b"http://site/a", [])
            assert isinstance(found, tuple)
            stored, names = found
            assert (stored.status, stored.reason, stored.body, names) == (200, b"OK", body, ())
            assert stored.headers == headers  # bytes as received, order and repeats kept
            # What serving needs of the freshness (not the explanations).
            assert (stored.fresh.lifetime, stored.fresh.source) == (60.0, "max-age")
            assert stored.fresh.notes == ()
            assert stored.prefix.startswith(b"HTTP/1.1 200 OK\r\nETag: \"\xe9\"\r\n")
            # Another key with the same hash (the file holds the key): a miss, kept.
            assert store.lookup(42, b"http://site/other", []) is None
            assert Path(entry_path(str(disk), 42)).exists()
            # Vary: the record and the variants; an unknown variant is a vary miss.
            assert await _write(store, 43, b"v", b"fr", names=(b"accept-language",))
            hit_fr = store.lookup(43, b"v", [(b"Accept-Language", b"fr")])
            assert isinstance(hit_fr, tuple) and hit_fr[0].body == b"fr"
            assert hit_fr[1] == (b"accept-language",)
            assert store.lookup(43, b"v", [(b"Accept-Language", b"it")]) == VARY_MISS
            # Too large for the disk's max_object: abandoned, nothing left behind.
            write = store.begin(44)
            assert write is not None
            assert write.add(b"x" * 600_000) and not write.add(b"x" * 600_000)
            assert not write.add(b"x")
            await asyncio.get_running_loop().run_in_executor(None, store.close)
            assert not Path(entry_path(str(disk), 44)).exists()
            assert not list(disk.glob(f"*/{TEMP_PREFIX}*"))
            assert store.usage.value == sum(blocks(p.stat().st_size) for p in entries(disk))
        finally:
            store.close()

    asyncio.run(main())


def test_the_variants_go_with_their_key(tmp_path: Path) -> None:
    """An invalidation removes the Vary record and every variant file."""
    disk = tmp_path / "cache"

    async def main() -> None:
        store = DiskStore(str(disk), 1 << 20, 1 << 20)
        store.start(asyncio.get_running_loop())
        try:
            for lang in (b"fr", b"de"):
                await _write(store, 7, b"k", lang, names=(b"accept-language",))
            assert len(entries(disk)) == 3
            store.remove(7)
            await asyncio.get_running_loop().run_in_executor(None, store.close)
            assert entries(disk) == []
            assert store.usage.value == 0
        finally:
            store.close()

    asyncio.run(main())


def test_read_errors_and_unwritable_directories(tmp_path: Path) -> None:
    disk = tmp_path / "cache"
    disk.mkdir()
    (disk / "00").write_text("a file where a directory should be")

    async def main() -> None:
        store = DiskStore(str(disk), 1 << 30, 1 << 20)
        store.start(asyncio.get_running_loop())
        try:
            assert not await _write(store, 0x100, b"k", b"body")  # 00/... cannot be made
            assert store.stats["write_errors"] == 1
            assert store.lookup(0x100, b"k", []) is None
            # Lookups in flight are bounded: past the bound, a miss at once.
            store.reads = 10_000
            assert not store.read(1, b"k", [], lambda found: None)
        finally:
            store.close()

    asyncio.run(main())


def test_a_disk_copy_older_than_an_invalidation_is_dropped() -> None:
    """What another worker invalidated while this one read the file is not used."""
    config = parse_config({
        "listeners": [{"address": "127.0.0.1:1"}],
        "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
        "caches": {"main": {"memory": "1m"}},
        "routes": [{"upstream": "a", "cache": "main"}]})

    class Disk:
        def __init__(self) -> None:
            self.removed: list[int] = []

        def remove(self, primary: int) -> None:
            self.removed.append(primary)

    cache = RouteCache(config.caches["main"])
    cache.set_stamps(Stamps(64))
    disk = Disk()
    cache.set_disk(disk)
    now = time.time()
    fresh = cachepolicy.Freshness(lifetime=60.0, source="max-age", corrected_initial_age=0.0)
    old = Stored(200, b"OK", [], b"old", now - 10, now - 10, fresh, b"")
    cache.invalidate(5)  # marks the stamp and removes the (disk) copy
    assert disk.removed == [5]
    assert cache.adopt(5, old, ()) is None and disk.removed == [5, 5]
    assert cache.index.peek(5) is None
    new = Stored(200, b"OK", [], b"new", now + 1, now + 1, fresh, b"")
    assert cache.adopt(5, new, ()) is new and cache.index.peek(5) is new


def test_a_write_invalidated_while_in_flight_is_not_kept(tmp_path: Path) -> None:
    """The removal of an invalidated key may run before a write already under way
    renames its file into place: that write must not leave its file behind."""
    disk = tmp_path / "cache"

    async def main() -> None:
        stamps = Stamps(64)
        store = DiskStore(str(disk), 1 << 30, 1 << 20, stamps=stamps)
        store.start(asyncio.get_running_loop())
        try:
            fetched = time.time() - 5
            assert await _write(store, 9, b"k", b"before", request_time=fetched)
            assert Path(entry_path(str(disk), 9)).exists()
            stamps.invalidate(9, fetched + 1)  # after that fetch began
            store.remove(9)  # what the invalidating worker does
            assert not await _write(store, 9, b"k", b"old", request_time=fetched)
            assert not Path(entry_path(str(disk), 9)).exists()
            # A fetch that began after the invalidation is kept.
            assert await _write(store, 9, b"k", b"new")
            found = store.lookup(9, b"k", [])
            assert isinstance(found, tuple) and found[0].body == b"new"
            await asyncio.get_running_loop().run_in_executor(None, store.close)
            assert store.usage.value == sum(blocks(p.stat().st_size) for p in entries(disk))
        finally:
            store.close()

    asyncio.run(main())


def test_well_formed_files_with_wrong_fields_are_misses(tmp_path: Path) -> None:
    """A file whose checksum holds but whose header fields are not what this
    version writes (another build, or a hand-made file) is a logged miss, on the
    loop and in a thread, never an exception in the request's path."""
    disk = tmp_path / "cache"

    def put(primary: int, header: list[object], variant: bytes | None = None) -> Path:
        path = Path(entry_path(str(disk), primary, variant))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(whole_file(b"body", json.dumps(header).encode())))
        return path

    fresh = [60.0, "max-age", 0.0, False, False, 0.0, 0.0, ""]
    now = time.time()
    good = [1, "r", "k", "", [], 200, "OK", ["ETag", '"a"'], now, now, fresh]
    bad_headers = [
        [1, "v", "k", 5],  # Vary names that are not a list
        [1, "v", "k", [7]],  # ... not text
        [*good[:10], [60.0, "max-age", 0.0, False, False, "soon", 0.0, ""]],
        [*good[:10], ["60", "max-age", 0.0, False, False, 0.0, 0.0, ""]],
        [*good[:7], ["ETag"], *good[8:]],  # a name without its value
    ]
    store = DiskStore(str(disk), 1 << 30, 1 << 20)
    for on_loop in (True, False):
        for i, header in enumerate(bad_headers):
            put(i, header)
            found = store.lookup_now(i, b"k", []) if on_loop else store.lookup(i, b"k", [])
            assert found is None or (on_loop and found == WOULD_BLOCK), (header, found)
    put(100, good)
    found = store.lookup(100, b"k", [])
    assert isinstance(found, tuple) and found[0].headers == [(b"ETag", b'"a"')]


def test_what_is_not_a_regular_file_is_a_miss_without_waiting(tmp_path: Path) -> None:
    """A FIFO (opening one waits for a writer), or a symlink, under an entry's name:
    a miss at once, on the loop and in a thread, and it is removed; what a
    symlink points to is left alone."""
    disk = tmp_path / "cache"
    fifo = Path(entry_path(str(disk), 1))
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not a cache file")
    link = Path(entry_path(str(disk), 2))
    link.parent.mkdir()
    link.symlink_to(target)
    # In another process: a lookup that waits on the FIFO holds the GIL.
    script = (
        "import json, sys\n"
        "from fastproxy.diskcache import DiskStore\n"
        "store = DiskStore(sys.argv[1], 1 << 30, 1 << 20)\n"
        "print(json.dumps([repr(store.lookup_now(1, b'k', [])), repr(store.lookup(1, b'k', [])),\n"
        "      repr(store.lookup_now(2, b'k', [])), repr(store.lookup(2, b'k', []))]))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(disk)], stdout=subprocess.PIPE,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=10)
        blocked = False
    except subprocess.TimeoutExpired:
        blocked = True
        while proc.poll() is None:  # let it go: a writer opens the FIFO
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            time.sleep(0.1)
        out, _ = proc.communicate()
    assert not blocked, "a lookup waited on a FIFO"
    results = json.loads(out)  # the reprs of what the lookups returned
    assert results[1] == "None" and results[3] == "None", results
    assert results[0] in ("None", repr(WOULD_BLOCK)), results
    assert results[2] in ("None", repr(WOULD_BLOCK)), results
    assert not fifo.exists() and not link.is_symlink() and target.exists()


def test_a_failing_descriptor_loses_the_write_not_the_temporary_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A write whose file descriptor fails (here: closed under it, as a close()
    that reports an error leaves it) is a logged write error: its temporary file
    is removed and its descriptor is not closed a second time."""
    disk = tmp_path / "cache"

    async def main() -> None:
        store = DiskStore(str(disk), 1 << 30, 1 << 20)
        loop = asyncio.get_running_loop()
        store.start(loop)
        try:
            write = store.begin(5)
            assert write is not None and write.add(b"x" * 300_000)  # written now
            assert store._writer is not None
            await loop.run_in_executor(None, store._writer.submit(lambda: None).result)
            assert write.fd >= 0 and list(disk.glob(f"*/{TEMP_PREFIX}*"))
            os.close(write.fd)
            now = time.time()
            fresh = cachepolicy.Freshness(lifetime=60.0, source="max-age",
                                          corrected_initial_age=0.0)
            done: asyncio.Future[bool] = loop.create_future()
            write.commit(b"k", Stored(200, b"OK", [], b"", now, now, fresh, b""), (),
                         done.set_result)
            assert await done is False
            await loop.run_in_executor(None, store.close)
            assert not list(disk.glob(f"*/{TEMP_PREFIX}*"))
            assert store.stats["write_errors"] == 1 and write.fd == -1
            assert "write failed" not in caplog.text  # no traceback, a logged error
        finally:
            store.close()

    with caplog.at_level(logging.ERROR, "fastproxy.cache"):
        asyncio.run(main())


def test_a_vary_record_that_cannot_be_renamed_leaves_no_temporary_file(
        tmp_path: Path) -> None:
    """The rename of a Vary record fails (here a directory has its name; a full
    disk can fail a rename too): a logged write error, and its temporary file goes."""
    disk = tmp_path / "cache"

    async def main() -> None:
        store = DiskStore(str(disk), 1 << 30, 1 << 20)
        store.start(asyncio.get_running_loop())
        try:
            Path(entry_path(str(disk), 7)).mkdir(parents=True)
            assert not await _write(store, 7, b"k", b"fr", names=(b"accept-language",))
            await asyncio.get_running_loop().run_in_executor(None, store.close)
            assert store.stats["write_errors"] == 1
            assert not list(disk.glob(f"*/{TEMP_PREFIX}*"))
        finally:
            store.close()

    asyncio.run(main())


def test_evictor_scan_and_temp_files(tmp_path: Path) -> None:
    disk = tmp_path / "cache"
    (disk / "ab").mkdir(parents=True)
    for i in range(5):
        path = disk / "ab" / f"{i:014x}ab"
        path.write_bytes(b"x" * 5000)  # two blocks each
        os.utime(path, (1000 + i, 1000 + i))
    (disk / "ab" / "README").write_text("not ours")
    dead = _dead_pid()
    (disk / "ab" / f"{TEMP_PREFIX}{dead}.0").write_bytes(b"half")
    (disk / "ab" / f"{TEMP_PREFIX}{os.getpid()}.1").write_bytes(b"being written")
    found = scan(str(disk))
    assert (found.total, found.temps_removed) == (5 * 8192, 1)
    assert (disk / "ab" / f"{TEMP_PREFIX}{os.getpid()}.1").exists()  # its writer lives
    assert temp_owner_gone(f"{TEMP_PREFIX}{os.getpid()}.1", 7200, 3600)  # ... too long
    usage = SharedCounter()
    assert evict(str(disk), 4 * 8192, usage) == 2 * 8192  # down to 90 %: the 2 oldest
    assert sorted(p.name[:14] for p in entries(disk)) == ["%014x" % i for i in (2, 3, 4)]
    assert usage.value == 3 * 8192
    assert (disk / "ab" / "README").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reads_from_the_kernel_caches_on_the_loop(tmp_path: Path) -> None:
    """What the loop may read: only what the kernel has cached, small files only;
    anything else is left to a thread (WOULD_BLOCK)."""
    disk = tmp_path / "cache"
    small = tmp_path / "small"
    small.write_bytes(b"x" * 5000)
    data = read_cached(os.fsencode(small), 1 << 20)
    assert isinstance(data, tuple) and data[0] == b"x" * 5000
    assert data[2] == small.stat().st_ino
    assert read_cached(os.fsencode(small), 100) is False  # over the limit
    os.path.exists(tmp_path / "absent")  # the kernel now knows it is absent
    assert read_cached(os.fsencode(tmp_path / "absent"), 1 << 20) is None

    async def main() -> None:
        store = DiskStore(str(disk), 1 << 30, 1 << 30)
        store.start(asyncio.get_running_loop())
        try:
            assert await _write(store, 1, b"k1", b"small")
            assert await _write(store, 2, b"k2", b"b" * (LOOP_READ_MAX + 1))
            assert await _write(store, 3, b"k3", b"fr", names=(b"accept-language",))
            found = store.lookup_now(1, b"k1", [])
            assert isinstance(found, tuple) and found[0].body == b"small"
            assert store.lookup_now(1, b"other key", []) is None
            assert store.lookup_now(2, b"k2", []) == WOULD_BLOCK  # too big for the loop
            found = store.lookup(2, b"k2", [])  # ... a thread reads it
            assert isinstance(found, tuple) and len(found[0].body) == LOOP_READ_MAX + 1
            fr = store.lookup_now(3, b"k3", [(b"Accept-Language", b"fr")])
            assert isinstance(fr, tuple) and fr[0].body == b"fr"
            assert store.lookup_now(3, b"k3", [(b"Accept-Language", b"de")]) in (VARY_MISS,
                                                                                 WOULD_BLOCK)
            # A corrupt file seen on the loop: a miss; the writer thread removes it.
            path = Path(entry_path(str(disk), 1))
            path.write_bytes(path.read_bytes()[:-1] + b"?")
            assert store.lookup_now(1, b"k1", []) is None
            await asyncio.get_running_loop().run_in_executor(None, store.close)
            assert not path.exists() and store.stats["corrupt"] == 1
        finally:
            store.close()

    asyncio.run(main())
