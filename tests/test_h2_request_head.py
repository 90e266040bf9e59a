"""request_head in C (fastproxy._h2) against a reference model: the Python version
it replaced, kept here as the model (regular expressions, one check at a time).

Both must give the same head, chunked flag and length, or both refuse with the
same reason, for requests built from the fields and values that matter to RFC
9113 8.2/8.3 (pseudo-headers in any order, repeated, unknown; upper case and
odd bytes in names; blanks, NUL, CR, LF in values; connection-specific fields;
host against :authority; content-length forms; CONNECT; cookies).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._h2 import Malformed, request_head

_PSEUDO = frozenset((b":method", b":path", b":scheme", b":authority"))
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_VISIBLE = re.compile(rb"[\x21-\x7e]+")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_FORBIDDEN = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade"))


def model_request_head(headers: list[tuple[bytes, bytes]], has_body: bool
                 ) -> tuple[bytes, bool, int]:
    """A stream's request as an HTTP/1.1 head: (head, body chunked, content length or
    -1). Raises Malformed for what RFC 9113 8.2 and 8.3 forbid."""
    method = path = authority = scheme = host = None
    lines = []
    cookies = []
    length = -1
    regular = False
    for name, value in headers:
        if _BAD_VALUE.search(value) is not None:
            raise Malformed(f"bad value of {name!r}")
        if name[:1] == b":":
            if regular or name not in _PSEUDO:
                raise Malformed(f"pseudo-header {name!r} misplaced or unknown")
            if name == b":method":
                if method is not None:
                    raise Malformed("two :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise Malformed("two :path")
                path = value
            elif name == b":authority":
                if authority is not None:
                    raise Malformed("two :authority")
                authority = value
            else:
                if scheme is not None:
                    raise Malformed("two :scheme")
                scheme = value
            continue
        regular = True
        if _NAME.fullmatch(name) is None:
            raise Malformed(f"bad field name {name!r}")
        if name in _FORBIDDEN or (name == b"te" and value != b"trailers"):
            raise Malformed(f"connection-specific field {name.decode()}")
        if name == b"cookie":
            cookies.append(value)  # split by the client (RFC 9113 8.2.3): joined again
            continue
        if name == b"host":
            if host is not None:
                raise Malformed("two host fields")
            host = value
            continue
        if name == b"content-length":
            if _DIGITS.fullmatch(value) is None or (length >= 0 and int(value) != length):
                raise Malformed("bad content-length")
            length = int(value)
        lines.append(b"%s: %s\r\n" % (name, value))
    if method is None or _TOKEN.fullmatch(method) is None:
        raise Malformed("no valid :method")
    if authority is not None and host is not None and authority != host:
        raise Malformed(":authority and host differ")
    authority = authority if authority is not None else host
    if method == b"CONNECT":
        if path is not None or scheme is not None or authority is None:
            raise Malformed("CONNECT takes :authority only")
        path = authority
    elif path is None or scheme is None or _VISIBLE.fullmatch(path) is None:
        raise Malformed("no valid :path and :scheme")
    if authority is not None and _VISIBLE.fullmatch(authority) is None:
        raise Malformed("bad :authority")
    if cookies:
        lines.append(b"cookie: %s\r\n" % b"; ".join(cookies))
    chunked = has_body and length < 0
    start = b"%s %s HTTP/1.1\r\n" % (method, path)
    host_line = b"Host: %s\r\n" % authority if authority is not None else b""
    tail = b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n"
    return b"".join((start, host_line, *lines, tail)), chunked, length


def outcome(fn, headers: list[tuple[bytes, bytes]], has_body: bool) -> object:
    try:
        return fn(headers, has_body)
    except Malformed as e:
        return ("malformed", str(e))


GET = [(b":method", b"GET"), (b":path", b"/a?b=1"), (b":scheme", b"https"),
       (b":authority", b"site.example")]


@pytest.mark.parametrize(("headers", "has_body", "expected"), [
    (GET, False, (b"GET /a?b=1 HTTP/1.1\r\nHost: site.example\r\n\r\n", False, -1)),
    ([*GET, (b"cookie", b"a=1"), (b"x-a", b"v"), (b"cookie", b"b=2")], True,
     (b"GET /a?b=1 HTTP/1.1\r\nHost: site.example\r\nx-a: v\r\ncookie: a=1; b=2\r\n"
      b"Transfer-Encoding: chunked\r\n\r\n", True, -1)),
    ([*GET, (b"content-length", b"5")], True,
     (b"GET /a?b=1 HTTP/1.1\r\nHost: site.example\r\ncontent-length: 5\r\n\r\n", False, 5)),
    ([(b":method", b"CONNECT"), (b":authority", b"h.example:443")], True,
     (b"CONNECT h.example:443 HTTP/1.1\r\nHost: h.example:443\r\n"
      b"Transfer-Encoding: chunked\r\n\r\n", True, -1)),
])
def test_examples(headers: list[tuple[bytes, bytes]], has_body: bool, expected: tuple) -> None:
    assert request_head(headers, has_body) == expected
    assert model_request_head(headers, has_body) == expected


@pytest.mark.parametrize("extra", [
    [(b"X-Upper", b"1")], [(b"connection", b"close")], [(b"te", b"gzip")],
    [(b"x-pad", b" padded")], [(b"x-nul", b"a\x00b")], [(b":protocol", b"websocket")],
    [(b"host", b"other.example")], [(b"content-length", b"+5")],
    [(b"content-length", b"5"), (b"content-length", b"6")], [(b"", b"v")],
    [(b":method", b"POST")],
])
def test_refusals(extra: list[tuple[bytes, bytes]]) -> None:
    headers = GET + extra
    with pytest.raises(Malformed) as info:
        request_head(headers, False)
    assert outcome(model_request_head, headers, False) == ("malformed", str(info.value))


NAMES = st.sampled_from([b":method", b":path", b":scheme", b":authority", b":protocol",
                         b"host", b"cookie", b"content-length", b"te", b"connection",
                         b"upgrade", b"x-a", b"X-A", b"x a", b"", b"x\x00", b"accept"])
VALUES = st.one_of(
    st.sampled_from([b"GET", b"POST", b"CONNECT", b"G T", b"/", b"/a b", b"https",
                     b"site.example", b"other", b"trailers", b"5", b"05", b"6", b"",
                     b"1234567890123456789", b" x", b"x\t", b"a\rb", b"\x7f", b"\xff"]),
    st.binary(max_size=8))
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=10)


@settings(max_examples=3000, deadline=None)
@given(start=st.booleans(), fields=FIELDS, has_body=st.booleans())
def test_same_as_the_model(start: bool, fields: list[tuple[bytes, bytes]],
                           has_body: bool) -> None:
    headers = (GET if start else []) + fields
    assert outcome(request_head, headers, has_body) == outcome(model_request_head, headers,
                                                               has_body)
