"""Property tests: RequestParser/ResponseParser against the `llhttp` PyPI binding.

The binding (the same llhttp release, no lenient flag set) is the reference.
For valid messages our parser must report exactly what the binding reports,
however the bytes are split into feeds. For random or mutated bytes: whenever
the binding rejects, ours must raise HttpParseError too, and nothing but
HttpParseError may ever come out of ours.

Ours is stricter than llhttp on purpose. The only reasons it may refuse a
message that the binding accepts are the rules in OUR_REQUEST_RULES and
OUR_RESPONSE_RULES:
  - Host: required in HTTP/1.1, at most one, uri-host[:port] characters only;
  - Transfer-Encoding: at most one field, exactly `chunked`, never in HTTP/1.0;
  - Content-Length at most 2**63 - 1;
  - one space between method and target;
  - no HTTP/0.9 request lines, no HTTP/2.0 request lines or PRI preface;
  - HTTP only: no RTSP/ or ICE/ request or status lines;
  - no CONNECT; Expect: only 100-continue;
  - request targets: origin-form, absolute-form (http/https) or `*` for OPTIONS;
  - limits: target length (414), head bytes and header count (431);
  - trailer sections count against the head limit;
  - responses: no 101 / upgrade the proxy did not ask for, status 100-999 only,
    HTTP/1.x only.
"""

from __future__ import annotations

import itertools
import string
from typing import Any

import llhttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastproxy._http import HttpParseError, MessageHead, RequestParser, ResponseParser

PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FAST_PROPERTY = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

OUR_REQUEST_RULES = {
    "missing Host header",
    "more than one Host header",
    "invalid Host header",
    "unsupported transfer coding",
    "a request body must be chunked last (RFC 9112 6.3)",
    "more than one Transfer-Encoding header",
    "Transfer-Encoding in an HTTP/1.0 request",
    "HTTP/0.9 is not supported",
    "HTTP version not supported",
    "Pause on PRI/Upgrade",  # llhttp pauses on the HTTP/2 preface; the binding does not raise
    "protocol is not HTTP",
    "CONNECT is not supported",
    "unsupported expectation",
    "empty request target",
    "malformed request target",
    "asterisk-form target is only for OPTIONS",
    "method not implemented",
    "empty header name",
    "more than one space in the request line",
    "Content-Length too large",
    "request target too long",
    "request header section too large",
    "trailer section too large",
    "too many header fields",
}
OUR_RESPONSE_RULES = {
    "upstream switched protocols without a request for it",
    "upstream answered with an unsupported HTTP version",
    "upstream sent an invalid status code",
    "protocol is not HTTP",
    "Content-Length too large",
    "response head too large",
    "trailer section too large",
    "too many header fields",
}

# --- the reference: the llhttp binding --------------------------------------


