"""The disk tier of the HTTP cache: real proxies with `disk = {...}` on real
directories, in front of origins that count what they are asked (the count is
the proof of a hit)."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastproxy._cache import cache_key
from fastproxy.config import ConfigError, parse_config
from fastproxy.diskcache import (
    TEMP_PREFIX,
    DiskStore,
    blocks,
    entry_path,
    is_entry,
)
from servers import Origin, ProxyProcess, RawClient, RawResponse, Received, Reply, free_port

SMALL = b"s" * 11          # fits the memory tier (memory 64k: max_object 16k)
BIG = b"B" * (40 * 1024)   # disk only
HUGE = bytes(range(256)) * (16 * 1024)  # 4 MiB: disk only, read in a thread


class Site:
    """The origin: `asked` counts requests per path."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}
        self.version = 1
        self.lock = threading.Lock()

    def __call__(self, req: Received) -> Reply:
        path = req.target.split("?", 1)[0]
        with self.lock:
            self.asked[path] = self.asked.get(path, 0) + 1
        cc = [("Cache-Control", "max-age=600")]
        if path == "/small":
            return Reply(200, [*cc, ("ETag", '"s"')], SMALL)
        if path == "/huge":
            return Reply(200, cc, HUGE)
        if path.startswith("/big"):
            return Reply(200, cc, BIG)
        if path.startswith("/obj"):
            return Reply(200, cc, path.encode().ljust(100 * 1024, b"."))
        if path == "/vary":
            lang = req.header("Accept-Language") or "none"
            return Reply(200, [*cc, ("Vary", "Accept-Language")], lang.encode())
        if path == "/slow":
            return Reply(200, cc, SMALL, delay=1.0)
        if path == "/slowbig":
            return Reply(200, cc, BIG, delay=1.0)
        if path == "/short":  # revalidated with its ETag
            short = [("Cache-Control", "max-age=1"), ("ETag", '"s1"')]
            if req.header("If-None-Match") == '"s1"':
                return Reply(304, short, b"")
            return Reply(200, short, b"short")
        if path == "/shortbig":  # disk only, revalidated slowly with its ETag
            short = [("Cache-Control", "max-age=1"), ("ETag", '"b1"')]
            if req.header("If-None-Match") == '"b1"':
                return Reply(304, [("Cache-Control", "max-age=600"), ("ETag", '"b1"')], b"",
                             delay=1.0)
            return Reply(200, short, BIG)
        if path == "/varystar":  # varies on Accept-Language; its 304 says Vary: *
            lang = req.header("Accept-Language") or "none"
            if req.header("If-None-Match") == '"%s"' % lang:
                return Reply(304, [("Cache-Control", "max-age=600"), ("Vary", "*")], b"")
            return Reply(200, [("Cache-Control", "max-age=1"), ("ETag", '"%s"' % lang),
                               ("Vary", "Accept-Language")], lang.encode())
        if path == "/versioned":
            if req.method == "POST":
                self.version += 1
                return Reply(204, [], b"")
            return Reply(200, cc, b"v%d" % self.version)
        return Reply(404, [], b"no")


@pytest.fixture
def site() -> Site:
    return Site()


def config_text(port: int, origin: str, disk: Path, workers: int = 1,
                extra: str = "") -> str:
    return (f'[server]\nworkers = {workers}\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[caches.main]\nmemory = "64k"\n'
            f'disk = {{ path = "{disk}", size = "10m"{extra} }}\n'
            f'[upstreams.app]\nservers = ["{origin}"]\n'
            '[[routes]]\nupstream = "app"\ncache = "main"\n')


def get(port: int, path: str, headers: str = "", method: str = "GET",
        body: bytes = b"") -> RawResponse:
    with RawClient(port) as client:
        length = f"Content-Length: {len(body)}\r\n" if method != "GET" else ""
        client.send(f"{method} {path} HTTP/1.1\r\nHost: site\r\n{headers}{length}\r\n".encode()
                    + body)
        return client.read_response(head_request=method == "HEAD")


def file_of(disk: Path, path: str, variant: bytes | None = None) -> Path:
    return Path(entry_path(str(disk), cache_key(b"http://site" + path.encode()), variant))


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def entries(disk: Path) -> list[Path]:
    return sorted(p for p in disk.glob("*/*") if is_entry(p.name))


def hit(response: RawResponse) -> bool:
    return (response.header("Cache-Status") or "").startswith("fastproxy;hit")


