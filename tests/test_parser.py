"""Unit tests of the llhttp-based RequestParser and ResponseParser (ext/fastproxy/_http.pyx)."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy._http import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    HttpParseError,
    MessageHead,
    RequestParser,
    ResponseParser,
)

Event = tuple[Any, ...]


def describe(head: MessageHead) -> tuple[Any, ...]:
    return (
        head.is_request, head.method, head.target, head.status, head.reason, head.http_minor,
        head.keep_alive, head.body_kind, head.content_length, head.host, head.expect_continue,
        head.is_head_request, tuple(head.headers()),
    )


class Recorder:
    """A parser handler that records every callback in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.heads: list[MessageHead] = []
        self.chunk_types: set[type] = set()

    def on_head(self, head: MessageHead) -> None:
        self.heads.append(head)
        self.events.append(("head", describe(head)))

    def on_body(self, chunk: bytes | memoryview) -> None:
        self.chunk_types.add(type(chunk))
        self.events.append(("body", bytes(chunk)))

    def on_message_complete(self) -> None:
        self.events.append(("complete",))

    def normalized(self) -> list[Event]:
        """Events with adjacent body pieces joined (how a body is cut is not significant)."""
        out: list[Event] = []
        for ev in self.events:
            if ev[0] == "body" and out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + ev[1])
            elif ev[0] == "body" and not ev[1]:
                continue
            else:
                out.append(ev)
        return out

    @property
    def bodies(self) -> list[bytes]:
        """One body per completed message."""
        result, cur = [], b""
        for ev in self.events:
            if ev[0] == "body":
                cur += ev[1]
            elif ev[0] == "complete":
                result.append(cur)
                cur = b""
        return result


def feed_all(parser: RequestParser | ResponseParser, data: bytes) -> list[int]:
    """Feed `data` fully, re-feeding after each pause; return what each feed consumed."""
    consumed = []
    while data:
        n = parser.feed(data)
        assert 0 < n <= len(data)
        consumed.append(n)
        data = data[n:]
    return consumed


def parse_request(data: bytes, **limits: int) -> Recorder:
    rec = Recorder()
    feed_all(RequestParser(rec, **limits), data)
    return rec


def one_head(data: bytes, **limits: int) -> MessageHead:
    rec = parse_request(data, **limits)
    assert len(rec.heads) == 1
    return rec.heads[0]


def request_error(data: bytes, **limits: int) -> HttpParseError:
    rec = Recorder()
    parser = RequestParser(rec, **limits)
    with pytest.raises(HttpParseError) as info:
        feed_all(parser, data)
    return info.value


def parse_response(data: bytes, no_body: bool = False, eof: bool = False) -> Recorder:
    rec = Recorder()
    parser = ResponseParser(rec)
    parser.expect_no_body(no_body)
    feed_all(parser, data)
    if eof:
        parser.feed_eof()
    return rec


def response_error(data: bytes, eof: bool = False) -> HttpParseError:
    parser = ResponseParser(Recorder())
    with pytest.raises(HttpParseError) as info:
        feed_all(parser, data)
        if eof:
            parser.feed_eof()
    return info.value


# --- request heads ----------------------------------------------------------

def test_request_head_fields() -> None:
    head = one_head(
        b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t\r\n"
        b"ACCEPT: */*\r\nx-lower: 1\r\n\r\n"
    )
    assert head.is_request
    assert head.method == b"GET"
    assert head.target == b"/a/b?c=d"
    assert head.http_minor == 1
    assert head.version == b"HTTP/1.1"
    assert head.host == b"example.com:8080"
    assert head.header_count == 4
    assert head.body_kind == BODY_NONE
    assert head.content_length == -1
    assert not head.expect_continue
    assert not head.is_head_request
    assert not head.has_connection_header
    assert head.keep_alive
    assert head.status == 0
    assert head.reason is None
    assert repr(head) == "<MessageHead b'GET' b'/a/b?c=d' HTTP/1.1>"


