"""The ClientHello reader of tcp listeners (_stream.HelloReader) against a simple
Python model, on real ClientHellos (the ssl module's), on generated ones cut into
records and reads at random, and on arbitrary bytes (hypothesis)."""

from __future__ import annotations

import itertools
import ssl
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._stream import HelloReader, parse_client_hello

REC_MAX = 16384 + 256
NAME_BYTES = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


# -- the model ----------------------------------------------------------------------------

def model_body(m: bytes) -> tuple[str, bytes | None]:
    """A ClientHello body: ("name", name) / ("no_name", None) / ("bad", None)."""
    bad = ("bad", None)
    if len(m) < 35 or m[0] != 3:
        return bad
    p = 34
    sid = m[p]
    p += 1
    if sid > 32 or p + sid + 2 > len(m):
        return bad
    p += sid
    suites = int.from_bytes(m[p:p + 2], "big")
    p += 2
    if suites < 2 or suites % 2 or p + suites + 1 > len(m):
        return bad
    p += suites
    comp = m[p]
    p += 1
    if comp < 1 or p + comp > len(m):
        return bad
    p += comp
    if p == len(m):
        return ("no_name", None)
    if p + 2 > len(m) or p + 2 + int.from_bytes(m[p:p + 2], "big") != len(m):
        return bad
    p += 2
    name = None
    seen = False
    while p < len(m):
        if p + 4 > len(m):
            return bad
        etype, elen = struct.unpack("!HH", m[p:p + 4])
        p += 4
        ext = m[p:p + elen]
        if len(ext) != elen:
            return bad
        p += elen
        if etype != 0:
            continue
        if seen:
            return bad
        seen = True
        if elen == 0:
            continue
        if elen < 2 or 2 + int.from_bytes(ext[:2], "big") != elen or elen == 2:
            return bad
        q = 2
        while q < elen:
            if q + 3 > elen:
                return bad
            kind, nlen = ext[q], int.from_bytes(ext[q + 1:q + 3], "big")
            value = ext[q + 3:q + 3 + nlen]
            if len(value) != nlen:
                return bad
            if kind == 0:
                if name is not None or not 0 < nlen <= 255:
                    return bad
                if any(c not in NAME_BYTES for c in value) or value.startswith(b".") \
                        or b".." in value:
                    return bad
                name = value
            q += 3 + nlen
    if name is None:
        return ("no_name", None)
    name = name[:-1] if name.endswith(b".") else name
    return ("name", name.lower()) if name else bad


def model(data: bytes, limit: int = 16384) -> tuple[str, bytes | None]:
    """The reader's verdict on the bytes a client sent first, all at once."""
    msg = b""
    p = 0
    records = 0
    while True:
        if p >= len(data):
            return ("more", None)
        if data[p] != 22:
            return ("not_tls" if records == 0 else "bad", None)
        if p + 1 >= len(data):
            return ("more", None)
        if data[p + 1] != 3:
            return ("not_tls" if records == 0 else "bad", None)
        if p + 5 > len(data):
            return ("more", None)
        length = int.from_bytes(data[p + 3:p + 5], "big")
        if length == 0 or length > REC_MAX:
            return ("bad", None)
        records += 1
        part = data[p + 5:p + 5 + length]
        msg += part
        if len(msg) >= 4:
            if msg[0] != 1:
                return ("bad", None)
            size = int.from_bytes(msg[1:4], "big")
            if size > limit:
                return ("too_big", None)
            if size == 0:
                return ("bad", None)
            if len(msg) >= 4 + size:
                return model_body(msg[4:4 + size])
        if len(part) < length:
            return ("more", None)
        p += 5 + length


def reader_verdict(chunks: list[bytes], limit: int = 16384) -> tuple[str, bytes | None]:
    reader = HelloReader(limit)
    result = "more"
    for chunk in chunks:
        result = reader.feed(chunk)
        if result != "more":
            break
    return result, reader.server_name


# -- building ClientHellos --------------------------------------------------------------

def client_hello_bytes(name: str | None) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    if name is None:
        context.check_hostname = False
    obj = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def hello_body(extensions: list[tuple[int, bytes]], session: bytes = b"",
               suites: bytes = b"\x13\x01\x13\x02", with_ext: bool = True) -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session)]) + session
    body += struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    if with_ext:
        exts = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in extensions)
        body += struct.pack("!H", len(exts)) + exts
    return body


def sni_ext(*names: bytes, kind: int = 0) -> tuple[int, bytes]:
    entries = b"".join(bytes([kind]) + struct.pack("!H", len(n)) + n for n in names)
    return 0, struct.pack("!H", len(entries)) + entries


def records(message: bytes, cuts: list[int]) -> bytes:
    """The handshake message in TLS records, cut at `cuts`."""
    points = [0, *sorted(c for c in set(cuts) if 0 < c < len(message)), len(message)]
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", b - a) + message[a:b]
                    for a, b in itertools.pairwise(points))


