"""Micro benchmarks of the built-in WAF (fastproxy.waf): one `Waf.inspect` per op.

The issue's target: the default rule sets cost well under ~20 µs on a typical
browser GET. The request parser's own cost on the same GET is measured in the
same run (`test_parser_same_get`), so the ratio holds on a noisy machine:
`python -m pytest benchmarks/test_waf_bench.py --benchmark-only`.

Requests: the 10-header browser GET of bench_messages (steady state: its
Cookie, Referer and User-Agent already known clean, as for every request after
a page's first; the same with a path and query never seen before; and cold,
nothing seen before); a 2 KiB form POST; an 8 KiB JSON POST with prose and
code; a GET with SQL injection in the query (blocked, so the exact evaluation
runs).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import pytest

from bench_messages import BROWSER_GET, CountingHandler
from fastproxy._http import MessageHead, RequestParser
from fastproxy.waf import Waf


def _head(raw: bytes) -> MessageHead:
    handler = CountingHandler()
    RequestParser(handler).feed(raw)
    assert handler.head is not None
    return handler.head  # type: ignore[return-value]


def _request(raw: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]:
    head = _head(raw)
    path, _, query = head.target.partition(b"?")
    return head.method, path, query, head.headers()


GET = _request(BROWSER_GET)

FORM_HEADERS = [
    (b"Host", b"shop.example.com"),
    (b"User-Agent", b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                    b"(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"en-US,en;q=0.9"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Content-Type", b"application/x-www-form-urlencoded"),
    (b"Origin", b"https://shop.example.com"),
    (b"Referer", b"https://shop.example.com/checkout?step=2"),
    (b"Cookie", b"session=3f2a9c1e7b4d4e0f8a6b; _ga=GA1.2.1234567890.1700000000"),
    (b"Connection", b"keep-alive"),
]


def _form_2k() -> bytes:
    fields = {
        "csrf": "Zq9XbT4kLmN0pQ2rS5tU8vW1xY3z", "first_name": "José", "last_name": "O'Connor",
        "email": "jose.oconnor+shop@example.com", "phone": "+1 (514) 555-0199",
        "address1": "12 Rue de l'Église, Apt. 3", "address2": "", "city": "Montréal",
        "region": "QC", "postcode": "H2X 1Y4", "country": "CA", "shipping": "express",
        "gift": "on", "coupon": "SPRING-24", "newsletter": "on",
    }
    message = ("Hello! Please leave the parcel at the back door if nobody answers; the "
               "front bell is broken. If it rains, the porch is fine. Thanks a lot & have "
               "a nice day :) - J. ")
    body = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in fields.items())
    while len(body) < 2048:
        body += "&note=" + quote_plus(message)
    return body[:2048].encode()


def _json_8k() -> bytes:
    items = [{"sku": f"SKU-{i:05d}", "name": f"Running shoe model {i}", "qty": i % 3 + 1,
              "price": 59.99 + i, "tags": ["sport", "outdoor", "sale" if i % 2 else "new"]}
             for i in range(20)]
    doc = {
        "order": {"id": "ord_8f2e3a1b", "customer": {"name": "Mary-Jane O'Neil",
                                                     "email": "mj@example.org"},
                  "items": items, "notes": "Ring twice; don't leave it in the rain."},
        "review": {"title": "Great shoes, with a caveat",
                   "markdown": "## Fit\n\nThey run **small** - order half a size up.\n\n"
                               "> Tip: lace them loosely at first.\n\n- comfy\n- light\n"},
        "snippet": {"lang": "python",
                    "code": "import json\nfor line in open('orders.jsonl'):\n    order = "
                            "json.loads(line)\n    if order['total'] > 100 or order['vip']:\n"
                            "        print(order['id'])\n"},
    }
    body = json.dumps(doc)
    pad = 0
    while len(body) < 8192:
        pad += 1
        doc[f"comment_{pad}"] = ("Delivery was quick and the box was intact. The left shoe "
                                 "squeaks a bit on wet floors, otherwise perfect. 4/5 stars.")
        body = json.dumps(doc)
    return body.encode()


FORM = _form_2k()
JSON_8K = _json_8k()
JSON_HEADERS = [*FORM_HEADERS[:5], (b"Content-Type", b"application/json"),
                *FORM_HEADERS[6:]]


def test_parser_same_get(timed: Callable[[Callable[[], Any]], Any]) -> None:
    """The C request parser on the same GET: the yardstick for the figures below."""
    parser = RequestParser(CountingHandler())
    assert timed(lambda: parser.feed(BROWSER_GET)) == len(BROWSER_GET)


def test_browser_get(timed: Callable[[Callable[[], Any]], Any]) -> None:
    """Steady state: this Cookie, Referer and User-Agent were seen in a clean request."""
    guard = Waf()
    assert timed(lambda: guard.inspect(*GET)) is None


def test_browser_get_unseen_target(timed: Callable[[Callable[[], Any]], Any]) -> None:
    """Known Cookie, Referer and User-Agent, but a path and query not seen before (more
    targets than the WAF remembers, in turn): the glance reads them."""
    guard = Waf()
    method, path, query, headers = GET
    assert guard.inspect(*GET) is None
    targets = itertools.cycle([(b"%s/%d" % (path, i), b"%s&page=%d" % (query, i))
                               for i in range(20000)])

    def run() -> Any:
        target, args = next(targets)
        return guard.inspect(method, target, args, headers)

    assert timed(run) is None


def test_browser_get_cold(timed: Callable[[Callable[[], Any]], Any]) -> None:
    """Never-seen Cookie, Referer and User-Agent: everything decoded and scanned."""
    guard = Waf()
    clean = guard._clean

    def run() -> Any:
        clean.clear()
        return guard.inspect(*GET)

    assert timed(run) is None


def test_post_form_2k(timed: Callable[[Callable[[], Any]], Any]) -> None:
    guard = Waf()
    assert len(FORM) == 2048
    assert timed(lambda: guard.inspect(b"POST", b"/checkout", b"", FORM_HEADERS, FORM)) is None


def test_post_json_8k(timed: Callable[[Callable[[], Any]], Any]) -> None:
    """8 KiB of JSON, whole (body_limit = 8192 cuts it at the limit: then read as text)."""
    guard = Waf(body_limit=len(JSON_8K))
    assert len(JSON_8K) >= 8192
    assert timed(lambda: guard.inspect(b"POST", b"/api/orders", b"", JSON_HEADERS,
                                       JSON_8K)) is None


@pytest.mark.parametrize("query", [b"id=1%27%20OR%20%271%27%3D%271"], ids=["sqli"])
def test_blocked_get(timed: Callable[[Callable[[], Any]], Any], query: bytes) -> None:
    """An attack: the gates match, and the sets are evaluated value by value."""
    guard = Waf()
    method, path, _, headers = GET
    verdict = timed(lambda: guard.inspect(method, path, query, headers))
    assert verdict is not None and verdict.rule_id == "sqli-tautology"


def _punctuation_form() -> bytes:
    """8 KiB of form fields full of the characters the gates look for (a worst case
    for the per-field evaluation: ~300 fields that pass the gates)."""
    chars = b"abcdefghij klmnop=&%'\"<>()/;"
    state = 2
    out = bytearray()
    while len(out) < 8192:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        out.append(chars[state % len(chars)])
    return bytes(out)


PUNCTUATION_FORM = _punctuation_form()


def test_post_form_8k_punctuation(timed: Callable[[Callable[[], Any]], Any]) -> None:
    """The cost the event loop pays for a hostile 8 KiB form body (bounded by one
    joined search per pattern before any per-field search)."""
    guard = Waf()
    timed(lambda: guard.inspect(b"POST", b"/", b"", FORM_HEADERS, PUNCTUATION_FORM))
