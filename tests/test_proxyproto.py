"""fastproxy._proxyproto (PROXY protocol v1/v2) against the spec and a plain Python model.

The v2 headers here are assembled by hand with struct and socket.inet_pton,
so the byte layout is checked independently of the builder. The reference
model parses whole headers with str.split, re, ipaddress and struct; the
extension must agree with it on every complete header, and on partial input
must say "read more" exactly while what it has seen can still become valid.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastproxy._proxyproto import ProxyProtocolError, build_v1, build_v2, parse

PROPERTY = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_NOOP = 0x01, 0x02, 0x04


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header: the signature, the two bytes, the big-endian length, the body."""
    return struct.pack("!12sBBH", SIG, ver_cmd, fam, len(body) if length is None else length) + body


def v2_inet(src: str, sport: int, dst: str, dport: int, tlvs: bytes = b"") -> bytes:
    af = socket.AF_INET6 if ":" in src else socket.AF_INET
    addrs = socket.inet_pton(af, src) + socket.inet_pton(af, dst) + struct.pack("!HH", sport, dport)
    return v2(0x21, 0x11 if af == socket.AF_INET else 0x21, addrs + tlvs)


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def canonical(text: str) -> bytes:
    """What getpeername() would give for this address."""
    af = socket.AF_INET6 if ":" in text else socket.AF_INET
    return socket.inet_ntop(af, socket.inet_pton(af, text)).encode()


# -- the reference model ------------------------------------------------------------------


class RefError(Exception):
    pass


PORT = re.compile(rb"0|[1-9][0-9]{0,4}")


def ref_address(text: bytes, version: int) -> bytes:
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise RefError("address") from None
    if ip.version != version or "%" in text.decode():
        raise RefError("family")
    af = socket.AF_INET if version == 4 else socket.AF_INET6
    return socket.inet_ntop(af, ip.packed).encode()


def ref_port(text: bytes) -> int:
    if not PORT.fullmatch(text) or int(text) > 65535:
        raise RefError("port")
    return int(text)


Parsed = tuple[int, bytes | None, int, bytes | None, int]


def ref_parse(data: bytes) -> Parsed | None:
    """Whole headers only: a tuple, RefError, or None when the header is not all there."""
    if b"PROXY".startswith(data) or SIG.startswith(data):
        return None
    if data.startswith(b"PROXY"):
        window = data[:107]
        eol = re.search(rb"\r\n|\r(?!\n)|\n", window)
        if eol is None or (eol.group() == b"\r" and eol.end() == len(window)):
            # no line end yet, or a CR whose LF has not come
            if len(data) < 107:
                return None
            raise RefError("no CRLF within 107 bytes")
        if eol.group() != b"\r\n":
            raise RefError("bare CR or LF")
        end = eol.start()
        line = data[:end]
        parts = line.split(b" ")
        if parts[0] != b"PROXY" or len(parts) < 2:
            raise RefError("signature")
        if parts[1] == b"UNKNOWN":
            return (end + 2, None, 0, None, 0)
        if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
            raise RefError("fields")
        version = 4 if parts[1] == b"TCP4" else 6
        src, dst = ref_address(parts[2], version), ref_address(parts[3], version)
        return (end + 2, src, ref_port(parts[4]), dst, ref_port(parts[5]))
    if data.startswith(SIG):
        if len(data) < 16:
            return None
        ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
        if ver_cmd not in (0x20, 0x21):
            raise RefError("version or command")
        sizes = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
        proxy = ver_cmd == 0x21
        if fam not in sizes or (proxy and fam & 0x0F == 2):
            raise RefError("family")
        if length > 4096 or (proxy and length < sizes[fam]):
            raise RefError("length")
        if len(data) < 16 + length:
            return None
        body = data[16:16 + length]
        # TLVs follow the addresses of PROXY TCP/UNIX; LOCAL and UNSPEC blocks are opaque
        rest = body[sizes[fam]:] if proxy and fam else b""
        while rest:
            if len(rest) < 3 or 3 + struct.unpack_from("!H", rest, 1)[0] > len(rest):
                raise RefError("TLV")
            rest = rest[3 + struct.unpack_from("!H", rest, 1)[0]:]
        if ver_cmd == 0x21 and fam in (0x11, 0x21):
            af, n = (socket.AF_INET, 4) if fam == 0x11 else (socket.AF_INET6, 16)
            sport, dport = struct.unpack_from("!HH", body, 2 * n)
            return (16 + length, socket.inet_ntop(af, body[:n]).encode(), sport,
                    socket.inet_ntop(af, body[n:2 * n]).encode(), dport)
        return (16 + length, None, 0, None, 0)
    raise RefError("signature")