def handshake(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(3, "big") + body


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- tests ----------------------------------------------------------------------------

def test_real_client_hellos() -> None:
    for name in ("a.example.com", "X.Example.COM", "localhost", "a-b_c.d9"):
        data = client_hello_bytes(name)
        assert parse_client_hello([data]) == ("name", name.lower().encode())
        assert model(data) == ("name", name.lower().encode())
        # One byte at a time.
        assert reader_verdict([data[i:i + 1] for i in range(len(data))]) == \
            ("name", name.lower().encode())
    data = client_hello_bytes(None)
    assert parse_client_hello([data]) == ("no_name", None)


def test_recut_into_records() -> None:
    data = client_hello_bytes("split.example.com")
    message = data[5:]
    for cuts in ([1], [2, 3], [4], [5], [100, 101, 102], list(range(1, 60))):
        again = records(message, cuts)
        assert reader_verdict([again]) == ("name", b"split.example.com")
        assert reader_verdict(pieces(again, [3, 9, 11])) == ("name", b"split.example.com")


def test_verdicts() -> None:
    good = records(handshake(hello_body([sni_ext(b"a.b")])), [])
    assert reader_verdict([good]) == ("name", b"a.b")
    assert reader_verdict([good[:-1]]) == ("more", None)
    assert reader_verdict([b"GET / HTTP/1.1\r\n"]) == ("not_tls", None)
    assert reader_verdict([b"\x16\x02"]) == ("not_tls", None)
    assert reader_verdict([b"\x16\x03\x01\x00\x00"]) == ("bad", None)  # an empty record
    # A later record that is not a handshake one.
    msg = handshake(hello_body([sni_ext(b"a.b")]))
    assert reader_verdict([records(msg[:10], []) + b"\x17\x03\x03\x00\x01x"]) == ("bad", None)
    assert reader_verdict([records(handshake(hello_body([])), [])]) == ("no_name", None)
    assert reader_verdict([records(handshake(hello_body([], with_ext=False)), [])]) == \
        ("no_name", None)
    assert reader_verdict([records(handshake(hello_body([(0, b"")])), [])]) == \
        ("no_name", None)
    for ext in (sni_ext(b"a", b"b"), sni_ext(b""), sni_ext(b"a b"), sni_ext(b".a"),
                sni_ext(b"a..b"), sni_ext(b"x" * 256), sni_ext(b"\xff")):
        assert reader_verdict([records(handshake(hello_body([ext])), [])]) == ("bad", None), ext
    twice = records(handshake(hello_body([sni_ext(b"a"), sni_ext(b"b")])), [])
    assert reader_verdict([twice]) == ("bad", None)
    assert reader_verdict([records(handshake(hello_body([sni_ext(b"a.b.")])), [])]) == \
        ("name", b"a.b")
    # Another name type is skipped.
    other = records(handshake(hello_body([sni_ext(b"zz", kind=7)])), [])
    assert reader_verdict([other]) == ("no_name", None)
    # Too big: refused when the length is read, before the bytes come.
    big = b"\x16\x03\x01\x00\x04\x01\x00\x40\x01"
    assert reader_verdict([big], limit=16384) == ("too_big", None)
    assert reader_verdict([good], limit=len(good) - 10) == ("too_big", None)
    # Not a ClientHello.
    assert reader_verdict([b"\x16\x03\x01\x00\x04\x02\x00\x00\x01"]) == ("bad", None)


LABELS = st.text("abcXYZ019-_", min_size=1, max_size=6)
NAMES = st.one_of(
    st.lists(LABELS, min_size=1, max_size=4).map(lambda ls: ".".join(ls).encode()),
    st.lists(LABELS, min_size=1, max_size=3).map(lambda ls: (".".join(ls) + ".").encode()),
    st.binary(max_size=12),  # mostly invalid
)


@st.composite
def hellos(draw: st.DrawFn) -> bytes:
    exts = [(draw(st.integers(1, 65535)), draw(st.binary(max_size=20)))
            for _ in range(draw(st.integers(0, 3)))]
    shape = draw(st.sampled_from(["one name", "one name", "no sni", "names", "empty",
                                  "two sni"]))
    if shape == "one name":
        sni = [sni_ext(draw(NAMES))]
    elif shape == "names":  # other name types around it, or two host names
        sni = [sni_ext(*draw(st.lists(NAMES, min_size=0, max_size=3)),
                       kind=draw(st.sampled_from([0, 1, 255])))]
    elif shape == "empty":
        sni = [(0, b"")]
    elif shape == "two sni":
        sni = [sni_ext(draw(NAMES)), sni_ext(draw(NAMES))]
    else:
        sni = []
    exts[draw(st.integers(0, len(exts))):0] = sni
    body = hello_body(exts, bytes(33) if draw(st.booleans()) else draw(st.binary(max_size=32)),
                      draw(st.sampled_from([b"\x13\x01", b"\x13\x01\xc0\x2f", b"", b"\x01",
                                            b"\x00\x01\x00\x02\x00\x03"])),
                      with_ext=not draw(st.booleans()))
    if draw(st.integers(0, 3)) == 3:  # corrupt a byte
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1:]
    message = handshake(body)
    data = records(message, draw(st.lists(st.integers(0, len(message)), max_size=5)))
    if draw(st.integers(0, 3)) == 3:
        data = data[:draw(st.integers(0, len(data)))]
    return data


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hellos(), st.lists(st.integers(0, 400), max_size=6),
       st.sampled_from([16384, 16384, 200, 64]))
def test_generated_against_the_model(data: bytes, cuts: list[int], limit: int) -> None:
    expected = model(data, limit)
    assert reader_verdict(pieces(data, cuts), limit) == expected
    assert reader_verdict([data], limit) == expected


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=4))
def test_arbitrary_bytes_against_the_model(data: bytes, cuts: list[int]) -> None:
    if data[:1] == b"\x16" and len(data) > 1:
        data = b"\x16\x03" + data[2:]  # get past the first checks more often
    assert reader_verdict(pieces(data, cuts)) == model(data)
