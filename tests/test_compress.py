"""The compression building blocks: Accept-Encoding negotiation against a reference
model, the response head rewrite, the streaming encoders (decoded by the reference
libraries after every flush), the type rules, the stored forms and the config keys."""

from __future__ import annotations

import gzip
import time
import zlib
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy import cachepolicy
from fastproxy._compress import Policy, compress, form_of, negotiate_header
from fastproxy._http import ResponseParser
from fastproxy._httpcache import RouteCache, Stored
from fastproxy._rewrite import FRAME_CHUNKED, FRAME_PASS, build_response_head
from fastproxy.config import ConfigError, parse_config

ORDER = ("zstd", "br", "gzip")

# (Accept-Encoding, server order, chosen)
TABLE: list[tuple[str | None, tuple[str, ...], str | None]] = [
    (None, ORDER, None),                       # no header: no compression
    ("", ORDER, None),
    ("gzip", ORDER, "gzip"),
    ("br", ORDER, "br"),
    ("zstd", ORDER, "zstd"),
    ("gzip, br", ORDER, "br"),                 # equal weights: the server's order
    ("gzip, br", ("gzip", "br"), "gzip"),
    ("gzip, deflate, br, zstd", ORDER, "zstd"),  # what current browsers send
    ("gzip;q=1.0, br;q=0.9", ORDER, "gzip"),
    ("br;q=0.5, gzip;q=0.5", ("gzip", "br"), "gzip"),
    ("br;q=0.500, gzip;q=0.499", ORDER, "br"),
    ("gzip;q=0", ORDER, None),
    ("gzip;q=0.000", ORDER, None),
    ("gzip;q=0.001", ORDER, "gzip"),
    ("gzip;q=0, *", ORDER, "zstd"),
    ("*", ORDER, "zstd"),
    ("*", ("gzip",), "gzip"),
    ("*;q=0", ORDER, None),
    ("*;q=0.1, br;q=0", ORDER, "zstd"),
    ("*;q=0.5, zstd;q=0", ORDER, "br"),
    ("*;q=0.5, zstd;q=0.4", ORDER, "br"),
    ("identity", ORDER, None),
    ("identity;q=0", ORDER, None),             # we never refuse: identity is sent anyway
    ("identity;q=0, *;q=0", ORDER, None),
    ("deflate", ORDER, None),
    ("compress, deflate", ORDER, None),
    ("x-gzip", ORDER, "gzip"),                 # RFC 9110 §8.4.1.3
    ("GZIP", ORDER, "gzip"),
    ("Br;Q=0.5", ORDER, "br"),
    ("gzip ; q=0.5 , br ; q=0.6", ORDER, "br"),
    ("gzip;q=1", ORDER, "gzip"),
    ("gzip;q=1.", ORDER, "gzip"),
    ("gzip;q=1.000", ORDER, "gzip"),
    ("gzip;q=1.001", ORDER, None),             # not a qvalue: the element is ignored
    ("gzip;q=2", ORDER, None),
    ("gzip;q=-1", ORDER, None),
    ("gzip;q=0.1234", ORDER, None),
    ("gzip;q=", ORDER, None),
    ("gzip;q", ORDER, None),
    ("gzip;q=abc, br", ORDER, "br"),
    ("gzip;level=9", ORDER, "gzip"),           # other parameters do not matter
    ("gzip;level=9;q=0.2, br;q=0.1", ORDER, "gzip"),
    (",,gzip,,", ORDER, "gzip"),
    ("gzip br", ORDER, None),                  # junk after a token: that element is ignored
    ("gzip br, zstd", ORDER, "zstd"),
    ("gzip, gzip;q=0", ORDER, "gzip"),         # the first mention counts
    ("gzip;q=0, gzip", ORDER, None),
    ("zstd;q=0.9, br;q=0.9, gzip;q=1", ORDER, "gzip"),
    ("\tgzip\t", ORDER, "gzip"),
]