def outcome(fn, data: bytes) -> object:
    try:
        return fn(data)
    except (ProxyProtocolError, RefError):
        return "error"


# -- valid headers ------------------------------------------------------------------------

UNIX_PATHS = b"/run/client.sock".ljust(108, b"\0") + b"/run/proxy.sock".ljust(108, b"\0")

VALID = [
    # (header, expected result)
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
     (47, b"192.168.0.1", 56324, b"192.168.0.11", 443)),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
     (44, b"0.0.0.0", 0, b"255.255.255.255", 65535)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n",
     (40, b"2001:db8::1", 1, b"2001:db8::2", 2)),
    # v1 text is shown back in canonical form, as getpeername() would show it
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::FFFF:10.0.0.1 8080 80\r\n",
     (57, b"2001:db8::1", 8080, canonical("::ffff:10.0.0.1"), 80)),
    (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
     b" 65535 65535\r\n",
     (104, b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
      b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    (b"PROXY UNKNOWN\r\n", (15, None, 0, None, 0)),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", (59, None, 0, None, 0)),
    (v2_inet("192.168.0.1", 56324, "192.168.0.11", 443),
     (28, b"192.168.0.1", 56324, b"192.168.0.11", 443)),
    (v2_inet("2001:db8::1", 1, "::ffff:10.0.0.1", 65535),
     (52, b"2001:db8::1", 1, canonical("::ffff:10.0.0.1"), 65535)),
    (v2_inet("10.1.2.3", 1000, "10.3.2.1", 2000,
             tlv(PP2_TYPE_ALPN, b"h2") + tlv(PP2_TYPE_AUTHORITY, b"example.com")
             + tlv(PP2_TYPE_NOOP, b"")),
     (28 + 5 + 14 + 3, b"10.1.2.3", 1000, b"10.3.2.1", 2000)),
    (v2(0x20, 0x00, b""), (16, None, 0, None, 0)),                           # LOCAL
    (v2(0x20, 0x00, tlv(PP2_TYPE_NOOP, b"x" * 10)), (29, None, 0, None, 0)),  # LOCAL + TLV
    # LOCAL ignores the block it carries, whatever the (defined) family says
    (v2(0x20, 0x11, socket.inet_pton(socket.AF_INET, "1.2.3.4") * 2 + b"\0\1\0\2"),
     (28, None, 0, None, 0)),
    (v2(0x20, 0x22, bytes(36)), (52, None, 0, None, 0)),
    (v2(0x20, 0x11, b""), (16, None, 0, None, 0)),
    (v2(0x20, 0x21, b"\x01\xff\xff"), (19, None, 0, None, 0)),
    (v2(0x20, 0x00, bytes(4096)), (16 + 4096, None, 0, None, 0)),
    (v2(0x21, 0x00, b""), (16, None, 0, None, 0)),                           # PROXY, UNSPEC
    (v2(0x21, 0x00, b"opaque"), (22, None, 0, None, 0)),  # UNSPEC: the block is not TLVs
    (v2(0x21, 0x31, UNIX_PATHS), (232, None, 0, None, 0)),                   # UNIX stream
    (v2(0x21, 0x11, bytes(12) + tlv(0xE0, b"z" * 4081)), (16 + 4096, b"0.0.0.0", 0, b"0.0.0.0", 0)),
    (v2(0x21, 0x31, UNIX_PATHS + tlv(PP2_TYPE_NOOP, b"")), (235, None, 0, None, 0)),
]


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_valid_header(header: bytes, expected: Parsed) -> None:
    assert expected[0] == len(header)
    assert parse(header) == expected
    assert ref_parse(header) == expected


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_data_after_the_header_is_not_consumed(header: bytes, expected: Parsed) -> None:
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    got = parse(header + request)
    assert got == expected
    assert got is not None
    assert (header + request)[got[0]:] == request
    # Bytes that look like another header are the application's, not ours.
    assert parse(header + header) == expected


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_every_truncation_needs_more(header: bytes, expected: Parsed) -> None:
    for k in range(len(header)):
        assert parse(header[:k]) is None, (k, header[:k])
        assert ref_parse(header[:k]) is None, (k, header[:k])


def test_v1_line_of_exactly_107_bytes() -> None:
    head = b"PROXY UNKNOWN "
    line = head + b"x" * (107 - len(head) - 2) + b"\r\n"
    assert len(line) == 107
    assert parse(line) == (107, None, 0, None, 0)
    longer = head + b"x" * (108 - len(head) - 2) + b"\r\n"
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(longer)
    # and no waiting for a CRLF that may only come after 107 bytes
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(longer[:107])
    assert parse(longer[:106]) is None


def test_v1_tcp6_with_ipv4_mapped_addresses_longer_than_107_bytes() -> None:
    addr = b"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    line = b"PROXY TCP6 " + addr + b" " + addr + b" 65535 65535\r\n"
    assert len(line) > 107
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(line)


# -- malformed headers --------------------------------------------------------------------

TCP4 = b"PROXY TCP4 1.2.3.4 5.6.7.8 "
GOOD4 = socket.inet_pton(socket.AF_INET, "1.2.3.4") * 2 + b"\0\1\0\2"

MALFORMED = [
    # (bytes, the reason must match)
    (b"GET / HTTP/1.1\r\n\r\n", "not a PROXY protocol header"),
    (b"PROXI TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad signature"),
    (b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad signature"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
    (b"PROXY TCP4\r\n", "missing fields"),
    (b"PROXY TCP4 1.2.3.4\r\n", "missing fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8\r\n", "missing fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "missing fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "bad destination port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "bad destination port"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "bad source address"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "bad destination address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", "bad source port"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad source address"),
    (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "bad source address"),   # no leading zeros
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad source address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8.9 1 2\r\n", "bad destination address"),
    (b"PROXY TCP4 1.2.3.x 5.6.7.8 1 2\r\n", "bad source address"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "source address is not IPv4"),
    (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "destination address is not IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "source address is not IPv6"),
    (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "destination address is not IPv6"),
    (b"PROXY TCP6 ::1::2 ::1 1 2\r\n", "bad source address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad source address"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "bad source address"),
    (TCP4 + b"65536 2\r\n", "bad source port"),
    (TCP4 + b"1 65536\r\n", "bad destination port"),
    (TCP4 + b"99999 2\r\n", "bad source port"),
    (TCP4 + b"080 2\r\n", "bad source port"),
    (TCP4 + b"00 2\r\n", "bad source port"),
    (TCP4 + b"+80 2\r\n", "bad source port"),
    (TCP4 + b"-1 2\r\n", "bad source port"),
    (TCP4 + b"1 0x50\r\n", "bad destination port"),
    (TCP4 + b"1 2\n", "CRLF"),
    (TCP4 + b"1 2\rX", "CRLF"),
    (TCP4 + b"1 2\r\r\n", "CRLF"),
    (b"PROXY UNKNOWN\n", "CRLF"),
    (b"PROXY UNKNOWN a\nb\r\n", "CRLF"),
    (b"PROXY UNKNOWN a\rb\r\n", "CRLF"),
    (b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n", "107"),
    (SIG[:5] + b"X", "v2: bad signature"),
    (SIG[:11] + b"\r", "v2: bad signature"),
    (v2(0x11, 0x11, GOOD4), "bad version"),
    (v2(0x31, 0x11, GOOD4), "bad version"),
    (v2(0x01, 0x11, GOOD4), "bad version"),
    (v2(0x22, 0x11, GOOD4), "bad command"),
    (v2(0x2F, 0x11, GOOD4), "bad command"),
    (v2(0x21, 0x12, GOOD4), "UDP"),
    (v2(0x21, 0x22, bytes(36)), "UDP"),
    (v2(0x21, 0x32, bytes(216)), "UDP"),
    (v2(0x21, 0x41, GOOD4), "bad address family"),
    (v2(0x21, 0x13, GOOD4), "bad address family"),
    (v2(0x21, 0x10, GOOD4), "bad address family"),
    (v2(0x20, 0x44, b""), "bad address family"),
    (v2(0x21, 0x11, GOOD4[:11]), "length too small"),
    (v2(0x21, 0x11, b""), "length too small"),
    (v2(0x21, 0x21, bytes(35)), "length too small"),
    (v2(0x21, 0x31, bytes(215)), "length too small"),
    (v2(0x21, 0x11, GOOD4 + b"\x01"), "TLV"),                      # header cut short
    (v2(0x21, 0x11, GOOD4 + b"\x01\x00"), "TLV"),
    (v2(0x21, 0x11, GOOD4 + tlv(1, b"h2")[:-1]), "TLV"),          # value overflows
    (v2(0x21, 0x11, GOOD4 + b"\x01\xff\xff"), "TLV"),
    (v2(0x21, 0x21, bytes(36) + tlv(4, b"abc") + b"\x04\x00\x04abc"), "TLV"),
    (v2(0x21, 0x31, UNIX_PATHS + b"\x04\x00"), "TLV"),
    (v2(0x20, 0x00, bytes(4097)), "16 \\+ 4096"),
    (v2(0x21, 0x11, GOOD4 + bytes(4096)), "16 \\+ 4096"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_header_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyProtocolError, match=reason) as info:
        parse(data)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("PROXY")
    assert outcome(ref_parse, data) == "error"


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        (b"G", "not a PROXY"),
        (b"\x16", "not a PROXY"),          # a TLS ClientHello
        (b"\x00", "not a PROXY"),
        (b"p", "not a PROXY"),
        (b"\n", "not a PROXY"),
        (b"PX", "v1: bad signature"),
        (b"PROXY\r", "v1: bad signature"),
        (b"\r\r", "v2: bad signature"),
        (b"\r\n\r\n\x00\r\nQUIX", "v2: bad signature"),
        (SIG + b"\x10", "bad version"),
        (SIG + b"\x23", "bad command"),
        (SIG + b"\x21\x12", "UDP"),
        (SIG + b"\x21\xff", "bad address family"),
        (SIG + b"\x21\x11\x00\x0b", "length too small"),
        # an attacker-chosen length is refused before its bytes are waited for
        (SIG + b"\x21\x11\xff\xff", "16 \\+ 4096"),
        (SIG + b"\x21\x11\x10\x01", "16 \\+ 4096"),
        (b"PROXY X", "unknown protocol"),
        (b"PROXY TCP44", "unknown protocol"),
        (b"PROXY TCP4  ", "bad source address"),
        (b"PROXY TCP4 1.2.3.4:", "not IPv4"),
        (b"PROXY TCP4 1.2.3.4.", "bad source address"),
        (b"PROXY TCP4 1..", "bad source address"),
        (b"PROXY TCP4 .", "bad source address"),
        (b"PROXY TCP4 256", "bad source address"),
        (b"PROXY TCP4 1.2.01", "bad source address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.1000", "bad destination address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", None),
        (b"PROXY TCP4 1.2.3.4 5.6.7.25", None),
        (b"PROXY TCP4 0.0.0.0", None),
        (b"PROXY TCP6 ::ffff:1.2.3.4", None),
        (b"PROXY TCP4 1.2.3.4.5.6.7.8.9.0", "bad source address"),
        (b"PROXY TCP6 g", "bad source address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 6553", None),
        (TCP4 + b"65536", "bad source port"),
        (TCP4 + b"0", None),
        (TCP4 + b"01", "bad source port"),
        (TCP4 + b"1 2 ", "bad destination port"),
    ],
)
def test_early_refusal(prefix: bytes, reason: str | None) -> None:
    """Refused on the bytes so far, without waiting for the rest of the header."""
    if reason is None:  # a control: this prefix can still become a header
        assert parse(prefix) is None
        return
    with pytest.raises(ProxyProtocolError, match=reason):
        parse(prefix)
    # whatever follows, it stays refused
    for tail in (b"", b" 2\r\n", b"\r\n", bytes(64)):
        with pytest.raises(ProxyProtocolError):
            parse(prefix + tail)


def test_parse_takes_bytes_only() -> None:
    with pytest.raises(TypeError):
        parse(bytearray(b"PROXY UNKNOWN\r\n"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse(None)  # type: ignore[arg-type]


# -- building -----------------------------------------------------------------------------


def test_build_v2_layout_matches_the_spec() -> None:
    got = build_v2("192.0.2.1", 51234, "198.51.100.7", 443)
    want = (struct.pack("!12sBBH", SIG, 0x21, 0x11, 12)
            + socket.inet_pton(socket.AF_INET, "192.0.2.1")
            + socket.inet_pton(socket.AF_INET, "198.51.100.7")
            + struct.pack("!HH", 51234, 443))
    assert got == want
    assert got[:12] == bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A,
                              0x51, 0x55, 0x49, 0x54, 0x0A])
    got6 = build_v2(b"2001:db8::1", 1, b"2001:db8::2", 65535)
    want6 = (struct.pack("!12sBBH", SIG, 0x21, 0x21, 36)
             + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
             + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
             + struct.pack("!HH", 1, 65535))
    assert got6 == want6
    assert build_v2(None, 0, None, 0) == struct.pack("!12sBBH", SIG, 0x20, 0x00, 0)


def test_build_v1() -> None:
    assert build_v1("192.168.0.1", 56324, "192.168.0.11", 443) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert build_v1(b"2001:DB8:0::1", 0, b"::1", 65535) == b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n"
    assert build_v1(None, 0, None, 0) == b"PROXY UNKNOWN\r\n"
    # dst without src: the client is unknown, so is the connection
    assert build_v1(None, 0, "10.0.0.1", 80) == b"PROXY UNKNOWN\r\n"


def test_build_mixed_families_maps_ipv4_into_ipv6() -> None:
    assert build_v1("10.0.0.1", 1, "::1", 2) == b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n"
    assert parse(build_v2("::1", 1, "10.0.0.1", 2)) == (52, b"::1", 1, b"::ffff:10.0.0.1", 2)


def test_build_drops_an_ipv6_zone() -> None:
    assert build_v1("fe80::1%eth0", 1, "fe80::2%2", 2) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"


@pytest.mark.parametrize("build", [build_v1, build_v2])
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("1.2.3.4", 65536, "5.6.7.8", 1), ValueError),
        (("1.2.3.4", 1, "5.6.7.8", -1), ValueError),
        (("1.2.3.4", True, "5.6.7.8", 1), ValueError),
        (("1.2.3.4", 1.0, "5.6.7.8", 1), ValueError),
        (("1.2.3.4", 2**70, "5.6.7.8", 1), ValueError),
        (("1.2.3.400", 1, "5.6.7.8", 1), ValueError),
        (("1.2.3.4%eth0", 1, "5.6.7.8", 1), ValueError),
        (("1.2.3.4", 1, "localhost", 1), ValueError),
        (("1.2.3.4\0", 1, "5.6.7.8", 1), ValueError),
        (("::1" + "0" * 60, 1, "::1", 1), ValueError),
        (("1.2.3.4", 1, "", 1), ValueError),
        (("1.2.3.4", 1, "é", 1), ValueError),
        (("1.2.3.4", 1, None, 1), ValueError),
        ((1234, 1, "5.6.7.8", 1), TypeError),
    ],
)
def test_build_refuses_bad_arguments(build, args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error):
        build(*args)


