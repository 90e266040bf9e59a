"""atheris fuzz target: HPACK (fastproxy._hpack) and the HTTP/2 connection layer
(fastproxy._h2.ServerConnection and ClientConnection).

The first byte picks the target. Even: the rest is a header block for an
HpackDecoder (fresh, or after the RFC 7541 C.4.1 block put entries in its
table); it must give a list of (bytes, bytes) or raise HpackError, never more
than the header list limit, and a list it gives must come back the same through
our HpackEncoder and a fresh decoder. Odd: the rest is what a client sends after
the preface and an empty SETTINGS; it is fed to a ServerConnection whole, and to
another in pieces whose sizes the input also chooses. Only H2ProtocolError may
come out, both connections must make the same handler calls and the same
outcome, and what they send must split into whole frames. First byte 3 mod 4:
the same for a ClientConnection with streams 1, 3 and 5 open (1 and 5 with
END_STREAM sent), fed what a server sends after an empty SETTINGS (responses,
trailers, resets, GOAWAY); its stream room must never go below 0, and after a
GOAWAY it must refuse new streams.

    python tests/fuzz/fuzz_h2.py -max_total_time=10
    python tests/fuzz/fuzz_h2.py crash-<sha1>        # replay one input

Without corpus arguments it reads the seeds in tests/fuzz/corpus/h2/ and keeps
what it learns in build/fuzz-corpus-h2/. The extensions are not instrumented:
libFuzzer follows only the checks here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import atheris

from fastproxy._h2 import (
    PREFACE,
    ClientConnection,
    H2ProtocolError,
    H2StreamClosed,
    ServerConnection,
)
from fastproxy._hpack import HpackDecoder, HpackEncoder, HpackError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus" / "h2"
WORK_CORPUS = ROOT / "build" / "fuzz-corpus-h2"
SETTINGS0 = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
C41 = bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")
LIST_LIMIT = 1 << 14


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def h2_request(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.calls.append(("request", sid, headers, ended))

    def h2_response(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.calls.append(("response", sid, headers, ended))

    def h2_trailers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("trailers", sid, headers))

    def h2_data(self, sid: int, data: bytes, size: int) -> None:
        if not 0 <= len(data) <= size <= 16384:
            raise AssertionError(f"DATA of {len(data)} bytes counted as {size}")
        self.calls.append(("data", sid, data, size))

    def h2_end(self, sid: int) -> None:
        self.calls.append(("end", sid))

    def h2_reset(self, sid: int, code: int, remote: bool) -> None:
        self.calls.append(("reset", sid, code, remote))

    def h2_window(self, sid: int) -> None:
        self.calls.append(("window", sid))

    def h2_ping(self) -> None:
        self.calls.append(("ping",))

    def h2_settings(self) -> None:
        self.calls.append(("settings",))

    def h2_goaway(self, code: int, last: int) -> None:
        self.calls.append(("goaway", code, last))

    def h2_flood_frame(self, kind: str) -> None:
        if kind not in ("empty DATA", "WINDOW_UPDATE"):
            raise AssertionError(f"flood frame of an unknown kind {kind!r}")
        self.calls.append(("flood", kind))


def check_frames(data: bytes) -> None:
    pos = 0
    while pos < len(data):
        if len(data) - pos < 9:
            raise AssertionError("a cut frame header in our output")
        pos += 9 + int.from_bytes(data[pos:pos + 3], "big")
    if pos != len(data):
        raise AssertionError("a cut frame in our output")


def hpack_case(data: bytes, seeded: bool) -> None:
    decoder = HpackDecoder(4096, LIST_LIMIT)
    if seeded:
        decoder.decode(C41)
    try:
        headers = decoder.decode(data)
    except HpackError:
        return
    size = 0
    for name, value in headers:
        if type(name) is not bytes or type(value) is not bytes:
            raise AssertionError("a field that is not bytes")
        size += len(name) + len(value) + 32
    if size > LIST_LIMIT:
        raise AssertionError(f"a list of {size} bytes past the limit")
    again = HpackDecoder(4096, LIST_LIMIT).decode(HpackEncoder().encode(headers))
    if again != headers:
        raise AssertionError("encoding then decoding changed the list")


def run(pieces: list[bytes]) -> tuple[list[tuple[Any, ...]], object]:
    rec = Recorder()
    conn = ServerConnection(rec, 8, 8192, LIST_LIMIT, 65535, 1 << 20)
    out = [conn.data_to_send()]
    outcome: object = None
    for piece in [PREFACE + SETTINGS0, *pieces]:
        try:
            conn.receive(piece)
        except H2ProtocolError as exc:
            outcome = exc.code
            break
        out.append(conn.data_to_send())
    out.append(conn.data_to_send())
    check_frames(b"".join(out))
    return rec.calls, outcome


REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
           (b":authority", b"up")]


def run_client(pieces: list[bytes]) -> tuple[list[tuple[Any, ...]], object]:
    rec = Recorder()
    conn = ClientConnection(rec, 8192, LIST_LIMIT, 65535, 1 << 20)
    for end in (True, False, True):
        conn.open_stream(REQUEST, end_stream=end)
    first = conn.data_to_send()
    if not first.startswith(PREFACE):
        raise AssertionError("no client preface first")
    out = [first[len(PREFACE):]]
    outcome: object = None
    for piece in [SETTINGS0, *pieces]:
        try:
            conn.receive(piece)
        except H2ProtocolError as exc:
            outcome = exc.code
            break
        if conn.stream_room < 0:
            raise AssertionError("a negative stream room")
        out.append(conn.data_to_send())
    if conn.going_away:
        try:
            conn.open_stream(REQUEST, end_stream=True)
        except H2StreamClosed:
            pass
        else:
            raise AssertionError("a stream opened after GOAWAY")
    out.append(conn.data_to_send())
    check_frames(b"".join(out))
    return rec.calls, outcome


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        hpack_case(data[1:], data[0] % 4 == 2)
        return
    target = run_client if data[0] % 4 == 3 else run
    fdp = atheris.FuzzedDataProvider(data[1:])
    cuts = [fdp.ConsumeIntInRange(1, 64) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    whole = target([body])
    parts = []
    pos = 0
    for cut in cuts:
        parts.append(body[pos:pos + cut])
        pos += cut
    parts.append(body[pos:])
    if target(parts) != whole:
        raise AssertionError("the same bytes in pieces gave other calls")


def main(argv: list[str]) -> None:
    args = list(argv)
    if not any(a and not a.startswith("-") for a in args[1:]):
        WORK_CORPUS.mkdir(parents=True, exist_ok=True)
        args += [str(WORK_CORPUS), str(SEEDS)]
    for fn in (TestOneInput, hpack_case, run, run_client, check_frames):
        atheris.instrument_func(fn)
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
