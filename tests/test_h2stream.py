"""_h2stream.response_fields: a response head as HTTP/2 fields, through the
recent-fields cache (the same tuple for the same field as received); and the
trailer fields an HTTP/2 client gets (_proxy.trailer_fields)."""

from __future__ import annotations

import random

from fastproxy._h2stream import response_fields
from fastproxy._http import MessageHead, ResponseParser
from fastproxy._proxy import trailer_fields


class Heads:
    def __init__(self) -> None:
        self.heads: list[MessageHead] = []

    def on_head(self, head: MessageHead) -> None:
        self.heads.append(head)

    def on_body(self, data: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


def head_of(status: int, fields: list[tuple[bytes, bytes]]) -> MessageHead:
    got = Heads()
    parser = ResponseParser(got)
    parser.feed(b"HTTP/1.1 %d X\r\n" % status
                + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
                + b"Content-Length: 0\r\n\r\n")
    return got.heads[0]


HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
       b"te"}


def model(status: int, fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = [(b":status", b"%d" % status)]
    out += [(n.lower(), v) for n, v in [*fields, (b"Content-Length", b"0")]
            if n.lower() not in HOP]
    return out


def test_fields_lower_cased_and_connection_fields_dropped() -> None:
    fields = [(b"Server", b"nginx"), (b"Connection", b"keep-alive"), (b"X-A", b"1"),
              (b"Keep-Alive", b"timeout=5"), (b"Upgrade", b"h2c"), (b"Set-Cookie", b"a=b")]
    assert response_fields(head_of(200, fields)) == model(200, fields)


def test_the_same_field_is_the_same_tuple_and_values_never_mix() -> None:
    first = response_fields(head_of(200, [(b"Content-Type", b"text/html"),
                                          (b"Set-Cookie", b"s=1")]))
    again = response_fields(head_of(404, [(b"Content-Type", b"text/html"),
                                          (b"Set-Cookie", b"s=1")]))
    assert again == [(b":status", b"404"), (b"content-type", b"text/html"),
                     (b"set-cookie", b"s=1"), (b"content-length", b"0")]
    assert again[1] is first[1]  # from the cache
    assert again[2] is not first[2]  # Set-Cookie is never kept
    # Spelled in another case: a field of its own in the cache, equal.
    lower = response_fields(head_of(200, [(b"content-type", b"text/html")]))
    assert lower[1] == first[1]
    other = response_fields(head_of(200, [(b"Content-Type", b"text/plain")]))
    assert other[1] == (b"content-type", b"text/plain")


def test_random_heads_match_the_model() -> None:
    rng = random.Random(7)
    names = [b"Server", b"Date", b"ETag", b"Vary", b"Connection", b"X-Id", b"te",
             b"Transfer-Encoding", b"Cache-Control", b"X-Long"]
    for _ in range(3000):
        fields = []
        for _ in range(rng.randrange(0, 8)):
            name = rng.choice(names)
            if name == b"Transfer-Encoding":
                continue  # (the parser's business: not with Content-Length)
            size = rng.choice((0, 1, 5, 300)) if name == b"X-Long" else rng.randrange(1, 4)
            value = bytes(rng.choice(b"abcAB") for _ in range(size))
            fields.append((name if rng.random() < 0.5 else name.upper(), value))
        status = rng.choice((200, 204, 301, 404, 503, 299))
        assert response_fields(head_of(status, fields)) == model(status, fields)


def test_trailer_fields_drop_framing_and_connection_fields() -> None:
    raw = b"Grpc-Status: 0\r\nContent-Length: 5\r\nConnection: x\r\nX-T:  v \r\n"
    assert trailer_fields(raw) == [(b"grpc-status", b"0"), (b"x-t", b"v")]
