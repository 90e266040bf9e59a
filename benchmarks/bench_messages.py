"""Typical HTTP messages used by the micro benchmarks."""

from __future__ import annotations

# A typical browser navigation: request line + 10 header fields.
BROWSER_GET = (
    b"GET /articles/2024/fast-proxies.html?ref=home&utm_source=feed HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.com/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=3f2a9c1e7b4d4e0f8a6b; theme=dark; _ga=GA1.2.1234567890.1700000000\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"\r\n"
)

SMALL_POST = (
    b"POST /api/v1/items HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: python-requests/2.32.3\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 58\r\n"
    b"\r\n"
    b'{"name": "widget", "quantity": 3, "tags": ["red", "big"]}\n'
)
assert len(SMALL_POST.split(b"\r\n\r\n", 1)[1]) == 58

PIPELINED_10 = b"".join(
    b"GET /static/img/%d.png HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0\r\n"
    b"Accept: image/avif,image/webp,*/*\r\n"
    b"Referer: https://www.example.com/\r\n"
    b"\r\n" % i
    for i in range(10)
)

RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Mon, 03 Jun 2024 10:00:00 GMT\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: 1024\r\n"
    b"Last-Modified: Sun, 02 Jun 2024 09:00:00 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b'ETag: "665c3410-400"\r\n'
    b"Cache-Control: public, max-age=60\r\n"
    b"Accept-Ranges: bytes\r\n"
    b"\r\n"
)
RESPONSE_1K = RESPONSE_HEAD + b"x" * 1024


class CountingHandler:
    """The three callbacks a parser needs, doing as little as possible."""

    __slots__ = ("body_bytes", "head", "heads", "messages")

    def __init__(self) -> None:
        self.heads = 0
        self.messages = 0
        self.body_bytes = 0
        self.head = None

    def on_head(self, head: object) -> None:
        self.heads += 1
        self.head = head

    def on_body(self, data: object) -> None:
        self.body_bytes += len(data)  # type: ignore[arg-type]

    def on_message_complete(self) -> None:
        self.messages += 1