# -- properties ---------------------------------------------------------------------------

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@PROPERTY
@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports,
       st.sampled_from([build_v1, build_v2]), st.booleans(), st.binary(max_size=64))
@example(("0.0.0.0", "255.255.255.255"), 0, 65535, build_v1, False, b"")
@example(("::", "::ffff:0.0.0.1"), 0, 65535, build_v2, True, b"PROXY")
def test_build_parse_round_trip(addrs: tuple[str, str], sport: int, dport: int, build,
                                as_bytes: bool, tail: bytes) -> None:
    src, dst = addrs
    header = build(src.encode() if as_bytes else src, sport, dst.encode() if as_bytes else dst,
                   dport)
    expected = (len(header), canonical(src), sport, canonical(dst), dport)
    assert parse(header) == expected
    assert parse(header + tail) == expected
    assert ref_parse(header) == expected
    for k in range(len(header)):
        assert parse(header[:k]) is None


def check_invariants(data: bytes) -> None:
    """What parse promises for any input; the fuzz target checks the same."""
    try:
        got = parse(data)
    except ProxyProtocolError as exc:
        assert str(exc).startswith("PROXY")
        # refused stays refused, whatever comes next
        for tail in (b"\r\n", b"0", b" ", bytes(20)):
            with pytest.raises(ProxyProtocolError):
                parse(data + tail)
        assert outcome(ref_parse, data) in ("error", None)
        return
    if got is None:
        assert ref_parse(data) is None
        for k in range(len(data)):
            assert parse(data[:k]) is None
        return
    consumed, src, sport, dst, dport = got
    assert type(consumed) is int and 0 < consumed <= len(data)
    assert consumed <= (107 if data[0] == ord("P") else 16 + 4096)
    assert (src is None) == (dst is None)
    assert 0 <= sport <= 65535 and 0 <= dport <= 65535
    if src is None:
        assert sport == dport == 0
    else:
        assert src == canonical(src.decode()) and dst == canonical(dst.decode())
    assert ref_parse(data) == got
    assert parse(data[:consumed]) == got
    assert parse(data + b"extra") == got
    for k in range(consumed):
        assert parse(data[:k]) is None


