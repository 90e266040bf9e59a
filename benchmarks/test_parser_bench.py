"""Micro benchmarks of the C HTTP parsers (fastproxy._http).

Each benchmark feeds complete messages into one parser that is reused, as on a
keep-alive connection; the handler does almost nothing, so the figures are the
parser's own cost per operation (one message, or one buffer of ten pipelined
messages).
"""

from __future__ import annotations

from bench_messages import (
    BROWSER_GET,
    PIPELINED_10,
    RESPONSE_1K,
    SMALL_POST,
    CountingHandler,
)
from fastproxy._http import RequestParser, ResponseParser


def _request_parser(handler: CountingHandler) -> RequestParser:
    return RequestParser(handler, max_line_bytes=8192, max_header_bytes=32768,
                         max_header_count=100)


def test_request_browser_get(timed, handler):
    parser = _request_parser(handler)
    data = BROWSER_GET

    def run() -> int:
        return parser.feed(data)

    assert timed(run) == len(data)
    assert handler.messages == handler.heads > 0
    assert handler.head.header_count == 10


def test_request_browser_get_new_parser(timed, handler):
    """The same GET on a fresh parser each time: the per-connection set-up cost included."""
    data = BROWSER_GET

    def run() -> int:
        return _request_parser(handler).feed(data)

    assert timed(run) == len(data)
    assert handler.messages == handler.heads > 0


def test_request_small_post(timed, handler):
    parser = _request_parser(handler)
    data = SMALL_POST

    def run() -> int:
        return parser.feed(data)

    assert timed(run) == len(data)
    assert handler.messages > 0
    assert handler.body_bytes == 58 * handler.messages


def test_request_pipelined_10_gets(timed, handler):
    """Ten GETs in one buffer; one op = all ten, fed the way the client protocol does."""
    parser = _request_parser(handler)

    def run() -> int:
        data = PIPELINED_10
        count = 0
        while True:
            n = parser.feed(data)
            count += 1
            if n == len(data):
                return count
            data = data[n:]

    assert timed(run) == 10
    assert handler.messages == handler.heads
    assert handler.messages % 10 == 0


def test_response_head_and_1k_body(timed, handler):
    parser = ResponseParser(handler)
    data = RESPONSE_1K

    def run() -> int:
        parser.expect_no_body(False)
        return parser.feed(data)

    assert timed(run) == len(data)
    assert handler.messages > 0
    assert handler.body_bytes == 1024 * handler.messages
    assert handler.head.status == 200
