"""atheris fuzz target: RequestParser, ResponseParser and the header rewriter.

Every input is fed to both parsers, cut into pieces at points derived from the
input itself (so a crash reproduces from its file alone). Each head that
parses is rewritten with build_request_head / build_response_head, and the
result must parse again, with the same framing. HttpParseError is the only
exception allowed; anything else, or a broken invariant, is a crash.

    python tests/fuzz/fuzz_parser.py -max_total_time=20
    python tests/fuzz/fuzz_parser.py crash-<sha1>        # replay one input

Without corpus arguments it reads the seeds in tests/fuzz/corpus/parser/ and keeps what
it learns in build/fuzz-corpus/ (ignored by git); without -dict it uses
tests/fuzz/http.dict.

The compiled extensions are not built with coverage instrumentation, so
libFuzzer is guided only by the Python branches below (outcome classes:
error statuses, body kinds, message counts) and by the dictionary.
"""

from __future__ import annotations

import itertools
import sys
import zlib
from pathlib import Path

import atheris

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
from fastproxy._rewrite import (
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_PASS,
    build_request_head,
    build_response_head,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus" / "parser"
DICT = HERE / "http.dict"
WORK_CORPUS = ROOT / "build" / "fuzz-corpus"

BIG = {"max_header_bytes": 1 << 20, "max_header_count": 100_000}


class Sink:
    """Handler that records outcomes and checks invariants as events arrive."""

    def __init__(self, response: bool, head_request: bool) -> None:
        self.response = response
        self.head_request = head_request
        self.heads: list[MessageHead] = []
        self.body = 0
        self.messages = 0

    def on_head(self, head: MessageHead) -> None:
        check_head(head, self.response)
        if self.response:
            rewrite_response(head, self.head_request)
        else:
            rewrite_request(head)
        self.heads.append(head)
        self.body = 0

    def on_body(self, chunk: bytes | memoryview) -> None:
        if not isinstance(chunk, (bytes, memoryview)):
            raise AssertionError(f"body chunk of type {type(chunk)}")
        if len(chunk) == 0:
            raise AssertionError("empty body chunk")
        if not self.heads:
            raise AssertionError("body before any head")
        self.body += len(chunk)

    def on_message_complete(self) -> None:
        if not self.heads:
            raise AssertionError("message complete before any head")
        head = self.heads[-1]
        if head.body_kind == BODY_LENGTH and self.body != head.content_length:
            raise AssertionError(f"body {self.body} bytes, Content-Length {head.content_length}")
        if head.body_kind == BODY_NONE and self.body:
            raise AssertionError("body delivered for a message without one")
        self.messages += 1


def check_head(head: MessageHead, response: bool) -> None:
    headers = head.headers()
    if len(headers) != head.header_count:
        raise AssertionError("header_count does not match headers()")
    for name, value in headers:
        if not name:
            raise AssertionError("empty header name")
        if value != value.strip(b" \t"):
            raise AssertionError(f"untrimmed value {value!r}")
        if head.get(name.lower()) is None or value not in head.get_all(name.lower()):
            raise AssertionError(f"get()/get_all() miss {name!r}")
    if head.is_request == response:
        raise AssertionError("is_request is wrong")
    if head.body_kind not in (BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE):
        raise AssertionError(f"body_kind {head.body_kind}")
    if head.body_kind == BODY_LENGTH and head.content_length < 0:
        raise AssertionError(f"negative content_length {head.content_length}")
    if head.http_minor not in (0, 1):
        raise AssertionError(f"http_minor {head.http_minor}")
    if response:
        if not 100 <= head.status <= 999 or head.reason is None:
            raise AssertionError("bad status/reason")
    else:
        if not head.method or not head.target:
            raise AssertionError("request without method or target")
        if head.body_kind == BODY_UNTIL_CLOSE:
            raise AssertionError("close-delimited request body")
        if head.http_minor == 1 and head.host is None:
            raise AssertionError("HTTP/1.1 request without Host accepted")


class _Heads:
    def __init__(self) -> None:
        self.heads: list[MessageHead] = []

    def on_head(self, head: MessageHead) -> None:
        self.heads.append(head)

    def on_body(self, chunk: bytes | memoryview) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


def reparse(data: bytes, response: bool, head_request: bool = False) -> MessageHead:
    sink = _Heads()
    parser: RequestParser | ResponseParser
    if response:
        parser = ResponseParser(sink, **BIG)
        parser.expect_no_body(head_request)
    else:
        parser = RequestParser(sink, max_line_bytes=1 << 20, **BIG)
    try:
        parser.feed(data)
    except HttpParseError as e:
        raise AssertionError(f"rewritten head does not parse ({e.reason}): {data!r}") from e
    if len(sink.heads) != 1:
        raise AssertionError(f"rewritten head is not one complete head: {data!r}")
    return sink.heads[0]


def rewrite_request(head: MessageHead) -> None:
    host = head.host if head.host is not None else b"fuzz.example"
    out = build_request_head(head, head.target, host, b"192.0.2.1", b"http", b"1.1 fuzz")
    again = reparse(out, response=False)
    if (again.method, again.target, again.body_kind) != (head.method, head.target, head.body_kind):
        raise AssertionError(f"request line or framing changed: {out!r}")
    if again.content_length != head.content_length:
        raise AssertionError(f"Content-Length changed: {out!r}")


def rewrite_response(head: MessageHead, head_request: bool) -> None:
    kind = head.body_kind
    for framing, keep, minor in ((FRAME_PASS, True, 1), (FRAME_CHUNKED, False, 1),
                                 (FRAME_CLOSE, False, 0)):
        if kind in (BODY_NONE, BODY_LENGTH) and framing != FRAME_PASS:
            continue
        if kind in (BODY_CHUNKED, BODY_UNTIL_CLOSE) and framing == FRAME_PASS:
            continue
        out = build_response_head(head, framing, keep, minor, b"1.1 fuzz")
        again = reparse(out, response=True, head_request=head_request)
        if again.status != head.status or again.reason != head.reason:
            raise AssertionError(f"status line changed: {out!r}")
        if framing == FRAME_PASS and (again.body_kind, again.content_length) != (
                kind, head.content_length) and head.status not in (101,):
            raise AssertionError(f"framing changed: {out!r}")
        if framing == FRAME_PASS and again.get(b"content-length") != head.get(b"content-length"):
            raise AssertionError(f"Content-Length not passed on: {out!r}")
        if framing == FRAME_CHUNKED and again.body_kind not in (BODY_CHUNKED, BODY_NONE):
            raise AssertionError(f"chunked framing lost: {out!r}")


def cuts_for(data: bytes) -> list[int]:
    """Deterministic split points derived from the input."""
    seed = zlib.crc32(data)
    if seed % 4 == 0 or len(data) < 2:
        return []
    if seed % 4 == 1:
        return list(range(1, len(data)))  # byte by byte
    points, x = set(), seed
    for _ in range(1 + seed % 7):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        points.add(1 + x % (len(data) - 1))
    return sorted(points)


def run(data: bytes, response: bool) -> None:
    head_request = response and bool(zlib.adler32(data) & 1)
    sink = Sink(response, head_request)
    parser: RequestParser | ResponseParser
    if response:
        parser = ResponseParser(sink, max_header_bytes=4096, max_header_count=64)
        parser.expect_no_body(head_request)
    else:
        parser = RequestParser(sink, max_line_bytes=1024, max_header_bytes=4096,
                               max_header_count=64)
    bounds = [0, *cuts_for(data), len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            piece = data[a:b]
            while piece:
                n = parser.feed(piece)
                if not 0 < n <= len(piece):
                    raise AssertionError(f"feed consumed {n} of {len(piece)}")
                piece = piece[n:]
        if parser.mid_message:
            parser.feed_eof()
    except HttpParseError as e:
        if not isinstance(e.status, int) or not 400 <= e.status <= 599 or not e.reason:
            raise AssertionError(f"bad HttpParseError {e.status!r} {e.reason!r}") from e
        note_error(e.status, response)
    note_outcome(sink)


def note_error(status: int, response: bool) -> None:
    # distinct branches per outcome give libFuzzer's coverage something to follow
    if response:
        if status == 502:
            return
        if status == 431:
            return
        return
    if status == 400:
        return
    if status == 414:
        return
    if status == 417:
        return
    if status == 431:
        return
    if status == 501:
        return
    if status == 505:
        return


def note_outcome(sink: Sink) -> None:
    if sink.messages > 1:
        if sink.messages > 3:
            return
        return
    for head in sink.heads:
        if head.body_kind == BODY_CHUNKED:
            if head.keep_alive:
                return
        elif head.body_kind == BODY_LENGTH:
            if head.content_length > 0:
                return
        elif head.body_kind == BODY_UNTIL_CLOSE:
            return
        if head.expect_continue or head.is_head_request:
            return
        if head.http_minor == 0:
            return


def TestOneInput(data: bytes) -> None:
    run(data, response=False)
    run(data, response=True)


def main(argv: list[str]) -> None:
    args = list(argv)
    if not any(a and not a.startswith("-") for a in args[1:]):
        WORK_CORPUS.mkdir(parents=True, exist_ok=True)
        args += [str(WORK_CORPUS), str(SEEDS)]  # new inputs go to the first one
    if not any(a.startswith("-dict=") for a in args) and DICT.exists():
        args.append(f"-dict={DICT}")
    for fn in (run, check_head, rewrite_request, rewrite_response, note_error, note_outcome,
               Sink.on_head, Sink.on_body, Sink.on_message_complete):
        atheris.instrument_func(fn)
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