class _Reference:
    """Collects what the binding reports, one dict per message."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self._field = b""
        self._value = b""
        self._in_head = False

    def on_message_begin(self) -> None:
        self.messages.append(
            {"start": b"", "headers": [], "body": b"", "complete": False}
        )
        self._in_head = True

    def on_url(self, data: memoryview) -> None:
        self.messages[-1]["start"] += bytes(data)

    def on_status(self, data: memoryview) -> None:
        self.messages[-1]["start"] += bytes(data)

    def on_header_field(self, data: memoryview) -> None:
        self._field += bytes(data)

    def on_header_value(self, data: memoryview) -> None:
        self._value += bytes(data)

    def on_header_value_complete(self) -> None:
        if self._in_head:  # trailer fields are not part of the head
            # llhttp hands over trailing whitespace; the field value excludes it (RFC 9110 §5.5)
            self.messages[-1]["headers"].append((self._field, self._value.rstrip(b" \t")))
        self._field = self._value = b""

    def on_headers_complete(self) -> None:
        self._in_head = False
        msg = self.messages[-1]
        msg["method"] = self.method.encode() if self.method else None  # type: ignore[attr-defined]
        msg["minor"] = self.minor  # type: ignore[attr-defined]
        msg["keep_alive"] = self.should_keep_alive  # type: ignore[attr-defined]
        status = self.status  # type: ignore[attr-defined]
        msg["status"] = status if isinstance(self, llhttp.Response) else 0

    def on_body(self, data: memoryview) -> None:
        self.messages[-1]["body"] += bytes(data)

    def on_message_complete(self) -> None:
        self.messages[-1]["complete"] = True


class ReferenceRequest(_Reference, llhttp.Request):
    pass


class ReferenceResponse(_Reference, llhttp.Response):
    pass


def reference(data: bytes, *, response: bool = False, eof: bool = False) -> tuple[
        _Reference, str | None]:
    """Run the binding over `data` in one go; return it and its error (None if accepted)."""
    ref: _Reference = ReferenceResponse() if response else ReferenceRequest()
    try:
        ref.execute(data)  # type: ignore[attr-defined]
        if eof:
            ref.finish()  # type: ignore[attr-defined]
    except llhttp.Error as e:
        return ref, str(e) or type(e).__name__
    return ref, None


# --- ours --------------------------------------------------------------------


class Ours:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.heads: list[MessageHead] = []

    def on_head(self, head: MessageHead) -> None:
        self.heads.append(head)
        self.messages.append({
            "start": head.target if head.is_request else head.reason,
            "headers": head.headers(),
            "body": b"",
            "complete": False,
            "method": head.method,
            "minor": head.http_minor,
            "keep_alive": head.keep_alive,
            "status": head.status,
        })

    def on_body(self, chunk: bytes | memoryview) -> None:
        self.messages[-1]["body"] += bytes(chunk)

    def on_message_complete(self) -> None:
        self.messages[-1]["complete"] = True


def run_ours(data: bytes, cuts: list[int], *, response: bool = False,
             eof: bool = False) -> tuple[Ours, HttpParseError | None]:
    """Feed `data` cut at `cuts`, re-feeding after each pause, the way the proxy does."""
    ours = Ours()
    parser: RequestParser | ResponseParser = (
        ResponseParser(ours) if response else RequestParser(ours)
    )
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            piece = data[a:b]
            while piece:
                n = parser.feed(piece)
                assert 0 < n <= len(piece)
                piece = piece[n:]
        if eof and parser.mid_message:
            parser.feed_eof()
    except HttpParseError as e:
        assert isinstance(e.status, int) and 400 <= e.status <= 599
        assert isinstance(e.reason, str) and e.reason
        return ours, e
    return ours, None


def comparable(messages: list[dict[str, Any]], *, only_complete: bool = True) -> list[dict]:
    keys = ("start", "headers", "body", "method", "minor", "keep_alive", "status")
    return [
        {k: m.get(k) for k in keys} for m in messages if m["complete"] or not only_complete
    ]


# --- generators --------------------------------------------------------------

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
# names llhttp or our parser give a meaning to: generated only on purpose
SPECIAL = {
    "host", "content-length", "transfer-encoding", "connection", "proxy-connection",
    "upgrade", "expect",
}
METHODS = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "PROPFIND",
    "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE", "REPORT",
    "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE",
    "ACL", "BIND", "REBIND", "UNBIND", "LINK", "UNLINK", "MKCALENDAR", "QUERY",
]
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%"

names = st.text(TCHAR, min_size=1, max_size=16).filter(lambda n: n.lower() not in SPECIAL)
# visible ASCII with spaces inside; optional whitespace around it (not part of the value)
values = st.builds(
    lambda lead, body, trail: lead + body + trail,
    st.sampled_from(["", " ", "  ", "\t"]),
    st.text(VCHAR + " ", max_size=24).map(lambda v: v.strip(" ")),
    st.sampled_from(["", "", " ", " \t "]),
)
hosts = st.builds(
    lambda labels, port: ".".join(labels) + port,
    st.lists(st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=8),
             min_size=1, max_size=3),
    st.sampled_from(["", ":80", ":8080", ":65535"]),
)
origin_targets = st.builds(
    lambda path, query: "/" + path + query,
    st.text(PATH_CHARS, max_size=30),
    st.one_of(st.just(""), st.text(PATH_CHARS + "?", max_size=20).map(lambda q: "?" + q)),
)
targets = st.one_of(
    origin_targets,
    origin_targets,
    st.builds(lambda scheme, host, path: f"{scheme}://{host}{path}",
              st.sampled_from(["http", "https"]), hosts, origin_targets),
)


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` in random chunks, hex in either case, optional extensions and trailers."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=6))))
    bounds = [0, *cuts, len(body)]
    out = []
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        size = format(b - a, "x")
        if draw(st.booleans()):
            size = size.upper()
        ext = draw(st.sampled_from(["", "", ";a=b", ";name", ';q="x y"']))
        out.append(f"{size}{ext}\r\n".encode() + body[a:b] + b"\r\n")
    out.append(b"0\r\n")
    for name, value in draw(st.lists(st.tuples(names, values), max_size=2)):
        out.append(f"{name}:{value}\r\n".encode())
    out.append(b"\r\n")
    return b"".join(out)


@st.composite
def request(draw: st.DrawFn, last: bool = True) -> bytes:
    minor = draw(st.sampled_from([1, 1, 1, 0]))
    method = draw(st.sampled_from(METHODS))
    target = draw(targets)
    if method == "OPTIONS" and draw(st.booleans()):
        target = "*"
    fields = [(n, v) for n, v in draw(st.lists(st.tuples(names, values), max_size=8))]
    if minor == 1 or draw(st.booleans()):
        fields.append(("Host", draw(st.sampled_from(["", " "])) + draw(hosts)))
    kind = draw(st.sampled_from(["none", "length", "chunked"] if minor else ["none", "length"]))
    body = draw(st.binary(max_size=80))
    tail = b""
    if kind == "length":
        fields.append((draw(st.sampled_from(["Content-Length", "content-length"])),
                       " " + str(len(body))))
        tail = body
    elif kind == "chunked":
        fields.append((draw(st.sampled_from(["Transfer-Encoding", "transfer-encoding"])),
                       draw(st.sampled_from([" chunked", " Chunked", "chunked "]))))
        tail = draw(chunked_body(body))
    if kind != "none" and minor == 1 and draw(st.booleans()):
        fields.append(("Expect", " 100-continue"))
    if not last and minor == 0:
        fields.append(("Connection", " keep-alive"))
    elif draw(st.booleans()):
        options = ["keep-alive", "Keep-Alive", "foo, keep-alive", "x-custom"]
        if last:
            options += ["close", "foo, close"]
        fields.append(("Connection", " " + draw(st.sampled_from(options))))
    fields = draw(st.permutations(fields))
    head = f"{method} {target} HTTP/1.{minor}\r\n" + "".join(f"{n}:{v}\r\n" for n, v in fields)
    return head.encode() + b"\r\n" + tail


@st.composite
def pipeline(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(1, 4))
    return b"".join(draw(request(last=i == n - 1)) for i in range(n))


@st.composite
def response(draw: st.DrawFn, last: bool = True) -> bytes:
    minor = draw(st.sampled_from([1, 1, 1, 0]))
    status = draw(st.one_of(st.integers(200, 599), st.sampled_from([100, 102, 103, 204, 304])))
    reason = draw(st.text(VCHAR + " ", max_size=20).map(lambda r: r.strip(" ")))
    fields = [(n, v) for n, v in draw(st.lists(st.tuples(names, values), max_size=8))]
    bodyless = status < 200 or status in (204, 304)
    kinds = ["length", "chunked"] if minor else ["length"]
    if last:
        kinds.append("close")
    kind = "none" if bodyless else draw(st.sampled_from(kinds))
    body = draw(st.binary(max_size=80))
    tail = b""
    if kind == "length":
        fields.append(("Content-Length", " " + str(len(body))))
        tail = body
    elif kind == "chunked":
        fields.append(("Transfer-Encoding", " chunked"))
        tail = draw(chunked_body(body))
    elif kind == "close":
        tail = body
    if not last and minor == 0:
        fields.append(("Connection", " keep-alive"))
    elif last and draw(st.booleans()):
        fields.append(("Connection", draw(st.sampled_from([" close", " keep-alive"]))))
    fields = draw(st.permutations(fields))
    head = f"HTTP/1.{minor} {status} {reason}\r\n" + "".join(f"{n}:{v}\r\n" for n, v in fields)
    return head.encode() + b"\r\n" + tail


@st.composite
def response_stream(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(1, 4))
    return b"".join(draw(response(last=i == n - 1)) for i in range(n))


cut_points = st.lists(st.integers(0, 10_000), max_size=8)

INTERESTING = list(b"\r\n \t:;,/\x00\x7f\x80\xff0123456789aAzZ-")
mutations = st.lists(
    st.tuples(
        st.integers(0, 10_000),
        st.sampled_from(["replace", "insert", "delete", "duplicate"]),
        st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, edits: list[tuple[int, str, int]]) -> bytes:
    buf = bytearray(data)
    for pos, op, byte in edits:
        i = pos % (len(buf) + 1)
        if op == "insert" or not buf:
            buf.insert(i, byte)
        elif op == "replace":
            buf[min(i, len(buf) - 1)] = byte
        elif op == "delete":
            del buf[min(i, len(buf) - 1)]
        else:  # duplicate a slice: repeated headers, lines, chunks
            j = min(i, len(buf) - 1)
            buf[j:j] = buf[j:j + 1 + byte % 24]
    return bytes(buf)


# --- valid messages: same results as the reference ---------------------------


@PROPERTY
@given(data=pipeline(), cuts=cut_points)
def test_valid_requests_match_reference(data: bytes, cuts: list[int]) -> None:
    ref, ref_error = reference(data)
    assert ref_error is None, f"generator made a request llhttp refuses: {ref_error}"
    assert all(m["complete"] for m in ref.messages)
    ours, error = run_ours(data, cuts)
    assert error is None, (error.status, error.reason)
    assert len(ours.messages) == len(ref.messages)
    assert comparable(ours.messages) == comparable(ref.messages)
    for head in ours.heads:
        assert head.host == head.get(b"host")
        length = head.get(b"content-length")
        assert head.content_length == (int(length) if length is not None else -1)


@PROPERTY
@given(data=response_stream(), cuts=cut_points)
def test_valid_responses_match_reference(data: bytes, cuts: list[int]) -> None:
    ref, ref_error = reference(data, response=True, eof=True)
    assert ref_error is None, f"generator made a response llhttp refuses: {ref_error}"
    assert all(m["complete"] for m in ref.messages)
    ours, error = run_ours(data, cuts, response=True, eof=True)
    assert error is None, (error.status, error.reason)
    assert len(ours.messages) == len(ref.messages)
    assert comparable(ours.messages) == comparable(ref.messages)
    for head in ours.heads:
        assert not head.is_request
        assert head.method is None


# --- invalid bytes: ours rejects whatever the reference rejects --------------


def check_rejection(data: bytes, cuts: list[int], *, response: bool) -> None:
    ref, ref_error = reference(data, response=response)
    ours, error = run_ours(data, cuts, response=response)
    event("reference refuses" if ref_error else "reference accepts")
    event("ours refuses" if error else "ours accepts")
    if ref_error is not None:
        assert error is not None, f"llhttp refuses ({ref_error}) but ours accepted {data!r}"
        assert error.status == 502 if response else 400 <= error.status < 600
        return
    if error is None:
        # both accept: whole messages must agree (the reference may have stopped at
        # an upgrade, after which it reads nothing; ours reads on)
        n = len([m for m in ref.messages if m["complete"]])
        assert comparable(ours.messages)[:n] == comparable(ref.messages)
        return
    # only ours refuses: it must be one of our own, stricter rules, or data after a
    # point where the reference stopped reading (upgrade / h2 preface).
    rules = OUR_RESPONSE_RULES if response else OUR_REQUEST_RULES
    event(f"only ours refuses: {error.reason}")
    if error.reason not in rules:
        upgraded = ref.is_upgrading or ref.is_paused  # type: ignore[attr-defined]
        assert upgraded, f"only ours refuses {data!r}: {error.status} {error.reason}"


@PROPERTY
@given(data=pipeline(), edits=mutations, cuts=cut_points)
def test_mutated_requests_rejected_when_reference_rejects(
    data: bytes, edits: list[tuple[int, str, int]], cuts: list[int]
) -> None:
    check_rejection(mutate(data, edits), cuts, response=False)


@PROPERTY
@given(data=response_stream(), edits=mutations, cuts=cut_points)
def test_mutated_responses_rejected_when_reference_rejects(
    data: bytes, edits: list[tuple[int, str, int]], cuts: list[int]
) -> None:
    check_rejection(mutate(data, edits), cuts, response=True)


@FAST_PROPERTY
@given(
    prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nHost: h\r\n",
                            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"]),
    data=st.binary(max_size=200),
    cuts=cut_points,
)
def test_random_bytes_requests(prefix: bytes, data: bytes, cuts: list[int]) -> None:
    check_rejection(prefix + data, cuts, response=False)


@FAST_PROPERTY
@given(
    prefix=st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n",
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]),
    data=st.binary(max_size=200),
    cuts=cut_points,
)
def test_random_bytes_responses(prefix: bytes, data: bytes, cuts: list[int]) -> None:
    check_rejection(prefix + data, cuts, response=True)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / RTSP/1.0\r\nHost: h\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nExpect: later\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n",
    ],
)
def test_examples_of_our_stricter_rules(data: bytes) -> None:
    """Each is accepted by llhttp and refused by ours with one of our own reasons."""
    _, ref_error = reference(data)
    assert ref_error is None
    _, error = run_ours(data, [])
    assert error is not None
    assert error.reason in OUR_REQUEST_RULES
