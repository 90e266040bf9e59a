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


# gRPC status codes for answers the proxy makes itself to a gRPC request. The
# proxy knows why it answers, so the codes are the specific ones (google.rpc.Code's
# HTTP mapping: 429 -> RESOURCE_EXHAUSTED, 504 -> DEADLINE_EXCEEDED) where gRPC's
# client-side table for intermediaries that sent no grpc-status is coarser (both
# UNAVAILABLE); the rest follow that table (404 -> UNIMPLEMENTED: no route is a
# method this service does not have).
GRPC_STATUS: dict[int, int] = {
    400: 13,  # INTERNAL
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 12,  # UNIMPLEMENTED
    405: 12,
    408: 4,  # DEADLINE_EXCEEDED
    413: 8,  # RESOURCE_EXHAUSTED
    414: 8,
    429: 8,
    431: 8,
    501: 12,
    502: 14,  # UNAVAILABLE
    503: 14,
    504: 4,
}
GRPC_UNKNOWN = 2

# Fields of the original answer that a trailers-only gRPC response does not keep.
_GRPC_DROP = (b"content-type", b"content-length", b"transfer-encoding")


def grpc_message(text: str) -> bytes:
    """`text` as a grpc-message value: UTF-8, percent-encoded outside printable
    ASCII and for '%' (the gRPC over HTTP/2 spec)."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def grpc_response(status: int, data: bytes) -> bytes:
    """The gRPC form of `data`, an HTTP/1.1 response the proxy made with `status`
    for a gRPC request: "200 OK", content-type application/grpc, grpc-status and
    grpc-message in the head and no body (a trailers-only response). The other
    header fields of the answer (Retry-After, WWW-Authenticate, Date ...) stay."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")[1:]
    kept = [line for line in lines
            if line.partition(b":")[0].strip().lower() not in _GRPC_DROP]
    text = body.decode("utf-8", "replace").strip()
    if not text or len(text) > 200:
        text = f"{status} {reason_phrase(status)}"
    code = GRPC_STATUS.get(status, GRPC_UNKNOWN)
    grpc = [b"Content-Type: application/grpc", b"grpc-status: %d" % code,
            b"grpc-message: " + grpc_message(f"fastproxy: {text}"), b"Content-Length: 0"]
    return b"\r\n".join([b"HTTP/1.1 200 OK", *grpc, *kept]) + b"\r\n\r\n"