def test_headers_keep_order_and_case() -> None:
    head = one_head(
        b"GET / HTTP/1.1\r\nX-B: 2\r\nhost: h\r\nX-a: 1\r\nx-B: 3\r\nCoOkIe: k=v\r\n\r\n"
    )
    assert head.headers() == [
        (b"X-B", b"2"), (b"host", b"h"), (b"X-a", b"1"), (b"x-B", b"3"), (b"CoOkIe", b"k=v"),
    ]


def test_get_and_get_all_match_names_case_insensitively() -> None:
    head = one_head(b"GET / HTTP/1.1\r\nHost: h\r\nX-Dup: 1\r\nx-dup: 2\r\nX-DUP: 3\r\n\r\n")
    # The contract: the caller passes the lower-case name; the message may use any case.
    assert head.get(b"x-dup") == b"1"
    assert head.get_all(b"x-dup") == [b"1", b"2", b"3"]
    assert head.get(b"host") == b"h"
    assert head.get(b"missing") is None
    assert head.get_all(b"missing") == []
    assert head.get(b"x-du") is None  # a prefix is not a match
    assert head.get(b"x-dupe") is None


def test_values_are_trimmed_of_surrounding_whitespace() -> None:
    head = one_head(
        b"GET / HTTP/1.1\r\nHost:h\r\nA:   spaced out value \t \r\nB:\t\ttab\t\r\nC: \r\n"
        b"D:\r\nE: in  side\r\n\r\n"
    )
    assert head.headers() == [
        (b"Host", b"h"), (b"A", b"spaced out value"), (b"B", b"tab"), (b"C", b""), (b"D", b""),
        (b"E", b"in  side"),
    ]
    assert head.get(b"a") == b"spaced out value"


def test_trimming_survives_every_split() -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\nA:  v w  \r\n\r\n"
    for cut in range(1, len(data)):
        rec = Recorder()
        parser = RequestParser(rec)
        feed_all(parser, data[:cut])
        feed_all(parser, data[cut:])
        assert rec.heads[0].headers() == [(b"Host", b"h"), (b"A", b"v w")], cut


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", [b"keep-alive"], True),
        (b"1.1", [b"close"], False),
        (b"1.1", [b"Close"], False),
        (b"1.1", [b"CLOSE"], False),
        (b"1.1", [b"keep-alive, close"], False),
        (b"1.1", [b"foo, close"], False),
        (b"1.1", [b"foo , close , bar"], False),
        (b"1.1", [b"foo", b"close"], False),
        (b"1.1", [b"closed"], True),
        (b"1.1", [b"x-close"], True),
        (b"1.0", None, False),
        (b"1.0", [b"keep-alive"], True),
        (b"1.0", [b"Keep-Alive"], True),
        (b"1.0", [b"foo, keep-alive"], True),
        (b"1.0", [b"te", b"keep-alive"], True),
        (b"1.0", [b"keep-alive, close"], False),
        (b"1.0", [b"keep-alives"], False),
    ],
)
def test_keep_alive_rules(version: bytes, connection: list[bytes] | None, keep_alive: bool) -> None:
    lines = [b"GET / HTTP/" + version, b"Host: h"]
    for value in connection or []:
        lines.append(b"Connection: " + value)
    head = one_head(b"\r\n".join(lines) + b"\r\n\r\n")
    assert head.keep_alive is keep_alive
    assert head.has_connection_header is (connection is not None)
    assert head.http_minor == int(version[-1:])


def test_http10_request_without_host() -> None:
    head = one_head(b"GET / HTTP/1.0\r\n\r\n")
    assert head.http_minor == 0
    assert head.version == b"HTTP/1.0"
    assert head.host is None


