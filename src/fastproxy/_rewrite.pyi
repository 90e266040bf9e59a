"""Type stubs for the compiled fastproxy._rewrite extension (ext/fastproxy/_rewrite.pyx)."""

from typing import Final

from fastproxy._http import MessageHead

FRAME_PASS: Final = 0
FRAME_CHUNKED: Final = 1
FRAME_CLOSE: Final = 2

def build_request_head(
    head: MessageHead,
    target: bytes,
    host: bytes,
    client_ip: bytes,
    proto: bytes,
    via: bytes,
    drop: tuple[bytes, ...] = (),
    extra: bytes = b"",
    forwarded_host: bytes | None = None,
) -> bytes: ...
def build_response_head(
    head: MessageHead,
    framing: int,
    keep_alive: bool,
    client_minor: int,
    via: bytes,
    drop: tuple[bytes, ...] = (),
    extra: bytes = b"",
) -> bytes: ...