# -- end to end ----------------------------------------------------------------------------


def test_shared_by_workers_and_kept_across_a_restart(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"  # made when missing
    port = free_port()
    proxy = ProxyProcess(config_text(port, origin.address, disk, workers=2), tmp_path,
                         port).start()
    try:
        proxy.wait_worker_pids(3)  # two workers and the evictor
        for path in ("/small", "/big"):
            first = get(port, path)
            assert first.status == 200 and first.header("Cache-Status").endswith(";stored")
            assert wait_for(file_of(disk, path).exists)
        assert not list(disk.glob(f"*/{TEMP_PREFIX}*"))  # renamed into place
        # New connections land on both workers: /big is on disk only (larger than
        # the memory tier's max_object), /small was in the memory of one worker
        # only. Every answer is a hit; the origin was asked once for each.
        for _ in range(12):
            for path, body in (("/small", SMALL), ("/big", BIG)):
                again = get(port, path)
                assert again.body == body and hit(again), again.header("Cache-Status")
        assert site.asked == {"/small": 1, "/big": 1}
        # HEAD and conditionals are answered from the disk copy too.
        head = get(port, "/big", method="HEAD")
        assert head.status == 200 and head.header("Content-Length") == str(len(BIG))
        assert get(port, "/small", 'If-None-Match: "s"\r\n').status == 304
    finally:
        proxy.stop()
    # Restarted on the same directory: hits, the origin is not asked.
    proxy = ProxyProcess(config_text(port, origin.address, disk, workers=2), tmp_path,
                         port).start()
    try:
        for path, body in (("/small", SMALL), ("/big", BIG)):
            again = get(port, path)
            assert (again.status, again.body) == (200, body) and hit(again)
            assert again.header("Age") is not None
        assert site.asked == {"/small": 1, "/big": 1}
    finally:
        proxy.stop()


def test_concurrent_misses_collapse_with_a_disk(make_origin: Callable[..., Origin],
                                               site: Site, tmp_path: Path) -> None:
    """Requests for a key being fetched wait for it, also when it goes to disk only
    (they read the file once it is written)."""
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    port = free_port()
    proxy = ProxyProcess(config_text(port, origin.address, disk), tmp_path, port).start()
    results: list[RawResponse] = []
    lock = threading.Lock()

    def one(path: str, ready: threading.Barrier) -> None:
        with RawClient(port, timeout=10) as client:
            ready.wait()  # connected first, then all ask at once
            client.send(f"GET {path} HTTP/1.1\r\nHost: site\r\n\r\n".encode())
            response = client.read_response()
        with lock:
            results.append(response)

    try:
        for path, body in (("/slow", SMALL), ("/slowbig", BIG)):
            results.clear()
            ready = threading.Barrier(5, timeout=10)
            threads = [threading.Thread(target=one, args=(path, ready)) for _ in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            assert [r.body for r in results] == [body] * 5
            assert site.asked[path] == 1, path
            statuses = [r.header("Cache-Status") for r in results]
            assert sum(st.endswith(";stored") for st in statuses) == 1, statuses
    finally:
        proxy.stop()


def test_a_stale_disk_copy_is_revalidated(make_origin: Callable[..., Origin], site: Site,
                                          tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    port = free_port()
    text = config_text(port, origin.address, disk)
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        assert get(port, "/short").body == b"short"
        assert wait_for(file_of(disk, "/short").exists)
    finally:
        proxy.stop()
    found = DiskStore(str(disk), 1 << 30, 1 << 30).lookup(
        cache_key(b"http://site/short"), b"http://site/short", [])
    assert isinstance(found, tuple)
    stored_at = found[0].response_time
    time.sleep(max(0.0, stored_at + 1.2 - time.time()))  # stale now
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        again = get(port, "/short")
        assert (again.status, again.body) == (200, b"short")
        assert again.header("Cache-Status").startswith("fastproxy;fwd=stale;fwd-status=304")
        assert site.asked["/short"] == 2

        def refreshed() -> bool:  # the 304 refreshed the file too
            found = DiskStore(str(disk), 1 << 30, 1 << 30).lookup(
                cache_key(b"http://site/short"), b"http://site/short", [])
            return isinstance(found, tuple) and found[0].response_time > stored_at

        assert wait_for(refreshed)
    finally:
        proxy.stop()


def test_waiters_for_a_revalidated_disk_only_response_are_served_from_it(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    """Requests that wait while a stale response kept on disk only (too big for the
    memory tier) is revalidated get the refreshed response; none of them fetches
    the whole body from the origin."""
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    port = free_port()
    proxy = ProxyProcess(config_text(port, origin.address, disk), tmp_path, port).start()
    results: list[RawResponse] = []
    lock = threading.Lock()

    def one(ready: threading.Barrier) -> None:
        with RawClient(port, timeout=10) as client:
            ready.wait()
            client.send(b"GET /shortbig HTTP/1.1\r\nHost: site\r\n\r\n")
            response = client.read_response()
        with lock:
            results.append(response)

    try:
        assert get(port, "/shortbig").body == BIG
        assert wait_for(file_of(disk, "/shortbig").exists)
        time.sleep(1.3)  # stale now (max-age=1)
        ready = threading.Barrier(5, timeout=10)
        threads = [threading.Thread(target=one, args=(ready,)) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert [r.body for r in results] == [BIG] * 5
        statuses = [r.header("Cache-Status") for r in results]
        # One conditional request (answered 304) and no other: the others waited.
        assert site.asked["/shortbig"] == 2, statuses
        assert sum("fwd-status=304" in st for st in statuses) == 1, statuses
        assert sum(st.endswith(";collapsed") for st in statuses) == 4, statuses
    finally:
        proxy.stop()


def test_a_304_that_says_vary_star_is_not_stored_for_every_variant(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    """A 304 whose fields make the stored response `Vary: *` answers the request
    that revalidated; it is not stored as a response that varies on nothing (in
    memory, or on disk over the Vary record), which would answer every variant."""
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    port = free_port()
    proxy = ProxyProcess(config_text(port, origin.address, disk), tmp_path, port).start()
    try:
        assert get(port, "/varystar", "Accept-Language: fr\r\n").body == b"fr"
        assert wait_for(file_of(disk, "/varystar", b'accept-language="fr"').exists)
        time.sleep(1.3)  # stale now (max-age=1)
        again = get(port, "/varystar", "Accept-Language: fr\r\n")
        assert (again.status, again.body) == (200, b"fr")
        assert "fwd-status=304" in again.header("Cache-Status")
        time.sleep(0.3)  # a disk write the 304 made would be done
        other = get(port, "/varystar", "Accept-Language: de\r\n")
        assert (other.status, other.body) == (200, b"de"), other.header("Cache-Status")
        assert site.asked["/varystar"] == 3
    finally:
        proxy.stop()


class FileOpens:
    """Counts the opens of the files in one directory, seen from the kernel
    (inotify): how often the proxy read a cache file. A thread drains the events
    as they come (the kernel merges two identical events in a row left unread);
    opens and closes alternate for a file opened by one reader at a time."""

    IN_OPEN = 0x20
    IN_CLOSE_NOWRITE = 0x10

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        watch = libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                       self.IN_OPEN | self.IN_CLOSE_NOWRITE)
        assert watch >= 0, os.strerror(ctypes.get_errno())
        self.opens: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while not self.stopping:
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            data = os.read(self.fd, 65536)
            at = 0
            while at < len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16:at + 16 + size].rstrip(b"\0").decode()
                at += 16 + size
                if mask & self.IN_OPEN:
                    with self.lock:
                        self.opens[name] = self.opens.get(name, 0) + 1

    def count(self, name: str) -> int:
        time.sleep(0.2)  # the last events are read
        with self.lock:
            return self.opens.get(name, 0)

    def close(self) -> None:
        self.stopping = True
        self.reader.join(5)
        os.close(self.fd)


def test_requests_waiting_for_a_disk_read_share_its_answer(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    """Requests for a key being read from disk (in a thread) wait for that read and
    are answered from it; they do not each read the file again, one after the
    other."""
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    port = free_port()
    text = config_text(port, origin.address, disk, extra=', max_object = "8m"').replace(
        'size = "10m"', 'size = "64m"')
    proxy = ProxyProcess(text, tmp_path, port).start()
    clients = [RawClient(port, timeout=20) for _ in range(20)]
    opens = None
    try:
        assert get(port, "/huge").body == HUGE
        final = file_of(disk, "/huge")
        assert wait_for(final.exists)
        opens = FileOpens(final.parent)
        for client in clients:  # all at once, from one thread
            client.send(b"GET /huge HTTP/1.1\r\nHost: site\r\n\r\n")
        responses = [client.read_response() for client in clients]
        assert all(r.status == 200 and r.body == HUGE and hit(r) for r in responses)
        assert site.asked["/huge"] == 1
        # A request that reads the file itself opens it twice (on the loop, found
        # too big to read there, then in a thread); one that waits for another's
        # read opens it once (on the loop), and is answered from that read.
        assert opens.count(final.name) < 2 * len(clients), opens.opens
    finally:
        for client in clients:
            client.close()
        if opens is not None:
            opens.close()
        proxy.stop()


class HeldOrigin:
    """An origin whose first answer to /held stops after `first` body bytes until
    `release` is set (the proxy is then writing the file); later ones are whole."""

    def __init__(self, total: int = 600 * 1024, first: int = 400 * 1024) -> None:
        self.total = total
        self.first = first
        self.release = threading.Event()
        self.asked = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(20)
        try:
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    more = conn.recv(4096)
                    if not more:
                        return
                    data += more
                self.asked += 1
                body = b"h" * self.total
                conn.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % self.total)
                if self.asked == 1:
                    conn.sendall(body[:self.first])
                    self.release.wait(20)
                    conn.sendall(body[self.first:])
                else:
                    conn.sendall(body)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopping = True
        self.release.set()
        self.accepter.join(5)
        for t in self.threads:
            t.join(5)
        self.sock.close()


@pytest.fixture
def held() -> Iterator[HeldOrigin]:
    origin = HeldOrigin()
    yield origin
    origin.stop()


def test_streamed_while_stored_and_a_crash_leaves_only_a_temp_file(
        held: HeldOrigin, tmp_path: Path) -> None:
    disk = tmp_path / "cache"
    port = free_port()
    text = config_text(port, held.address, disk)
    proxy = ProxyProcess(text, tmp_path, port).start()
    final = file_of(disk, "/held")
    try:
        with RawClient(port, timeout=10) as client:
            client.send(b"GET /held HTTP/1.1\r\nHost: site\r\n\r\n")
            head = client.read_until(b"\r\n\r\n")
            assert head is not None and b" 200 " in head.split(b"\r\n")[0]
            # The first client has the first part while the rest is not even sent.
            assert client.read_exactly(held.first) == b"h" * held.first
            assert wait_for(lambda: any(disk.glob(f"*/{TEMP_PREFIX}*")), 5)
            assert not final.exists()  # never a partial file under the entry's name
            temp = next(disk.glob(f"*/{TEMP_PREFIX}*"))
            writer = int(temp.name[len(TEMP_PREFIX):].split(".")[0])
            assert writer in proxy.worker_pids()
            os.kill(writer, signal.SIGKILL)  # a crash mid-write
        held.release.set()
        assert wait_for(lambda: len(proxy.worker_pids()) == 2 and writer not in
                        proxy.worker_pids(), 10)
        assert temp.exists() and not final.exists()
        # The leftover is not an entry: a miss, fetched again (whole) and stored.
        again = get(port, "/held")
        assert again.status == 200 and len(again.body) == held.total
        assert held.asked == 2
        assert wait_for(final.exists)
    finally:
        proxy.stop()
    # On start the evictor removes the temporary file of the writer that died.
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        assert wait_for(lambda: not temp.exists(), 10)
        assert wait_for(lambda: "removed 1 unfinished file" in proxy.log(), 5)
        assert hit(get(port, "/held")) and held.asked == 2
    finally:
        proxy.stop()


def test_a_write_in_flight_across_an_invalidation_does_not_leave_its_file(
        held: HeldOrigin, tmp_path: Path) -> None:
    """A response that was being written when its key was invalidated (by another
    request, in any worker) is not left on disk: a restart (which forgets the
    invalidations) would serve the old version."""
    disk = tmp_path / "cache"
    port = free_port()
    text = config_text(port, held.address, disk)
    proxy = ProxyProcess(text, tmp_path, port).start()
    final = file_of(disk, "/held")
    try:
        with RawClient(port, timeout=10) as client:
            client.send(b"GET /held HTTP/1.1\r\nHost: site\r\n\r\n")
            head = client.read_until(b"\r\n\r\n")
            assert head is not None and b" 200 " in head.split(b"\r\n")[0]
            assert client.read_exactly(held.first) == b"h" * held.first
            assert wait_for(lambda: any(disk.glob(f"*/{TEMP_PREFIX}*")), 5)
            # The key is invalidated while its response is still being written.
            posted = get(port, "/held", method="POST")
            assert posted.status == 200 and held.asked == 2
            held.release.set()
            assert client.read_exactly(held.total - held.first) == b"h" * (
                held.total - held.first)
        assert wait_for(lambda: not any(disk.glob(f"*/{TEMP_PREFIX}*")), 5)
        assert wait_for(lambda: not final.exists(), 5), "the invalidated response was kept"
    finally:
        proxy.stop()
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        again = get(port, "/held")
        assert again.status == 200 and not hit(again) and held.asked == 3
    finally:
        proxy.stop()


def test_the_size_limit_evicts_the_least_recently_used(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    port = free_port()
    text = config_text(port, origin.address, disk).replace('size = "10m"', 'size = "1m"')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        for i in range(12):  # 12 x 100 KiB, on disk only (over memory's max_object)
            get(port, f"/obj{i}")
            assert wait_for(file_of(disk, f"/obj{i}").exists)
            if i == 4:
                # Written a while ago (a hit refreshes a file's time when it is
                # older than a minute): obj0 is used again, the most recent now.
                for j in range(5):
                    then = time.time() - 1000 + j
                    os.utime(file_of(disk, f"/obj{j}"), (then, then))
                assert hit(get(port, "/obj0"))
                assert wait_for(lambda: file_of(disk, "/obj0").stat().st_mtime > time.time() - 60)

        def used() -> int:
            return sum(blocks(p.stat().st_size) for p in entries(disk))

        assert wait_for(lambda: used() <= 1024 * 1024, 10)
        assert used() <= int(1024 * 1024 * 0.9)  # evicted down to 90 %
        assert "evicted" in proxy.log()
        left = {p.name for p in entries(disk)}
        assert file_of(disk, "/obj11").name in left and file_of(disk, "/obj0").name in left
        assert file_of(disk, "/obj1").name not in left  # the least recently used went
        assert site.asked["/obj1"] == 1
        assert not hit(get(port, "/obj1")) and site.asked["/obj1"] == 2
        assert hit(get(port, "/obj11")) and site.asked["/obj11"] == 1
    finally:
        proxy.stop()


def test_invalidation_removes_the_disk_copies(make_origin: Callable[..., Origin],
                                              site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    port = free_port()
    text = config_text(port, origin.address, disk, workers=2)
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        assert get(port, "/versioned").body == b"v1"
        assert get(port, "/vary", "Accept-Language: fr\r\n").body == b"fr"
        assert get(port, "/vary", "Accept-Language: de\r\n").body == b"de"
        record = file_of(disk, "/vary")
        fr = file_of(disk, "/vary", b'accept-language="fr"')
        de = file_of(disk, "/vary", b'accept-language="de"')
        assert wait_for(lambda: all(p.exists() for p in (file_of(disk, "/versioned"), record,
                                                         fr, de)))
        # A variant that is not stored: a miss (the record names Accept-Language).
        assert get(port, "/vary", "Accept-Language: it\r\n").body == b"it"
        assert get(port, "/versioned", method="POST").status == 204
        assert wait_for(lambda: not file_of(disk, "/versioned").exists())
        assert record.exists()
        # Whichever worker answers, and after a restart: the new version.
        assert {get(port, "/versioned").body for _ in range(10)} == {b"v2"}
    finally:
        proxy.stop()
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        assert get(port, "/versioned").body == b"v2"
        for lang in ("fr", "de"):
            again = get(port, "/vary", f"Accept-Language: {lang}\r\n")
            assert again.body == lang.encode() and hit(again)
        assert site.asked["/vary"] == 3
    finally:
        proxy.stop()


def test_corrupt_and_truncated_files_are_misses(make_origin: Callable[..., Origin],
                                                site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    port = free_port()
    text = config_text(port, origin.address, disk)
    paths = ("/big1", "/big2", "/big3", "/big4")
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        for path in paths:
            get(port, path)
            assert wait_for(file_of(disk, path).exists)
    finally:
        proxy.stop()
    truncated, flipped, garbage, empty = (file_of(disk, p) for p in paths)
    data = truncated.read_bytes()
    truncated.write_bytes(data[:-10])
    data = bytearray(flipped.read_bytes())
    data[100] ^= 0x01  # one bit of the body
    flipped.write_bytes(bytes(data))
    garbage.write_bytes(b"not a cache file at all, but long enough to have a trailer")
    empty.write_bytes(b"")
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        for path in paths:
            again = get(port, path)
            assert (again.status, again.body) == (200, BIG)  # from the origin
            assert not hit(again)
            assert site.asked[path] == 2
        assert wait_for(lambda: proxy.log().count("disk cache: ignored") == 4), proxy.log()
        log = proxy.log()
        for reason in ("no trailer", "checksum mismatch", "truncated"):
            assert reason in log, log
        # Stored again, whole: hits from now on.
        assert wait_for(lambda: all(_valid(disk, p) for p in paths))
    finally:
        proxy.stop()


def _valid(disk: Path, path: str) -> bool:
    store = DiskStore(str(disk), 1 << 30, 1 << 30)
    found = store.lookup(cache_key(b"http://site" + path.encode()),
                         b"http://site" + path.encode(), [])
    return isinstance(found, tuple) and found[0].body == BIG


# -- configuration ----------------------------------------------------------------------------


def test_disk_config(tmp_path: Path) -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
            "routes": [{"upstream": "a", "cache": "main"}]}

    def caches(**tables: object) -> dict[str, object]:
        return {**base, "caches": tables}

    config = parse_config(caches(main={"disk": {"path": "c", "size": "10g"}}),
                          base_dir=str(tmp_path))
    disk = config.caches["main"].disk
    assert disk is not None and disk.path == str(tmp_path / "c")
    assert disk.size == 10 << 30 and disk.max_object == 64 << 20
    assert config.caches["main"].store_limit == 64 << 20
    small = parse_config(caches(main={"disk": {"path": str(tmp_path), "size": "1m"}}))
    assert small.caches["main"].disk.max_object == 256 << 10  # a quarter of size
    assert small.caches["main"].store_limit == 8 << 20  # memory's max_object (8m default)

    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ConfigError) as info:
        parse_config(caches(
            main={"disk": {"path": str(afile), "size": "1m"}},
            b={"disk": {"size": "1m", "color": "red"}},
            c={"disk": {"path": str(tmp_path / "c"), "size": "1m", "max_object": "2m"}},
            d={"disk": {"path": str(tmp_path / "c"), "size": "100k"}},
            e={"disk": {"path": str(tmp_path / "e"), "size": "2g", "max_object": "2g"}},
            f={"disk": "/var/cache"},
            g={"disk": {"path": str(afile / "below"), "size": "1m"}},
            h={"disk": {"path": str(tmp_path / "c"), "size": "1m"}},
            i={"disk": {"path": "", "size": "1m"}},
            j={"disk": {"path": "/tmp/a\0b/c", "size": "1m"}}))
    errors = {i.key: i.reason for i in info.value.errors}
    assert set(errors) == {
        "caches.main.disk.path", "caches.b.disk.path", "caches.b.disk.color",
        "caches.c.disk.max_object", "caches.d.disk.size", "caches.e.disk.max_object",
        "caches.f.disk", "caches.g.disk.path", "caches.h.disk.path", "caches.i.disk.path",
        "caches.j.disk.path"}
    assert "is not a directory" in errors["caches.main.disk.path"]
    assert errors["caches.b.disk.path"] == "missing required key"
    assert "must not exceed size" in errors["caches.c.disk.max_object"]
    assert "cannot be made" in errors["caches.g.disk.path"]
    assert "already the disk of [caches.c]" in errors["caches.h.disk.path"]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError) as info:
            parse_config(caches(main={"disk": {"path": str(locked), "size": "1m"}}))
        assert "not writable" in str(info.value)


def test_one_directory_is_one_cache_also_through_a_symlink(tmp_path: Path) -> None:
    """Two caches on one directory (two evictors, two key spaces in one set of
    files) are refused also when one path reaches it through a symlink."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": [{"address": "127.0.0.1:1"}],
                      "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
                      "caches": {"one": {"disk": {"path": str(tmp_path / "real"), "size": "1m"}},
                                 "two": {"disk": {"path": str(tmp_path / "link"), "size": "1m"}}},
                      "routes": [{"upstream": "a", "cache": "one"}]})
    errors = {i.key: i.reason for i in info.value.errors}
    assert list(errors) == ["caches.two.disk.path"]
    assert "already the disk of [caches.one]" in errors["caches.two.disk.path"]