# Headers with a mutation: how random input gets past the first few bytes.
pieces = st.sampled_from([
    b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"1.2.3.4 ", b"::1 ", b"::ffff:1.2.3.4 ",
    b"0 ", b"65535 ", b"65536", b"80", b"\r\n", b"\r", b"\n", b" ", b"01", SIG, b"\x21",
    b"\x20", b"\x11", b"\x21\x11", b"\x00\x0c", b"\x00\x24", b"\x00\x0f", b"\x01\x00\x01",
])


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    header = draw(st.one_of(st.sampled_from([h for h, _ in VALID]),
                            st.lists(pieces, max_size=8).map(b"".join)))
    ops = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200), st.binary(max_size=3)),
                        max_size=3))
    for op, at, blob in ops:
        at = at % (len(header) + 1)
        if op == 0:
            header = header[:at] + blob + header[at:]
        elif op == 1:
            header = header[:at] + header[at + len(blob) + 1:]
        elif op == 2:
            header = header[:at] + blob + header[at + len(blob):]
        else:
            header = header[:at]
    return header


@PROPERTY
@given(st.one_of(st.binary(max_size=128), mutated_headers()))
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r")
@example(b"PROXY UNKNOWN " + b"x" * 92 + b"\r")
@example(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n")
@example(SIG + b"\x21\x11\x00\x0c" + bytes(12))
def test_parse_never_crashes_and_agrees_with_the_model(data: bytes) -> None:
    check_invariants(data)


@PROPERTY
@given(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]),
       st.lists(st.one_of(ipv4, ipv6, st.sampled_from(
           ["::FFFF:1.2.3.4", "1.2.3.04", "01.2.3.4", "1::2::3", "0:0:0:0:0:0:0:0", "::", "", " ",
            "fe80::1%1", "1.2.3", "0x1.2.3.4", "12345::", "1:2:3:4:5:6:7::", "::1.2.3.4.5"])),
           min_size=2, max_size=2),
       st.lists(st.one_of(ports.map(str), st.sampled_from(
           ["65536", "00", "08", "+1", "-0", " 1", "1 ", "", "99999", "0x10"])),
           min_size=0, max_size=3))
def test_v1_lines_agree_with_the_model(proto: str, addrs: list[str], port_texts: list[str]) -> None:
    line = " ".join(["PROXY", proto, *addrs, *port_texts]).encode() + b"\r\n"
    assert outcome(parse, line) == outcome(ref_parse, line)
    check_invariants(line)