@pytest.mark.parametrize(
    ("framing", "kind", "length"),
    [
        (b"", BODY_NONE, -1),
        (b"Content-Length: 0\r\n", BODY_LENGTH, 0),
        (b"Content-Length: 5\r\n", BODY_LENGTH, 5),
        (b"Content-Length: 0005\r\n", BODY_LENGTH, 5),
        (b"Content-Length: 12345678901\r\n", BODY_LENGTH, 12345678901),
        (b"Transfer-Encoding: chunked\r\n", BODY_CHUNKED, -1),
        (b"Transfer-Encoding: Chunked\r\n", BODY_CHUNKED, -1),
    ],
)
def test_body_kind_and_content_length(framing: bytes, kind: int, length: int) -> None:
    rec = Recorder()
    RequestParser(rec).feed(b"POST / HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n")
    head = rec.heads[0]
    assert head.body_kind == kind
    assert head.content_length == length


@pytest.mark.parametrize("value", [2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1])
@pytest.mark.parametrize("response", [False, True])
def test_content_length_is_exact_or_refused(value: int, response: bool) -> None:
    # content_length is a signed 64-bit number: a length llhttp accepts (up to
    # 2**64 - 1) must not wrap to a negative one, which would slip past a body
    # size check and be forwarded as "Content-Length: -1".
    rec = Recorder()
    try:
        if response:
            ResponseParser(rec).feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % value)
        else:
            RequestParser(rec).feed(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % value
            )
    except HttpParseError as e:
        assert e.status in ((502,) if response else (400, 413))
        return
    assert rec.heads[0].body_kind == BODY_LENGTH
    assert rec.heads[0].content_length == value


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue", b"100-CONTINUE"])
def test_expect_continue(value: bytes) -> None:
    head = one_head(
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: " + value + b"\r\nContent-Length: 1\r\n\r\nx"
    )
    assert head.expect_continue


