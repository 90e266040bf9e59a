"""Unit tests of the header rewriter (ext/fastproxy/_rewrite.pyx) on parsed heads."""

from __future__ import annotations

import pytest

from fastproxy._http import MessageHead, RequestParser, ResponseParser
from fastproxy._rewrite import (
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_PASS,
    build_request_head,
    build_response_head,
)

VIA = b"1.1 fastproxy"


class _Heads:
    def __init__(self) -> None:
        self.heads: list[MessageHead] = []

    def on_head(self, head: MessageHead) -> None:
        self.heads.append(head)

    def on_body(self, chunk: bytes | memoryview) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


def request_head(data: bytes) -> MessageHead:
    sink = _Heads()
    RequestParser(sink, max_header_count=1000, max_header_bytes=1 << 20).feed(data)
    assert len(sink.heads) == 1
    return sink.heads[0]


def response_head(data: bytes, head_request: bool = False) -> MessageHead:
    sink = _Heads()
    parser = ResponseParser(sink, max_header_count=1000, max_header_bytes=1 << 20)
    parser.expect_no_body(head_request)
    parser.feed(data)
    assert len(sink.heads) == 1
    return sink.heads[0]


def upstream(data: bytes, *, target: bytes | None = None, host: bytes = b"app.example",
             client_ip: bytes = b"203.0.113.7", proto: bytes = b"http", via: bytes = VIA) -> bytes:
    head = request_head(data)
    return build_request_head(head, head.target if target is None else target, host, client_ip,
                              proto, via)


def header_lines(out: bytes) -> list[bytes]:
    assert out.endswith(b"\r\n\r\n")
    return out[:-4].split(b"\r\n")[1:]


def names(out: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0].lower() for line in header_lines(out)]


def reparse_request(out: bytes) -> MessageHead:
    """What we send must itself be a valid request for a strict reader."""
    return request_head(out)


# --- requests: exact bytes -------------------------------------------------


def test_request_simple_get_exact() -> None:
    out = upstream(
        b"GET /path?q=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: curl/8\r\n"
        b"Accept: */*\r\n\r\n",
        host=b"shop.example",
    )
    assert out == (
        b"GET /path?q=1 HTTP/1.1\r\n"
        b"Host: shop.example\r\n"
        b"User-Agent: curl/8\r\n"
        b"Accept: */*\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: shop.example\r\n"
        b"Via: 1.1 fastproxy\r\n"
        b"\r\n"
    )


def test_request_post_with_everything_exact() -> None:
    out = upstream(
        b"POST /old/api HTTP/1.1\r\n"
        b"host: Shop.Example:8080\r\n"
        b"Connection: keep-alive, X-Secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: spoofed.example\r\n"
        b"X-Secret: hop\r\n"
        b"Via: 1.0 edge\r\n"
        b"content-length: 004\r\n"
        b"Expect: 100-continue\r\n"
        b"Content-Type:   text/plain  \r\n"
        b"\r\nbody",
        target=b"/new/api",
        host=b"Shop.Example:8080",
        client_ip=b"198.51.100.2",
        proto=b"https",
    )
    assert out == (
        b"POST /new/api HTTP/1.1\r\n"
        b"Host: Shop.Example:8080\r\n"
        b"Content-Type: text/plain\r\n"
        b"X-Forwarded-For: 10.0.0.1, 198.51.100.2\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: Shop.Example:8080\r\n"
        b"Via: 1.0 edge, 1.1 fastproxy\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n"
    )


