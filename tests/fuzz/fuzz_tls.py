"""atheris fuzz target: the TLS engine of fastproxy._tls (TlsServer, TlsConnection).

Each input drives one TlsConnection of a real ServerContext (OpenSSL, a
trustme certificate for "localhost", ALPN http/1.1) in this process. Below it,
a recorder stands in for uvloop's TCP transport (what is written, close, abort,
write_eof; reads arrive through get_buffer/buffer_updated, as uvloop delivers
them); above it, a client protocol that records what it is told and echoes
what it reads (so the write path runs too). Byte 0 of the input picks a mode:

- 0: the rest is what a client sends: mutated and truncated ClientHellos (the
  seeds are real ones, made by Python's ssl: TLS 1.3 and 1.2, with and without
  SNI and ALPN) or anything else;
- 1: a real client (ssl.SSLObject over memory BIOs) completes a handshake,
  then the rest arrives as it is: bytes where records are expected;
- 2: after a real handshake the client sends the rest (from byte 5 on) as
  application data, and its record stream is tampered with when byte 4 is not
  0: with bytes 2-3 (big-endian) even, the byte at that offset is XORed with
  byte 4; odd, the last (byte 4) bytes are cut off.

Byte 1 cuts the client's bytes into reads of that size (0: one read). After
the last read comes the client's FIN and then connection_lost, as uvloop
calls them. Checks: nothing raises out of the protocol methods; the transport
is never written to after it was closed; every connection ends up closed and
leaves the server's `handshaking` set; the client protocol is told of the
connection (connection_made) only after a handshake, of data only in between,
and of its end (connection_lost) exactly when it was told of the start; the
plaintext it gets is a prefix of what the client sent (all of it when the
stream was not tampered with), and the client decrypts the echo exactly;
what the server writes stays within a bound; the process's RSS does not grow
by more than 64 MiB after the first 500 inputs (a leak per connection would).
Anything else is a crash.

    python tests/fuzz/fuzz_tls.py -max_total_time=10
    python tests/fuzz/fuzz_tls.py crash-<sha1>        # replay one input

Without corpus arguments it writes fresh seeds to build/fuzz-seeds-tls/, reads
them and keeps what it learns in build/fuzz-corpus-tls/. The extension and
OpenSSL are not instrumented, so libFuzzer is guided only by the checks below.
"""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path

import atheris
import trustme

from fastproxy._tls import ServerContext
from fastproxy.tls import DEFAULT_CIPHERS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = ROOT / "build" / "fuzz-seeds-tls"
WORK_CORPUS = ROOT / "build" / "fuzz-corpus-tls"

OUT_BOUND = 64 * 1024  # the server's own output (flight, tickets, alerts), beyond the echo
RSS_GROWTH = 64 * 1024 * 1024
CA = trustme.CA()
_DIR = ROOT / "build" / "fuzz-tls-certs"  # made again at each start (libFuzzer skips atexit)
_DIR.mkdir(parents=True, exist_ok=True)
_CERT, _KEY = str(_DIR / "cert.pem"), str(_DIR / "key.pem")
_issued = CA.issue_cert("localhost")
_issued.private_key_pem.write_to_path(_KEY)
_issued.cert_chain_pems[0].write_to_path(_CERT)
CONTEXT = ServerContext([[(_CERT, _KEY)]], {"localhost": 0}, ciphers=DEFAULT_CIPHERS,
                        alpn=("http/1.1",))


