"""Responses the proxy makes itself: errors and interim answers."""

from __future__ import annotations

from http import HTTPStatus

from fastproxy.clock import Clock

# RFC 9110 renamed these; Python's HTTPStatus keeps the old names before 3.13.
_PHRASES = {413: "Content Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable",
            422: "Unprocessable Content"}


def reason_phrase(status: int) -> str:
    """The reason phrase of `status` (RFC 9110 names)."""
    if status in _PHRASES:
        return _PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def local_body_size(status: int) -> int:
    """Length of the body `local_response` sends for `status` (for the access log)."""
    return len(f"{status} {reason_phrase(status)}\n")


_CACHE: dict[tuple[int, bool], tuple[bytes, bytes]] = {}


def local_response(status: int, clock: Clock, keep_alive: bool, head_only: bool = False) -> bytes:
    """A complete short text response with `status`, e.g. `502 Bad Gateway`."""
    parts = _CACHE.get((status, keep_alive))
    if parts is None:
        phrase = reason_phrase(status)
        body = f"{status} {phrase}\n".encode()
        first = (
            f"HTTP/1.1 {status} {phrase}\r\n"
            "Server: fastproxy\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
            "Date: "
        ).encode()
        parts = (first, b"\r\n\r\n" + body)
        _CACHE[(status, keep_alive)] = parts
    first, rest = parts
    if head_only:
        return first + clock.http_date + b"\r\n\r\n"
    return first + clock.http_date + rest
