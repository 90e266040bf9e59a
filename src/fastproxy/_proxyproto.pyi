"""Type stubs for the compiled fastproxy._proxyproto extension (ext/fastproxy/_proxyproto.pyx)."""

class ProxyProtocolError(ValueError): ...

def parse(data: bytes) -> tuple[int, bytes | None, int, bytes | None, int] | None: ...
def build_v1(
    src_ip: str | bytes | None, src_port: int, dst_ip: str | bytes | None, dst_port: int
) -> bytes: ...
def build_v2(
    src_ip: str | bytes | None, src_port: int, dst_ip: str | bytes | None, dst_port: int,
    tlvs: bytes | None = None,
) -> bytes: ...
def tlv(kind: int, value: bytes) -> bytes: ...

PP2_TYPE_ALPN: int
PP2_TYPE_AUTHORITY: int
PP2_TYPE_SSL: int
PP2_SUBTYPE_SSL_VERSION: int
PP2_SUBTYPE_SSL_CN: int
PP2_SUBTYPE_SSL_CIPHER: int
PP2_CLIENT_SSL: int
PP2_CLIENT_CERT_CONN: int