def client_context(maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
                   alpn: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    CA.configure_trust(ctx)
    ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


CLIENT = client_context()


class Transport:
    """Records what TlsConnection does to uvloop's transport."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.eof = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise AssertionError("written to after close()")
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 443)}.get(
            name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class App:
    """The client protocol: records its calls, echoes what it reads in two parts."""

    def __init__(self) -> None:
        self.transport: object = None
        self.made = self.lost = self.eof = False
        self.data = bytearray()

    def connection_made(self, transport: object) -> None:
        if self.made:
            raise AssertionError("connection_made twice")
        self.made = True
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.made or self.lost or self.eof:
            raise AssertionError("data_received outside the connection")
        if type(data) is not bytes or not data:
            raise AssertionError(f"data_received({data!r})")
        self.data += data
        half = len(data) // 2
        self.transport.writelines([data[:half], data[half:]])  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        if not self.made or self.lost:
            raise AssertionError("eof_received outside the connection")
        self.eof = True
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.made or self.lost:
            raise AssertionError("connection_lost without connection_made, or twice")
        self.lost = True

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


SERVER = CONTEXT.server(App)


def feed(conn: object, tr: Transport, data: bytes, size: int) -> None:
    """The client's bytes as uvloop hands them over: reads of `size` (0: one),
    none once the transport is closed."""
    step = size or len(data) or 1
    for at in range(0, len(data), step):
        if tr.closed:
            return
        chunk = data[at:at + step]
        buf = conn.get_buffer(len(chunk))  # type: ignore[attr-defined]
        if len(buf) < len(chunk):
            raise AssertionError(f"get_buffer gave {len(buf)} bytes for {len(chunk)}")
        buf[:len(chunk)] = chunk
        conn.buffer_updated(len(chunk))  # type: ignore[attr-defined]


def handshake(conn: object, tr: Transport) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A real client's handshake with `conn`; returns the client and its BIOs."""
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = CLIENT.wrap_bio(inc, outg, server_hostname="localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        feed(conn, tr, outg.read(), 0)
        inc.write(bytes(tr.out))
        tr.out.clear()
        if done:
            return client, inc, outg
    raise AssertionError("no handshake with a real client in 10 rounds")


def tamper(stream: bytes, data: bytes) -> tuple[bytes, bool]:
    """Bytes 2-4 of the input: XOR one byte of the records, or cut the last ones."""
    where = int.from_bytes(data[2:4], "big") if len(data) >= 4 else 0
    how = data[4] if len(data) >= 5 else 0
    if not how or not stream:
        return stream, False
    if where & 1:
        return stream[:max(len(stream) - how, 0)], how > 0
    at = where % len(stream)
    return stream[:at] + bytes([stream[at] ^ how]) + stream[at + 1:], True


def finish(conn: object, tr: Transport) -> None:
    """The client's FIN, then connection_lost, as uvloop calls them."""
    if not tr.closed:
        if not conn.eof_received():  # type: ignore[attr-defined]
            tr.closed = True  # uvloop closes the transport on False
        elif not tr.closed:
            conn.close()  # type: ignore[attr-defined]
    if not tr.closed:
        raise AssertionError("the connection stayed open after the client's FIN")
    conn.connection_lost(None)  # type: ignore[attr-defined]


_runs = 0
_rss_base = 0


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def TestOneInput(data: bytes) -> None:
    global _runs, _rss_base
    mode = data[0] % 3 if data else 0
    size = data[1] if len(data) > 1 else 0
    conn = SERVER()
    app = conn.app
    tr = Transport()
    conn.connection_made(tr)
    sent = b""
    whole = True
    client = inc = None
    if mode == 0:
        feed(conn, tr, data[2:], size)
    else:
        client, inc, outg = handshake(conn, tr)
        if not app.made:
            raise AssertionError("the handshake completed but the app was not told")
        if mode == 1:
            feed(conn, tr, data[2:], size)
            whole = False
        else:
            sent = data[5:]
            if sent:
                client.write(sent)
            stream, changed = tamper(outg.read(), data)
            whole = not changed
            feed(conn, tr, stream, size)
    echoed = bytes(app.data)
    if app.made and echoed != sent[:len(echoed)] and mode == 2:
        raise AssertionError(f"the app got {echoed[:80]!r}..., not a prefix of what was sent")
    if mode == 2 and whole and echoed != sent:
        raise AssertionError(f"{len(sent)} bytes sent intact, {len(echoed)} delivered")
    if len(tr.out) > OUT_BOUND + 2 * len(echoed):
        raise AssertionError(f"{len(tr.out)} bytes written for a {len(data)}-byte input")
    if client is not None and inc is not None and whole and mode == 2:
        inc.write(bytes(tr.out))
        got = bytearray()
        try:
            while True:
                chunk = client.read(65536)
                if not chunk:
                    break
                got += chunk
        except ssl.SSLWantReadError:
            pass
        if bytes(got) != echoed:
            raise AssertionError(f"the client decrypted {len(got)} bytes of a "
                                 f"{len(echoed)}-byte echo")
    finish(conn, tr)
    if app.made != app.lost:
        raise AssertionError(f"connection_made {app.made}, connection_lost {app.lost}")
    if SERVER.handshaking:
        raise AssertionError(f"{len(SERVER.handshaking)} connection(s) left in handshaking")
    _runs += 1
    if _runs == 500:
        _rss_base = rss()
    elif _runs > 500 and _runs % 250 == 0 and rss() - _rss_base > RSS_GROWTH:
        raise AssertionError(f"RSS grew by {(rss() - _rss_base) >> 20} MiB since input 500")


def client_hellos() -> list[bytes]:
    """Real ClientHellos (the first flight of Python's ssl as a client)."""
    out = []
    for maximum, alpn, name in ((ssl.TLSVersion.TLSv1_3, True, "localhost"),
                                (ssl.TLSVersion.TLSv1_2, True, "localhost"),
                                (ssl.TLSVersion.TLSv1_3, False, None),
                                (ssl.TLSVersion.TLSv1_3, True, "other.example")):
        ctx = client_context(maximum, alpn)
        ctx.check_hostname = name is not None
        inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, outg, server_hostname=name)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        out.append(outg.read())
    return out


def write_seeds(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for i, hello in enumerate(client_hellos()):
        seeds[f"hello-{i}"] = b"\x00\x00" + hello
        seeds[f"hello-{i}-cut"] = b"\x00\x07" + hello[:len(hello) // 2]
        seeds[f"hello-{i}-reads"] = b"\x00\x05" + hello
    seeds["after-handshake-garbage"] = b"\x01\x00" + b"\x17\x03\x03\x00\x10" + bytes(16)
    seeds["after-handshake-alert"] = b"\x01\x00" + b"\x15\x03\x03\x00\x02\x02\x28"
    seeds["records-intact"] = b"\x02\x00\x00\x00\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    seeds["records-flipped"] = b"\x02\x03\x00\x0a\x01GET / HTTP/1.1\r\n\r\n"
    seeds["records-cut"] = b"\x02\x00\x00\x01\x05" + b"x" * 300
    for name, data in seeds.items():
        (folder / name).write_bytes(data)


def main(argv: list[str]) -> None:
    args = list(argv)
    if not any(a and not a.startswith("-") for a in args[1:]):
        write_seeds(SEEDS)
        WORK_CORPUS.mkdir(parents=True, exist_ok=True)
        args += [str(WORK_CORPUS), str(SEEDS)]  # new inputs go to the first one
    if not any(a.startswith("-rss_limit_mb=") for a in args):
        args.append("-rss_limit_mb=1024")
    for fn in (TestOneInput, feed, handshake, tamper, finish, App.data_received,
               Transport.write):
        atheris.instrument_func(fn)
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