@pytest.mark.parametrize("value", [b"200-ok", b"100-continue, x", b"", b"100-continuee"])
def test_unknown_expectation_is_417(value: bytes) -> None:
    err = request_error(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: " + value + b"\r\n\r\n")
    assert err.status == 417


def test_is_head_request() -> None:
    assert one_head(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n").is_head_request
    assert not one_head(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").is_head_request


@pytest.mark.parametrize(
    "method",
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"PROPFIND",
     b"MKCOL", b"LOCK", b"PURGE", b"QUERY"],
)
def test_methods_are_interned_names(method: bytes) -> None:
    head = one_head(method + b" /p HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head.method == method


@pytest.mark.parametrize(
    "target",
    [b"/", b"/a%20b?x=1&y=%2F", b"http://example.com/p?q", b"https://example.com:8443/",
     b"//double"],
)
def test_accepted_target_forms(target: bytes) -> None:
    assert one_head(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n").target == target


def test_asterisk_form_only_for_options() -> None:
    assert one_head(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").target == b"*"
    assert request_error(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n").status == 400


# --- request bodies ---------------------------------------------------------

def test_content_length_body() -> None:
    rec = parse_request(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world")
    assert rec.normalized()[1:] == [("body", b"hello world"), ("complete",)]


def test_content_length_body_in_pieces() -> None:
    rec = Recorder()
    parser = RequestParser(rec)
    first = b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nab"
    assert parser.feed(first) == len(first)
    assert parser.mid_message
    assert parser.feed(b"cd") == 2
    assert parser.feed(b"ef") == 2
    assert not parser.mid_message
    assert [ev for ev in rec.events if ev[0] != "head"] == [
        ("body", b"ab"), ("body", b"cd"), ("body", b"ef"), ("complete",),
    ]


def test_large_body_is_delivered_whole() -> None:
    body = bytes(range(256)) * 100
    data = b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    rec = parse_request(data)
    assert rec.bodies == [body]
    # a whole feed that is body only is passed on as the same object's bytes
    rec2 = Recorder()
    parser = RequestParser(rec2)
    parser.feed(data[:60])
    parser.feed(data[60:])
    assert rec2.bodies == [body]


def test_chunked_body_with_extensions_and_trailers() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
        b"1;name=value\r\n \r\n"
        b"A\r\n0123456789\r\n"
        b"0\r\nX-Trailer: t\r\nOther: o\r\n\r\n"
    )
    rec = parse_request(data)
    assert rec.bodies == [b"hello 0123456789"]
    head = rec.heads[0]
    # trailer fields are not added to the head
    assert head.headers() == [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
    assert head.get(b"x-trailer") is None


def test_empty_chunked_body() -> None:
    rec = parse_request(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert rec.bodies == [b""]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
    for wrapped in (bytearray(data), memoryview(data)):
        rec = Recorder()
        assert RequestParser(rec).feed(wrapped) == len(data)
        assert rec.bodies == [b"ok"]


# --- pipelining and split points --------------------------------------------

PIPELINE = [
    b"GET /one HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
    b"POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nfoo\r\n4;x=y\r\nbarz\r\n0\r\nT: v\r\n\r\n",
    b"HEAD /four HTTP/1.1\r\nHost: h\r\nX-Pad:   padded  \r\n\r\n",
    b"GET /five HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"DELETE /six HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
]
STREAM = b"".join(PIPELINE)


def test_pipelined_feed_pauses_after_each_message() -> None:
    rec = Recorder()
    parser = RequestParser(rec)
    consumed = feed_all(parser, STREAM)
    assert consumed == [len(m) for m in PIPELINE]
    assert [h.target for h in rec.heads] == [
        b"/one", b"/two", b"/three", b"/four", b"/five", b"/six",
    ]
    assert rec.bodies == [b"", b"abcde", b"foobarz", b"", b"", b""]
    assert [h.keep_alive for h in rec.heads] == [True, True, True, True, True, False]


def test_pipelined_events_before_the_pause() -> None:
    rec = Recorder()
    parser = RequestParser(rec)
    n = parser.feed(STREAM)
    assert n == len(PIPELINE[0])
    # nothing of the second message is seen before the caller re-feeds
    assert [ev[0] for ev in rec.events] == ["head", "complete"]


def reference_events() -> list[Event]:
    rec = Recorder()
    feed_all(RequestParser(rec), STREAM)
    return rec.normalized()


def test_byte_by_byte_gives_the_same_events() -> None:
    expected = reference_events()
    rec = Recorder()
    parser = RequestParser(rec)
    for i in range(len(STREAM)):
        assert parser.feed(STREAM[i:i + 1]) == 1
    assert rec.normalized() == expected


def test_every_split_point_gives_the_same_events() -> None:
    expected = reference_events()
    for cut in range(1, len(STREAM)):
        rec = Recorder()
        parser = RequestParser(rec)
        feed_all(parser, STREAM[:cut])
        feed_all(parser, STREAM[cut:])
        assert rec.normalized() == expected, cut


def test_every_pair_of_split_points_in_one_message() -> None:
    message = PIPELINE[2]
    expected = parse_request(message).normalized()
    for a in range(1, len(message)):
        for b in range(a, len(message), 7):
            rec = Recorder()
            parser = RequestParser(rec)
            for part in (message[:a], message[a:b], message[b:]):
                if part:
                    feed_all(parser, part)
            assert rec.normalized() == expected, (a, b)


def test_leading_empty_lines_between_requests_are_ignored() -> None:
    rec = parse_request(
        b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [h.target for h in rec.heads] == [b"/", b"/2"]


def test_data_after_connection_close_is_refused() -> None:
    err = request_error(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert err.status == 400


def test_mid_message_and_feed_eof() -> None:
    rec = Recorder()
    parser = RequestParser(rec)
    assert not parser.mid_message
    parser.feed(b"GET / HTTP/1.1\r\nHo")
    assert parser.mid_message
    with pytest.raises(HttpParseError):
        parser.feed_eof()


def test_feed_eof_before_any_message_is_clean() -> None:
    RequestParser(Recorder()).feed_eof()
    ResponseParser(Recorder()).feed_eof()


@pytest.mark.parametrize(
    ("parser_type", "message"),
    [
        (RequestParser, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        (RequestParser, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx"),
        (ResponseParser, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"),
        (ResponseParser, b"HTTP/1.1 204 No Content\r\n\r\n"),
    ],
)
def test_feed_eof_after_a_complete_message_is_clean(
    parser_type: type[RequestParser] | type[ResponseParser], message: bytes
) -> None:
    # "raise if a message was cut": nothing was cut here, the peer closed between messages.
    rec = Recorder()
    parser = parser_type(rec)
    assert parser.feed(message) == len(message)
    assert not parser.mid_message
    parser.feed_eof()
    assert rec.events[-1] == ("complete",)


def test_parser_stays_failed_after_an_error() -> None:
    parser = RequestParser(Recorder())
    with pytest.raises(HttpParseError):
        parser.feed(b"GET / HTTP/1.1\r\n\r\n")  # missing Host
    with pytest.raises(HttpParseError):
        parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")


def test_handler_exceptions_propagate() -> None:
    class Boom(Recorder):
        def on_head(self, head: MessageHead) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        RequestParser(Boom()).feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")


# --- limits -----------------------------------------------------------------

@pytest.mark.parametrize("method", [b"GET", b"DELETE", b"OPTIONS"])
def test_max_line_bytes(method: bytes) -> None:
    # max_line_bytes bounds the request line "METHOD SP target SP HTTP/1.1" (no CRLF).
    limit = 64

    def line(length: int) -> bytes:
        target = b"/" + b"a" * (length - len(method) - len(b"  / HTTP/1.1") + 1)
        out = method + b" " + target + b" HTTP/1.1"
        assert len(out) == length
        return out

    ok = line(limit)
    head = one_head(ok + b"\r\nHost: h\r\n\r\n", max_line_bytes=limit)
    assert head.method == method
    long = line(limit + 1) + b"\r\nHost: h\r\n\r\n"
    assert request_error(long, max_line_bytes=limit).status == 414
    # the same when the line arrives one byte at a time
    parser = RequestParser(Recorder(), max_line_bytes=limit)
    with pytest.raises(HttpParseError) as info:
        for i in range(len(long)):
            parser.feed(long[i:i + 1])
    assert info.value.status == 414


def test_max_header_bytes_counts_raw_bytes_including_whitespace() -> None:
    # The value is trimmed to "v", but the 200 spaces around it still count.
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX:" + b" " * 100 + b"v" + b" " * 100 + b"\r\n\r\n"
    assert one_head(data, max_header_bytes=len(data)).get(b"x") == b"v"
    err = request_error(data, max_header_bytes=len(data) - 1)
    assert err.status == 431
    parser = RequestParser(Recorder(), max_header_bytes=len(data) - 1)
    with pytest.raises(HttpParseError) as info:
        for i in range(len(data)):
            parser.feed(data[i:i + 1])
    assert info.value.status == 431


def test_max_header_bytes_applies_to_each_pipelined_message() -> None:
    one = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"y" * 60 + b"\r\n\r\n"
    rec = parse_request(one * 5, max_header_bytes=len(one))
    assert len(rec.heads) == 5


def test_max_header_bytes_does_not_limit_the_body() -> None:
    body = b"z" * 5000
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + body
    assert parse_request(data, max_header_bytes=100).bodies == [body]


def test_trailer_section_counts_toward_max_header_bytes() -> None:
    # The parser drops trailer fields, but "counted by the raw limit" (see
    # cb_header_field) must hold: an endless trailer section may not be read forever.
    limit = 256
    parser = RequestParser(Recorder(), max_header_bytes=limit)
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
    with pytest.raises(HttpParseError) as info:
        for i in range(100):
            parser.feed(b"X-Trailer-%03d: %s\r\n" % (i, b"t" * 40))
    assert info.value.status == 431


def test_max_header_count() -> None:
    def request(n: int) -> bytes:
        return b"GET / HTTP/1.1\r\n" + b"Host: h\r\n" + b"".join(
            b"X-%d: v\r\n" % i for i in range(n - 1)
        ) + b"\r\n"

    assert one_head(request(10), max_header_count=10).header_count == 10
    err = request_error(request(11), max_header_count=10)
    assert err.status == 431


def test_many_headers_grow_the_offset_table() -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(
        b"X-%03d: %03d\r\n" % (i, i) for i in range(300)
    ) + b"\r\n"
    head = one_head(data, max_header_count=301)
    assert head.header_count == 301
    assert head.get(b"x-299") == b"299"
    assert head.get_all(b"x-150") == [b"150"]


@pytest.mark.parametrize(
    "limits",
    [{"max_header_bytes": 10}, {"max_header_count": 0}, {"max_line_bytes": 0}],
)
def test_bad_limits_are_refused(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RequestParser(Recorder(), **limits)


# --- strictness (RFC 9112 §6.3, request smuggling) --------------------------

@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX", 400),
        # RFC 9112 §6.3: chunked not last in a request -> 400; chunked after another coding -> 501
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: h\n\n", 400),
        (b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX : b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        (b"GET / RTSP/1.0\r\nHost: h\r\n\r\n", 400),
        (b"GET / ICE/1.0\r\nHost: h\r\n\r\n", 400),
        (b"DESCRIBE / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 405),
        (b"GET a/b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET h:80 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET http:// HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ],
)
def test_ambiguous_or_unsupported_requests_are_refused(data: bytes, status: int) -> None:
    assert request_error(data).status == status


def test_one_space_before_the_target_at_every_split() -> None:
    # llhttp skips any run of spaces before the target; RFC 9112 §3 allows exactly one.
    good = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    bad = b"GET  /x HTTP/1.1\r\nHost: h\r\n\r\n"
    for cut in [*range(1, len(bad)), -1]:
        for data, ok in ((good, True), (bad, False)):
            parser = RequestParser(Recorder())
            if cut == -1:  # byte by byte
                pieces = [data[i:i + 1] for i in range(len(data))]
            else:
                pieces = [data[:cut], data[cut:]]
            try:
                for piece in pieces:
                    feed_all(parser, piece)
            except HttpParseError as e:
                assert not ok, (cut, e.reason)
                assert e.status == 400
            else:
                assert ok, cut


def test_upgrade_request_is_parsed_as_a_plain_request() -> None:
    rec = parse_request(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [h.target for h in rec.heads] == [b"/ws", b"/next"]


# --- responses --------------------------------------------------------------

def test_response_head_fields() -> None:
    rec = parse_response(
        b"HTTP/1.1 201 Created Here\r\nServer: o\r\nContent-Length: 2\r\nX-Y:  z  \r\n\r\nok"
    )
    head = rec.heads[0]
    assert not head.is_request
    assert head.status == 201
    assert head.reason == b"Created Here"
    assert head.method is None
    assert head.target is None
    assert head.http_minor == 1
    assert head.keep_alive
    assert head.body_kind == BODY_LENGTH
    assert head.content_length == 2
    assert head.headers() == [(b"Server", b"o"), (b"Content-Length", b"2"), (b"X-Y", b"z")]
    assert rec.bodies == [b"ok"]
    assert repr(head) == "<MessageHead 201 HTTP/1.1>"


def test_response_without_reason() -> None:
    head = parse_response(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n").heads[0]
    assert head.status == 200
    assert head.reason == b""


def test_response_chunked() -> None:
    rec = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    )
    assert rec.heads[0].body_kind == BODY_CHUNKED
    assert rec.bodies == [b"abcde"]


@pytest.mark.parametrize(
    ("head_lines", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive, close\r\n", False),
    ],
)
def test_response_keep_alive(head_lines: bytes, keep_alive: bool) -> None:
    head = parse_response(head_lines + b"\r\nx").heads[0]
    assert head.keep_alive is keep_alive


def test_response_head_request_has_no_body() -> None:
    rec = Recorder()
    parser = ResponseParser(rec)
    parser.expect_no_body(True)
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    assert parser.feed(first + b"HTTP/1.1 200 OK\r\n") == len(first)
    assert rec.heads[0].body_kind == BODY_NONE
    assert rec.events[-1] == ("complete",)
    parser.expect_no_body(False)
    feed_all(parser, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert rec.heads[1].body_kind == BODY_LENGTH
    assert rec.bodies == [b"", b"hi"]


def test_response_head_request_chunked_has_no_body() -> None:
    rec = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", no_body=True)
    assert rec.heads[0].body_kind == BODY_NONE
    assert rec.bodies == [b""]


@pytest.mark.parametrize("status", [204, 304, 100, 102, 103])
def test_bodyless_statuses(status: int) -> None:
    rec = Recorder()
    parser = ResponseParser(rec)
    first = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status if status == 304 else (
        b"HTTP/1.1 %d X\r\n\r\n" % status
    )
    rest = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!"
    assert parser.feed(first + rest) == len(first)
    assert rec.heads[0].body_kind == BODY_NONE
    assert rec.heads[0].status == status
    feed_all(parser, rest)
    assert rec.bodies == [b"", b"!"]


@pytest.mark.parametrize("status", [101, 104, 150, 199])
@pytest.mark.parametrize(
    "framing", [b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n"]
)
def test_interim_response_never_has_a_body(status: int, framing: bytes) -> None:
    # body_kind says BODY_NONE for every status < 200, so no body may be delivered
    # for such a head: llhttp itself only treats 100-103, 204 and 304 as bodyless.
    rec = Recorder()
    parser = ResponseParser(rec)
    data = b"HTTP/1.1 %d Interim\r\n" % status + framing + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    try:
        feed_all(parser, data)
    except HttpParseError as e:
        assert e.status == 502
    for head in rec.heads:
        assert head.body_kind == BODY_NONE
    assert not [ev for ev in rec.events if ev[0] == "body"]


def test_204_body_bytes_are_not_read_as_body() -> None:
    # Bytes after a 204 belong to the next response, where they are garbage.
    err = response_error(b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nhi")
    assert err.status == 502


def test_close_delimited_response() -> None:
    rec = Recorder()
    parser = ResponseParser(rec)
    parser.feed(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nabc")
    head = rec.heads[0]
    assert head.body_kind == BODY_UNTIL_CLOSE
    assert not head.keep_alive
    assert parser.message_needs_eof
    assert parser.feed(b"def") == 3
    assert rec.events[-1] == ("body", b"def")
    parser.feed_eof()
    assert rec.events[-1:] == [("complete",)]
    assert rec.bodies == [b"abcdef"]


def test_truncated_response_is_an_error_at_eof() -> None:
    assert response_error(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", eof=True).status == 502
    assert response_error(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", eof=True
    ).status == 502
    assert response_error(b"HTTP/1.1 200 OK\r\nConte", eof=True).status == 502


def test_100_continue_then_final_response() -> None:
    rec = Recorder()
    parser = ResponseParser(rec)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
    assert feed_all(parser, interim + final) == [len(interim), len(final)]
    assert [h.status for h in rec.heads] == [100, 200]
    assert rec.normalized()[1:] == [
        ("complete",), ("head", describe(rec.heads[1])), ("body", b"done"), ("complete",),
    ]


def test_pipelined_responses_split_everywhere() -> None:
    stream = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n"
        b"HTTP/1.0 200 OK\r\n\r\nuntil close"
    )
    whole = parse_response(stream, eof=True).normalized()
    assert len([e for e in whole if e[0] == "complete"]) == 5
    for cut in range(1, len(stream)):
        rec = Recorder()
        parser = ResponseParser(rec)
        feed_all(parser, stream[:cut])
        feed_all(parser, stream[cut:])
        parser.feed_eof()
        assert rec.normalized() == whole, cut


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 99 Low\r\n\r\n",
        b"HTTP/1.1 1000 High\r\n\r\n",
        # three digits, but not a status code (RFC 9110 §15: 100-599, first digit 1-5);
        # read as "interim" they would let a body pose as the next response
        b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 020 Low\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        # Each of these is a bad upstream response, which the client must hear as 502.
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"ICE/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_bad_responses_are_502(data: bytes) -> None:
    assert response_error(data).status == 502


def test_response_limits() -> None:
    head = b"HTTP/1.1 200 OK\r\nX: " + b"v" * 100 + b"\r\nContent-Length: 0\r\n\r\n"
    rec = Recorder()
    assert ResponseParser(rec, max_header_bytes=len(head)).feed(head) == len(head)
    with pytest.raises(HttpParseError) as info:
        ResponseParser(Recorder(), max_header_bytes=len(head) - 1).feed(head)
    assert info.value.status == 431
    many = b"HTTP/1.1 200 OK\r\n" + b"X: v\r\n" * 5 + b"\r\n"
    with pytest.raises(HttpParseError) as info:
        ResponseParser(Recorder(), max_header_count=4).feed(many)
    assert info.value.status == 431


def test_response_parser_reset() -> None:
    rec = Recorder()
    parser = ResponseParser(rec)
    with pytest.raises(HttpParseError):
        parser.feed(b"junk\r\n")
    parser.reset()
    feed_all(parser, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert rec.bodies == [b"1"]


def test_parse_error_carries_status_and_reason() -> None:
    err = HttpParseError(431, "too big")
    assert err.status == 431
    assert err.reason == "too big"
    assert str(err) == "too big"
    assert isinstance(err, Exception)


# -- protocol switches (Upgrade) ------------------------------------------------------------

@pytest.mark.parametrize("connection,version,expected", [
    (b"Upgrade", b"1.1", b"websocket"),
    (b"keep-alive, upgrade", b"1.1", b"websocket"),
    (b"keep-alive", b"1.1", None),    # Upgrade without Connection: upgrade is not a request
    (b"Upgrade", b"1.0", None),       # HTTP/1.0 has no Upgrade
])
def test_request_upgrade(connection: bytes, version: bytes, expected: bytes | None) -> None:
    rec = Recorder()
    parser = RequestParser(rec)
    data = (b"GET /ws HTTP/" + version + b"\r\nHost: a\r\nConnection: " + connection
            + b"\r\nUpgrade: websocket\r\n\r\n")
    # Parsed as a plain request: complete at the end of its head, nothing more taken.
    assert parser.feed(data + b"\x81\x00") == len(data)
    assert rec.heads[0].upgrade == expected
    assert rec.events[-1] == ("complete",)


def test_request_upgrade_with_body_is_read_first() -> None:
    rec = Recorder()
    parser = RequestParser(rec)
    data = (b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n"
            b"Content-Length: 3\r\n\r\nabc")
    assert parser.feed(data + b"new protocol") == len(data)
    assert rec.normalized()[1:] == [("body", b"abc"), ("complete",)]
    assert rec.heads[0].upgrade == b"x"


def test_response_101_when_asked() -> None:
    rec = Recorder()
    parser = ResponseParser(rec)
    parser.upgrade_asked = True
    head = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n")
    # What follows the head is the new protocol's: not consumed.
    assert parser.feed(head + b"\x81\x02hi") == len(head)
    assert rec.heads[0].status == 101
    assert rec.heads[0].upgrade == b"websocket"
    assert rec.heads[0].body_kind == BODY_NONE


def test_response_101_without_upgrade_fields_is_502() -> None:
    parser = ResponseParser(Recorder())
    parser.upgrade_asked = True
    with pytest.raises(HttpParseError) as info:
        parser.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert info.value.status == 502