def test_request_chunked_exact() -> None:
    out = upstream(
        b"PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\nTE: trailers\r\n"
        b"Trailer: X-Sum\r\nX-A: 1\r\n\r\n",
        host=b"h", via=b"",
    )
    assert out == (
        b"PUT /u HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_request_from_http10_client_goes_upstream_as_http11() -> None:
    out = upstream(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nAccept: a\r\n\r\n", host=b"h")
    assert out.startswith(b"GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\n")
    assert b"onnection" not in out
    assert reparse_request(out).http_minor == 1


# --- requests: hop-by-hop ----------------------------------------------------

HOP_BY_HOP = [
    b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Upgrade",
    b"Transfer-Encoding", b"HTTP2-Settings", b"Expect",
]


@pytest.mark.parametrize("name", HOP_BY_HOP)
@pytest.mark.parametrize("case", [bytes, bytes.lower, bytes.upper, bytes.swapcase])
def test_request_hop_by_hop_headers_are_dropped(name: bytes, case: object) -> None:
    spelled = case(name)  # type: ignore[operator]
    value = {
        b"connection": b"keep-alive", b"transfer-encoding": b"chunked",
        b"expect": b"100-continue",
    }.get(name.lower(), b"x")
    out = upstream(b"POST / HTTP/1.1\r\nHost: h\r\n" + spelled + b": " + value +
                   b"\r\nX-Keep: 1\r\n\r\n")
    kept = [n for n in names(out) if n not in (b"transfer-encoding",)]
    assert name.lower() not in kept
    assert b"x-keep" in kept


def test_request_keeps_end_to_end_headers() -> None:
    out = upstream(
        b"GET / HTTP/1.1\r\nHost: h\r\nTEA: 1\r\nTrailers: 2\r\nUpgrade-Insecure-Requests: 1\r\n"
        b"Keep-Alive-Ish: 3\r\nConnections: 4\r\nX-Connection: 5\r\nViaduct: 6\r\n\r\n"
    )
    assert names(out)[1:8] == [
        b"tea", b"trailers", b"upgrade-insecure-requests", b"keep-alive-ish", b"connections",
        b"x-connection", b"viaduct",
    ]


def test_headers_named_by_connection_are_dropped() -> None:
    out = upstream(
        b"GET / HTTP/1.1\r\nHost: h\r\n"
        b"Connection: X-One,x-TWO\r\n"
        b"X-One: 1\r\nx-two: 2\r\nX-Three: 3\r\nX-Four: 4\r\nX-Five: 5\r\nX-One-More: keep\r\n"
        b"connection:  x-three ,\t X-FOUR  , ,\r\n"
        b"CONNECTION: x-five\r\n"
        b"\r\n"
    )
    assert names(out) == [
        b"host", b"x-one-more", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
        b"via",
    ]


def test_connection_may_name_framing_headers_of_a_request() -> None:
    # Content-Length is written from the parsed framing, whatever Connection says.
    out = upstream(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Content-Length, Host\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    assert b"\r\nContent-Length: 3\r\n" in out
    assert out.startswith(b"POST / HTTP/1.1\r\nHost: app.example\r\n")


def test_connection_naming_x_forwarded_for_drops_the_client_list() -> None:
    out = upstream(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    assert b"X-Forwarded-For: 203.0.113.7\r\n" in out
    assert b"6.6.6.6" not in out


def test_every_header_named_by_connection_is_dropped_even_many() -> None:
    # RFC 9110 §7.6.1: a proxy MUST remove every field the Connection header lists.
    n = 40
    tokens = b", ".join(b"X-Hop-%02d" % i for i in range(n))
    fields = b"".join(b"X-Hop-%02d: v\r\n" % i for i in range(n))
    out = upstream(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: " + tokens + b"\r\n" + fields +
                   b"X-End: e\r\n\r\n")
    assert b"X-Hop" not in out
    assert b"X-End: e\r\n" in out


# --- requests: X-Forwarded-For, Via, framing ---------------------------------


def test_xff_merges_every_field_in_order() -> None:
    out = upstream(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nA: a\r\n"
        b"x-forwarded-for: 2.2.2.2, 3.3.3.3\r\nX-FORWARDED-FOR: 2001:db8::1\r\n\r\n",
        client_ip=b"9.9.9.9",
    )
    assert out.count(b"X-Forwarded-For") == 1
    assert b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 2001:db8::1, 9.9.9.9\r\n" in out


def test_xff_with_empty_value() -> None:
    out = upstream(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For:\r\n\r\n", client_ip=b"9.9.9.9")
    assert b"X-Forwarded-For: 9.9.9.9\r\n" in out


def test_via_merges_every_field() -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.0 a\r\nvia: 1.1 b, 1.1 c\r\nVIA: 2 d\r\n\r\n"
    assert b"\r\nVia: 1.0 a, 1.1 b, 1.1 c, 2 d, 1.1 fastproxy\r\n" in upstream(data)
    # without our own entry the received ones still travel, as one field
    no_own = upstream(data, via=b"")
    assert b"\r\nVia: 1.0 a, 1.1 b, 1.1 c, 2 d\r\n" in no_own
    assert no_own.count(b"Via") == 1
    # and with neither there is no Via at all
    assert b"Via" not in upstream(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", via=b"")


@pytest.mark.parametrize(
    ("framing", "expected"),
    [
        (b"Content-Length: 0\r\n", b"Content-Length: 0\r\n"),
        (b"Content-Length: 00000012\r\n", b"Content-Length: 12\r\n"),
        (b"CONTENT-LENGTH:   7   \r\n", b"Content-Length: 7\r\n"),
        (b"Content-Length: 123456789012\r\n", b"Content-Length: 123456789012\r\n"),
        (b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: chunked\r\n"),
        (b"transfer-encoding: CHUNKED\r\n", b"Transfer-Encoding: chunked\r\n"),
        (b"", b""),
    ],
)
def test_request_framing_is_written_from_the_parsed_value(framing: bytes, expected: bytes) -> None:
    out = upstream(b"POST / HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n")
    assert out.endswith(b"Via: 1.1 fastproxy\r\n" + expected + b"\r\n")
    assert out.lower().count(b"content-length") + out.lower().count(b"transfer-encoding") == (
        1 if framing else 0
    )


@pytest.mark.parametrize(
    "length", [10**12, 10**13 - 1, 10**13, 10**15, 9007199254740993, 2**63 - 1]
)
def test_long_content_length_values_are_written_whole(length: int) -> None:
    # "Content-Length: " + 14 or more digits + CRLF does not fit _put_length's
    # 32-byte buffer: the line must still be written whole, and the head must end.
    out = upstream(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % length)
    assert out.endswith(b"Via: 1.1 fastproxy\r\nContent-Length: %d\r\n\r\n" % length)


def test_request_output_reparses_to_the_same_head() -> None:
    data = (
        b"DELETE /x/y?z HTTP/1.1\r\nHost: h\r\nA: 1\r\nB:  two words \r\nC: 3\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    head = request_head(data)
    again = reparse_request(build_request_head(head, head.target, b"h", b"1.2.3.4", b"http", VIA))
    assert again.method == b"DELETE"
    assert again.target == b"/x/y?z"
    assert again.content_length == 2
    assert again.headers()[1:4] == [(b"A", b"1"), (b"B", b"two words"), (b"C", b"3")]


# --- the 4 KiB stack buffer spills to the heap --------------------------------


def test_large_request_head_spills_to_heap() -> None:
    fields = [(b"X-Field-%03d" % i, (b"%03d-" % i) * 22) for i in range(100)]  # ~100 bytes each
    data = b"GET /big HTTP/1.1\r\nHost: h\r\n" + b"".join(
        n + b": " + v + b"\r\n" for n, v in fields
    ) + b"\r\n"
    out = upstream(data, host=b"h")
    expected = (
        b"GET /big HTTP/1.1\r\nHost: h\r\n"
        + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
        + b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
        b"Via: 1.1 fastproxy\r\n\r\n"
    )
    assert len(out) > 2 * 4096
    assert out == expected


@pytest.mark.parametrize("size", [4000, 4090, 4095, 4096, 4097, 4200, 8191, 8192, 8193])
def test_sizes_around_the_stack_buffer(size: int) -> None:
    base = upstream(b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: \r\n\r\n", host=b"h")
    pad = b"p" * (size - len(base))
    out = upstream(b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: " + pad + b"\r\n\r\n", host=b"h")
    assert len(out) == size
    assert out == base.replace(b"X-Pad: \r\n", b"X-Pad: " + pad + b"\r\n")


def test_long_xff_and_via_lists_spill_to_heap() -> None:
    xff = [b"10.0.%d.%d" % (i // 256, i % 256) for i in range(150)]
    via = [b"1.1 hop-%03d" % i for i in range(150)]
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(
        b"X-Forwarded-For: " + a + b"\r\nVia: " + v + b"\r\n" for a, v in zip(xff, via, strict=True)
    ) + b"\r\n"
    out = upstream(data)
    assert b"X-Forwarded-For: " + b", ".join([*xff, b"203.0.113.7"]) + b"\r\n" in out
    assert b"Via: " + b", ".join([*via, VIA]) + b"\r\n" in out
    assert reparse_request(out).get(b"x-forwarded-for") is not None


def test_large_response_head_spills_to_heap() -> None:
    fields = b"".join(b"Set-Cookie: c%03d=%s\r\n" % (i, b"v" * 90) for i in range(100))
    head = response_head(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")
    out = build_response_head(head, FRAME_PASS, True, 1, VIA)
    assert out == (
        b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\nVia: 1.1 fastproxy\r\n\r\n"
    )


# --- responses ---------------------------------------------------------------

ORIGIN_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: origin\r\n"
    b"Content-Length: 5\r\n"
    b"Connection: keep-alive\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Via: 1.0 upstream\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\nhello"
)


def test_response_pass_exact() -> None:
    out = build_response_head(response_head(ORIGIN_RESPONSE), FRAME_PASS, True, 1, VIA)
    assert out == (
        b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 5\r\n"
        b"Content-Type: text/plain\r\nVia: 1.0 upstream, 1.1 fastproxy\r\n\r\n"
    )


def test_response_chunked_exact() -> None:
    out = build_response_head(response_head(ORIGIN_RESPONSE), FRAME_CHUNKED, True, 1, VIA)
    assert out == (
        b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Type: text/plain\r\n"
        b"Via: 1.0 upstream, 1.1 fastproxy\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_response_close_for_http10_client_exact() -> None:
    head = response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n")
    out = build_response_head(head, FRAME_CLOSE, False, 0, b"")
    assert out == b"HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n"


def test_response_not_keep_alive_exact() -> None:
    out = build_response_head(response_head(ORIGIN_RESPONSE), FRAME_PASS, False, 1, VIA)
    assert out == (
        b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 5\r\n"
        b"Content-Type: text/plain\r\nVia: 1.0 upstream, 1.1 fastproxy\r\nConnection: close\r\n\r\n"
    )


def test_response_keep_alive_to_http10_client_exact() -> None:
    out = build_response_head(response_head(ORIGIN_RESPONSE), FRAME_PASS, True, 0, b"")
    assert out == (
        b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 5\r\n"
        b"Content-Type: text/plain\r\nVia: 1.0 upstream\r\nConnection: keep-alive\r\n\r\n"
    )


def test_response_chunked_and_close() -> None:
    out = build_response_head(response_head(ORIGIN_RESPONSE), FRAME_CHUNKED, False, 1, b"")
    assert out.endswith(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    assert b"Content-Length" not in out


@pytest.mark.parametrize(
    ("status_line", "expected"),
    [
        (b"HTTP/1.0 404 Not Found", b"HTTP/1.1 404 Not Found\r\n"),
        (b"HTTP/1.1 204 ", b"HTTP/1.1 204 \r\n"),
        (b"HTTP/1.1 503", b"HTTP/1.1 503 \r\n"),
        (b"HTTP/1.1 599 Odd  Reason", b"HTTP/1.1 599 Odd  Reason\r\n"),
    ],
)
def test_response_status_line(status_line: bytes, expected: bytes) -> None:
    head = response_head(status_line + b"\r\nContent-Length: 0\r\n\r\n")
    assert build_response_head(head, FRAME_PASS, True, 1, b"").startswith(expected)


@pytest.mark.parametrize("name", HOP_BY_HOP[:-1])
def test_response_hop_by_hop_headers_are_dropped(name: bytes) -> None:
    value = b"chunked" if name == b"Transfer-Encoding" else b"x"
    head = response_head(b"HTTP/1.1 200 OK\r\n" + name.upper() + b": " + value +
                         b"\r\nX-Keep: 1\r\n\r\n", head_request=True)
    out = build_response_head(head, FRAME_PASS, True, 1, b"")
    assert out == b"HTTP/1.1 200 OK\r\nX-Keep: 1\r\n\r\n"


def test_response_keeps_request_only_names() -> None:
    # Expect, Host, X-Forwarded-* mean nothing special in a response: they pass.
    head = response_head(
        b"HTTP/1.1 200 OK\r\nExpect: x\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    out = build_response_head(head, FRAME_PASS, True, 1, b"")
    assert out == (
        b"HTTP/1.1 200 OK\r\nExpect: x\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_response_headers_named_by_connection_are_dropped() -> None:
    head = response_head(
        b"HTTP/1.1 200 OK\r\nConnection: X-A, x-b\r\nconnection: X-C\r\nX-A: 1\r\nX-B: 2\r\n"
        b"X-C: 3\r\nX-D: 4\r\nContent-Length: 0\r\n\r\n"
    )
    out = build_response_head(head, FRAME_PASS, True, 1, b"")
    assert out == b"HTTP/1.1 200 OK\r\nX-D: 4\r\nContent-Length: 0\r\n\r\n"


def test_response_connection_cannot_remove_content_length() -> None:
    # Framing is the proxy's business: an upstream naming Content-Length in
    # Connection must not leave the client with a body and no length on a
    # kept-alive connection (the next response would be read as this body).
    head = response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nhello"
    )
    out = build_response_head(head, FRAME_PASS, True, 1, b"")
    assert b"Content-Length: 5\r\n" in out


def test_response_head_request_keeps_content_length() -> None:
    head = response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", head_request=True)
    out = build_response_head(head, FRAME_PASS, True, 1, b"")
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"


def test_response_via_merge() -> None:
    head = response_head(
        b"HTTP/1.1 200 OK\r\nVia: 1.1 a\r\nContent-Length: 0\r\nVIA: 1.0 b, 1.1 c\r\n\r\n"
    )
    assert build_response_head(head, FRAME_PASS, True, 1, VIA) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nVia: 1.1 a, 1.0 b, 1.1 c, 1.1 fastproxy\r\n\r\n"
    )
    assert build_response_head(head, FRAME_PASS, True, 1, b"") == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nVia: 1.1 a, 1.0 b, 1.1 c\r\n\r\n"
    )


def test_frame_constants() -> None:
    assert len({FRAME_PASS, FRAME_CHUNKED, FRAME_CLOSE}) == 3
    assert all(isinstance(v, int) for v in (FRAME_PASS, FRAME_CHUNKED, FRAME_CLOSE))