@pytest.mark.parametrize("header,order,chosen", TABLE)
def test_negotiation_table(header: str | None, order: tuple[str, ...],
                           chosen: str | None) -> None:
    assert negotiate_header(header, order) == chosen


def model(header: str, order: tuple[str, ...]) -> str | None:
    """A slow, simple reading of RFC 9110 §12.5.3 (the first mention counts)."""
    weights: dict[str, int] = {}
    for element in header.split(","):
        element = element.strip(" \t")
        if not element:
            continue
        token, *params = [p.strip(" \t") for p in element.split(";")]
        if not token or any(c in token for c in " \t"):
            continue
        weight = 1000
        ok = True
        for param in params:
            name, eq, value = (p.strip(" \t") for p in param.partition("="))
            if name.lower() != "q":
                continue
            if not eq or any(c in value for c in " \t"):
                ok = False
                continue
            if value[:1] == "1" and (value in ("1", "1.") or (
                    value.startswith("1.") and len(value) <= 5 and set(value[2:]) <= {"0"})):
                weight = 1000
            elif value[:1] == "0" and (value == "0" or (
                    (value[1:2] == "." and len(value) <= 5 and value[2:].isdigit())
                    or value == "0.")):
                weight = int((value[2:] + "000")[:3]) if len(value) > 2 else 0
            else:
                ok = False
        if not ok:
            continue
        name = token.lower()
        name = "gzip" if name == "x-gzip" else name
        weights.setdefault(name, weight)
    best, best_w = None, 0
    for coding in order:
        w = weights.get(coding, weights.get("*", 0))
        if w > best_w:
            best, best_w = coding, w
    return best


ELEMENT = st.one_of(
    st.sampled_from(["gzip", "br", "zstd", "*", "identity", "deflate", "x-gzip", "GZip"]),
    st.text(alphabet="abcz*-", min_size=1, max_size=5),
)
QVALUE = st.one_of(st.sampled_from(["0", "1", "0.5", "0.001", "1.000", "0.", "0.10", "0.999"]),
                   st.from_regex(r"[0-2](\.[0-9]{0,4})?", fullmatch=True))


@given(st.lists(st.tuples(ELEMENT, st.one_of(st.none(), QVALUE), st.sampled_from(["", " "])),
                max_size=6),
       st.permutations(ORDER))
@settings(max_examples=400, deadline=None)
def test_negotiation_matches_model(elements: list[tuple[str, str | None, str]],
                                   order: list[str]) -> None:
    header = ", ".join(f"{t}{sp};{sp}q={q}" if q is not None else t for t, q, sp in elements)
    assert negotiate_header(header, tuple(order)) == model(header, tuple(order)), header


# -- the response head --------------------------------------------------------------------

