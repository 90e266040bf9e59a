"""Micro benchmarks of header rewriting (fastproxy._rewrite): one head built per op."""

from __future__ import annotations

import pytest

from bench_messages import BROWSER_GET, RESPONSE_HEAD, CountingHandler
from fastproxy._http import RequestParser, ResponseParser
from fastproxy._rewrite import FRAME_PASS, build_request_head, build_response_head


@pytest.fixture(scope="module")
def browser_head():
    handler = CountingHandler()
    RequestParser(handler).feed(BROWSER_GET)
    assert handler.head is not None
    return handler.head


@pytest.fixture(scope="module")
def response_head():
    handler = CountingHandler()
    parser = ResponseParser(handler)
    parser.feed(RESPONSE_HEAD + b"x" * 1024)
    assert handler.head is not None
    return handler.head


def test_build_request_head_browser_get(timed, browser_head):
    target = browser_head.target
    host = browser_head.host

    def run() -> bytes:
        return build_request_head(browser_head, target, host, b"203.0.113.7", b"http",
                                  b"1.1 fastproxy")

    out = timed(run)
    assert out.startswith(b"GET " + target + b" HTTP/1.1\r\nHost: www.example.com\r\n")
    assert b"X-Forwarded-For: 203.0.113.7\r\n" in out
    assert b"Connection:" not in out
    assert out.endswith(b"\r\n\r\n")


def test_build_response_head_typical(timed, response_head):
    def run() -> bytes:
        return build_response_head(response_head, FRAME_PASS, True, 1, b"1.1 fastproxy")

    out = timed(run)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 1024\r\n" in out
    assert b"Via: 1.1 fastproxy\r\n" in out
    assert out.endswith(b"\r\n\r\n")
