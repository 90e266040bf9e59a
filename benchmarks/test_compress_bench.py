"""Micro benchmarks of response compression (fastproxy._compress) on a typical
20 KiB body, HTML and JSON, per algorithm and level.

- `test_encoder[...]`: one response as the proxy makes it: an encoder from the
  pool, the body fed in one piece, the end taken, the encoder released. The
  figure per call is the CPU the worker spends per response; 20 KiB / that time
  is the throughput (the extra info holds MB/s and the compressed size).
- `test_gzip_zlib_module[...]`: the same with Python's zlib module
  (compressobj + compress + flush): what our C calls replace.
- `test_streamed_gzip`: the 20 KiB in 5 pieces with a flush after each (one
  per upstream read), the streaming case.
- `test_negotiate`: Accept-Encoding parsing, once per compressible response.

    python -m pytest benchmarks/test_compress_bench.py --benchmark-only
"""

from __future__ import annotations

import json
import random
import zlib
from typing import Any

import pytest

from fastproxy._compress import Policy, negotiate_header

SIZE = 20 * 1024


def html_page() -> bytes:
    rng = random.Random(1)
    words = ["proxy", "cache", "request", "upstream", "header", "server", "client", "latency",
             "connection", "worker", "the", "a", "of", "and", "to", "with", "for", "on"]
    rows = []
    while sum(map(len, rows)) < SIZE:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
        rows.append(f'<li class="item-{rng.randint(1, 40)}"><a href="/p/{rng.randint(1, 9999)}">'
                    f"{text}</a> <span>{rng.randint(1, 10**6)}</span></li>\n")
    return "".join(rows).encode()[:SIZE]


def json_body() -> bytes:
    rng = random.Random(2)
    items = []
    while len(json.dumps(items)) < SIZE:
        items.append({"id": rng.randint(1, 10**9), "name": f"user{rng.randint(1, 10**5)}",
                      "active": rng.random() < 0.5, "score": round(rng.random() * 100, 3),
                      "tags": rng.sample(["a", "b", "admin", "beta", "eu", "us"], 2)})
    return json.dumps(items).encode()[:SIZE]


BODIES = {"html": html_page(), "json": json_body()}
LEVELS = {"gzip": (1, 5, 6, 9), "br": (1, 4, 5, 6), "zstd": (1, 3, 6)}
CASES = [(name, level) for name, levels in LEVELS.items() for level in levels]


@pytest.mark.parametrize("kind", sorted(BODIES))
@pytest.mark.parametrize("name,level", CASES)
def test_encoder(benchmark: Any, name: str, level: int, kind: str) -> None:
    body = BODIES[kind]
    policy = Policy(algorithms=[name], levels={name: level})

    def one() -> bytes:
        enc = policy.new_encoder(name, len(body))
        enc.py_feed(body)
        out = enc.py_take(True)
        enc.py_release()
        return out

    out = benchmark(one)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(size=len(out), ratio=round(len(body) / len(out), 2),
                                mb_per_s=round(len(body) / seconds / 1e6, 1))


@pytest.mark.parametrize("kind", sorted(BODIES))
@pytest.mark.parametrize("level", LEVELS["gzip"])
def test_gzip_zlib_module(benchmark: Any, level: int, kind: str) -> None:
    body = BODIES[kind]

    def one() -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, 16 + 15)
        return c.compress(body) + c.flush()

    out = benchmark(one)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(size=len(out), mb_per_s=round(len(body) / seconds / 1e6, 1))


def test_streamed_gzip(benchmark: Any) -> None:
    body = BODIES["html"]
    pieces = [body[i:i + 4096] for i in range(0, len(body), 4096)]
    policy = Policy(algorithms=["gzip"])

    def one() -> int:
        enc = policy.new_encoder("gzip")
        n = 0
        for piece in pieces:
            enc.py_feed(piece)
            n += len(enc.py_take(False))
        n += len(enc.py_take(True))
        enc.py_release()
        return n

    size = benchmark(one)
    benchmark.extra_info.update(size=size)


def test_negotiate(benchmark: Any) -> None:
    value = "gzip, deflate, br, zstd"
    assert benchmark(negotiate_header, value) == "zstd"