def head(*fields: str, status: str = "200 OK", body: bytes = b"x" * 1000) -> Any:
    got: list[Any] = []

    class Sink:
        def on_head(self, h: Any) -> None:
            got.append(h)

        def on_body(self, data: Any) -> None:
            pass

        def on_message_complete(self) -> None:
            pass

    raw = (f"HTTP/1.1 {status}\r\n" + "".join(f + "\r\n" for f in fields)
           + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    ResponseParser(Sink()).feed(raw)
    return got[0]


def lines(data: bytes) -> list[str]:
    return data.decode().split("\r\n")[1:-2]


def test_head_encoded() -> None:
    h = head("Content-Type: text/html", 'ETag: "abc"', "Accept-Ranges: bytes",
             "Vary: Origin", "Vary: Cookie", "Cache-Control: max-age=1")
    out = lines(build_response_head(h, FRAME_CHUNKED, True, 1, b"", coding=b"gzip", vary=True))
    assert out == ["Content-Type: text/html", 'ETag: W/"abc"', "Cache-Control: max-age=1",
                   "Vary: Origin, Cookie, Accept-Encoding", "Content-Encoding: gzip",
                   "Transfer-Encoding: chunked"]
    # A weak ETag stays as it is; Vary that names it already, or "*", is not changed.
    h = head("Content-Type: text/html", 'ETag: W/"abc"', "Vary: accept-encoding")
    out = lines(build_response_head(h, FRAME_CHUNKED, True, 1, b"", coding=b"br", vary=True))
    assert out == ["Content-Type: text/html", 'ETag: W/"abc"', "Vary: accept-encoding",
                   "Content-Encoding: br", "Transfer-Encoding: chunked"]
    h = head("Vary: *")
    out = lines(build_response_head(h, FRAME_CHUNKED, True, 1, b"", coding=b"zstd", vary=True))
    assert out == ["Vary: *", "Content-Encoding: zstd", "Transfer-Encoding: chunked"]


def test_head_identity_with_vary() -> None:
    h = head("Content-Type: text/html", 'ETag: "abc"', "Accept-Ranges: bytes")
    out = lines(build_response_head(h, FRAME_PASS, True, 1, b"", vary=True))
    assert out == ["Content-Type: text/html", 'ETag: "abc"', "Accept-Ranges: bytes",
                   "Content-Length: 1000", "Vary: Accept-Encoding"]
    # Without compression the head is what it was.
    out = lines(build_response_head(h, FRAME_PASS, True, 1, b""))
    assert out == ["Content-Type: text/html", 'ETag: "abc"', "Accept-Ranges: bytes",
                   "Content-Length: 1000"]


# -- encoders -----------------------------------------------------------------------------

def decoders() -> dict[str, Any]:
    return {
        "gzip": zlib.decompressobj(16 + zlib.MAX_WBITS),
        "br": brotli.Decompressor(),
        "zstd": zstandard.ZstdDecompressor().decompressobj(),
    }


def feed(decoder: Any, data: bytes) -> bytes:
    return bytes(decoder.process(data)) if hasattr(decoder, "process") else \
        decoder.decompress(data)


@pytest.mark.parametrize("name", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("level", ["min", "default", "max"])
def test_streaming_encoder_flushes(name: str, level: str) -> None:
    """After every take() the client can decode everything fed so far."""
    lo, hi = {"gzip": (1, 9), "br": (0, 11), "zstd": (1, 19)}[name]
    chosen = {"min": lo, "max": hi, "default": None}[level]
    policy = Policy(levels={name: chosen} if chosen is not None else None)
    pieces = [b"event %d: " % i + b"some payload text " * (i % 7) + b"\n" for i in range(60)]
    pieces.append(memoryview(b"a view of a buffer " * 500)[3:])  # type: ignore[arg-type]
    enc = policy.new_encoder(name)
    dec = decoders()[name]
    seen = b""
    for piece in pieces:
        enc.py_feed(piece)
        seen += feed(dec, enc.py_take(False))
        assert seen == b"".join(bytes(p) for p in pieces[:pieces.index(piece) + 1])
    seen += feed(dec, enc.py_take(True))
    assert enc.py_take(True) == b""  # over
    assert seen == b"".join(bytes(p) for p in pieces)
    enc.py_release()
    # A released encoder (pooled: reset) makes a fresh, valid stream.
    again = policy.new_encoder(name)
    again.py_feed(b"hello " * 100)
    data = again.py_take(True)
    again.py_release()
    assert feed(decoders()[name], data) == b"hello " * 100


@pytest.mark.parametrize("name", ["gzip", "br", "zstd"])
def test_whole_and_large(name: str) -> None:
    body = b"".join(b"line %d with a bit of text\n" % i for i in range(200_000))  # ~5 MiB
    data = compress(name, 3, body)
    assert len(data) < len(body) / 4
    if name == "gzip":
        assert gzip.decompress(data) == body
    elif name == "br":
        assert brotli.decompress(data) == body
    else:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == body


def test_abandoned_gzip_encoder_is_reset() -> None:
    policy = Policy(algorithms=["gzip"])
    enc = policy.new_encoder("gzip")
    enc.py_feed(b"half of a response " * 1000)
    enc.py_take(False)
    enc.py_release()  # the client went away mid-stream
    fresh = policy.new_encoder("gzip")
    fresh.py_feed(b"next")
    assert gzip.decompress(fresh.py_take(True)) == b"next"
    fresh.py_release()


# -- which responses ----------------------------------------------------------------------

COMPRESSIBLE = 0  # D_IDENTITY
SKIP = -1


@pytest.mark.parametrize("ctype,expected", [
    (b"text/html", COMPRESSIBLE),
    (b"text/html; charset=utf-8", COMPRESSIBLE),
    (b"TEXT/CSS", COMPRESSIBLE),
    (b"text/event-stream", COMPRESSIBLE),
    (b"application/json", COMPRESSIBLE),
    (b"application/problem+json", COMPRESSIBLE),
    (b"application/atom+xml", COMPRESSIBLE),
    (b"image/svg+xml", COMPRESSIBLE),
    (b"application/wasm", COMPRESSIBLE),
    (b"application/javascript", COMPRESSIBLE),
    (b"image/png", SKIP),
    (b"application/octet-stream", SKIP),
    (b"video/mp4", SKIP),
    (b"application/zip", SKIP),
    (b"", SKIP),
    (b"  ", SKIP),
    (b"json", SKIP),
])
def test_types(ctype: bytes, expected: int) -> None:
    policy = Policy()
    assert policy.decide_fields(200, [(b"Content-Type", ctype)], 1000) == expected


def test_other_rules() -> None:
    policy = Policy(min_size=500, types=["text/*", "application/foo"])
    t = [(b"content-type", b"text/plain")]
    assert policy.decide_fields(200, t, 500) == COMPRESSIBLE
    assert policy.decide_fields(200, t, 499) == SKIP
    assert policy.decide_fields(200, [(b"Content-Type", b"application/foo")], 999) == 0
    assert policy.decide_fields(200, [(b"Content-Type", b"application/json")], 999) == SKIP
    assert policy.decide_fields(404, t, 999) == COMPRESSIBLE
    for status in (204, 304, 206, 101):
        assert policy.decide_fields(status, t, 999) == SKIP
    for field in ((b"Content-Encoding", b"gzip"), (b"Content-Range", b"bytes 0-1/2"),
                  (b"Cache-Control", b"public, no-transform"),
                  (b"cache-control", b"NO-TRANSFORM")):
        assert policy.decide_fields(200, [*t, field], 999) == SKIP
    assert policy.decide_fields(200, [*t, (b"Cache-Control", b"no-transformer")], 999) == 0


# -- stored responses -------------------------------------------------------------------

def test_stored_form_encodes_once_and_is_charged() -> None:
    config = parse_config({
        "listeners": [{"address": "127.0.0.1:1"}],
        "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
        "caches": {"main": {"memory": "1m"}},
        "routes": [{"upstream": "a", "cache": "main"}]})
    cache = RouteCache(config.caches["main"])
    policy = Policy()
    now = time.time()
    fresh = cachepolicy.Freshness(lifetime=60.0, source="max-age", corrected_initial_age=0.0)
    body = b"<p>stored page</p>\n" * 500
    stored = Stored(200, b"OK", [(b"Content-Type", b"text/html"), (b"ETag", b'"s"'),
                                 (b"Accept-Ranges", b"bytes"), (b"Vary", b"Origin")],
                    body, now, now, fresh, b"")
    cache.index.put(7, stored, stored.size)
    used = cache.index.bytes_used
    form = form_of(stored, policy)
    assert form is form_of(stored, policy)
    assert form.compressible
    assert form.vary_prefix == (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nETag: \"s\"\r\n"
                                b"Accept-Ranges: bytes\r\nVary: Origin, Accept-Encoding\r\n")
    assert form.enc_prefix == (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nETag: W/\"s\"\r\n"
                               b"Vary: Origin, Accept-Encoding\r\n")
    gz = form.encoded(cache, 7, stored, policy, "gzip")
    assert gzip.decompress(gz) == body
    assert cache.index.bytes_used == used + len(gz)
    assert form.encoded(cache, 7, stored, policy, "gzip") is gz  # kept: not made again
    br = form.encoded(cache, 7, stored, policy, "br")
    assert brotli.decompress(br) == body
    assert cache.index.bytes_used == used + len(gz) + len(br)
    # A stored response no longer in memory does not keep what is made for it.
    cache.index.remove(7)
    zs = form.encoded(cache, 7, stored, policy, "zstd")
    assert form.encoded(cache, 7, stored, policy, "zstd") is not zs
    # Not compressible: nothing is made.
    png = Stored(200, b"OK", [(b"Content-Type", b"image/png")], body, now, now, fresh, b"")
    assert not form_of(png, policy).compressible


# -- config -------------------------------------------------------------------------------

def config(compress: Any, **route: Any) -> Any:
    return parse_config({
        "listeners": [{"address": "127.0.0.1:1"}],
        "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
        "routes": [{"upstream": "a", "compress": compress, **route}]}, "c.toml")


def errors(compress: Any, **route: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        config(compress, **route)
    return [(e.key, e.reason) for e in info.value.errors]


def test_config_keys() -> None:
    [route] = config(True).routes
    assert route.compress is not None and route.compress.algorithms == ("zstd", "br", "gzip")
    assert route.compress.min_size == 256
    [route] = config(False).routes
    assert route.compress is None
    [route] = config({"algorithms": ["gzip", "br"], "level": {"gzip": 6}, "min_size": "1k",
                      "types": ["text/html", "application/*", "*/*+json"]}).routes
    spec = route.compress
    assert spec.algorithms == ("gzip", "br") and spec.levels == (("gzip", 6),)
    assert spec.min_size == 1024 and spec.types == ("text/html", "application/*", "*/*+json")


@pytest.mark.parametrize("value,key,reason", [
    ("yes", "routes[0].compress", "expected true, false or a table"),
    ({"algorithms": ["lz4"]}, "routes[0].compress.algorithms[0]", "unknown algorithm"),
    ({"algorithms": ["gzip", "gzip"]}, "routes[0].compress.algorithms[1]", "listed twice"),
    ({"algorithms": []}, "routes[0].compress.algorithms", "at least one"),
    ({"level": {"gzip": 10}}, "routes[0].compress.level.gzip", "from 1 to 9"),
    ({"level": {"br": -1}}, "routes[0].compress.level.br", "from 0 to 11"),
    ({"level": {"zstd": "3"}}, "routes[0].compress.level.zstd", "from 1 to 19"),
    ({"level": {"gz": 1}}, "routes[0].compress.level.gz", "unknown algorithm"),
    ({"min_size": "lots"}, "routes[0].compress.min_size", ""),
    ({"types": ["html"]}, "routes[0].compress.types[0]", "media type"),
    ({"types": ["*/*"]}, "routes[0].compress.types[0]", "media type"),
    ({"types": []}, "routes[0].compress.types", "at least one"),
    ({"decompress": True}, "routes[0].compress.decompress", "unknown key"),
    ({"gzip": True}, "routes[0].compress.gzip", "unknown key"),
])
def test_config_errors(value: Any, key: str, reason: str) -> None:
    found = errors(value)
    assert any(k == key and reason in r for k, r in found), found


def test_config_only_on_upstream_routes() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": [{"address": "127.0.0.1:1"}],
                      "routes": [{"respond": {"status": 200}, "compress": True}]}, "c.toml")
    assert any(e.key == "routes[0].compress" and "only allowed" in e.reason
               for e in info.value.errors)
