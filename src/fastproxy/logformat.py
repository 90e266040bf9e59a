"""Access-log line formats: nginx "combined", JSON lines and templates.

Every format reads the same variables (FIELDS, plus the text-only ones in
EXTRA_VARIABLES) from one finished exchange; a value is computed only when
the format names it. `Formatter.line(ex, wall, mono)` makes one line (with its
newline) from an `_proxy.Exchange`, or from a `Refused` for a request that
could not be parsed.

This module imports nothing from fastproxy, so the config checker can use
`parse_template` without the extensions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

# The JSON object's keys, in order (a stable schema: keys are never dropped;
# a value that does not apply is null).
FIELDS: tuple[str, ...] = (
    "time", "client_ip", "method", "host", "path", "query", "protocol", "status",
    "bytes_sent", "bytes_received", "duration_ms", "upstream_addr", "upstream_status",
    "upstream_connect_ms", "upstream_response_ms", "route", "cache_status", "request_id",
    "trace_id", "span_id", "user_agent", "referer", "tls_version", "tls_sni",
)
# Variables of templates besides FIELDS.
EXTRA_VARIABLES: tuple[str, ...] = ("time_local", "request")
VARIABLES: tuple[str, ...] = FIELDS + EXTRA_VARIABLES

_UNSAFE = re.compile(rb'["\\\x00-\x1f\x7f-\xff]')
_VAR_RE = re.compile(r"\{([^{}]*)\}|\{\{|\}\}|\{|\}")


def escape(value: bytes | None) -> str:
    """As nginx does in its logs: unprintable bytes, quote and backslash become \\xHH;
    nothing (or empty) is "-"."""
    if not value:
        return "-"
    if _UNSAFE.search(value):
        value = _UNSAFE.sub(lambda m: b"\\x%02X" % m.group()[0], value)
    return value.decode("ascii")


def parse_template(text: str) -> tuple[tuple[bool, str], ...]:
    """'{client_ip} {status}' -> ((True, "client_ip"), (False, " "), (True, "status")).
    `{{` and `}}` are literal braces. Raises ValueError naming what is wrong."""
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    pos = 0
    for m in _VAR_RE.finditer(text):
        literal.append(text[pos:m.start()])
        pos = m.end()
        token = m.group()
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        if token in ("{", "}"):
            raise ValueError(f"unbalanced {token!r} at offset {m.start()} "
                             "(write {{ or }} for a literal brace)")
        name = m.group(1).strip()
        if name not in VARIABLES:
            raise ValueError(f"unknown variable {{{name}}} (known: {', '.join(VARIABLES)})")
        if "".join(literal):
            parts.append((False, "".join(literal)))
        literal = []
        parts.append((True, name))
    literal.append(text[pos:])
    if "".join(literal):
        parts.append((False, "".join(literal)))
    if not any(is_var for is_var, _ in parts):
        raise ValueError('expected "combined", "json" or a template naming at least one '
                         f"{{variable}}, found {text!r}")
    if any("\n" in value or "\r" in value for is_var, value in parts if not is_var):
        raise ValueError("a template must not contain a line break")
    return tuple(parts)


class Refused:
    """What a log line knows of a request that could not be parsed."""

    __slots__ = ("client", "status", "sent")
    head = ctx = rule = resp_head = None
    host = None
    req_bytes = 0
    t_start = -1.0
    upstream_label = "-"
    upstream_status = 0
    connect_time = upstream_time = -1.0
    cache_status = request_id = trace_id = span_id = None

    def __init__(self, client: Any, status: int, sent: int) -> None:
        self.client = client
        self.status = status
        self.sent = sent


class Stamp:
    """The time parts of one line, shared by every format of that line."""

    __slots__ = ("wall", "mono", "_iso", "_local")

    def __init__(self, wall: float, mono: float) -> None:
        self.wall = wall
        self.mono = mono
        self._iso: str | None = None
        self._local: str | None = None

    def iso(self) -> str:
        if self._iso is None:
            second = int(self.wall)
            self._iso = "%s.%03dZ" % (_iso_second(second), int((self.wall - second) * 1000))
        return self._iso

    def local(self) -> str:
        if self._local is None:
            self._local = _local_second(int(self.wall))
        return self._local


_iso_cache: list[Any] = [-1, ""]
_local_cache: list[Any] = [-1, ""]


def _iso_second(second: int) -> str:
    if _iso_cache[0] != second:
        _iso_cache[0] = second
        _iso_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return str(_iso_cache[1])


def _local_second(second: int) -> str:
    if _local_cache[0] != second:
        _local_cache[0] = second
        _local_cache[1] = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
    return str(_local_cache[1])


# -- the variables: ex -> bytes | str | int | float | None ----------------------------

Getter = Callable[[Any, Stamp], Any]


def _ms(seconds: float) -> float | None:
    return None if seconds < 0 else round(seconds * 1000.0, 3)


def _client_ip(ex: Any, st: Stamp) -> Any:
    return ex.ctx.client_ip if ex.ctx is not None else ex.client.ip


def _path(ex: Any, st: Stamp) -> Any:
    if ex.ctx is not None and ex.ctx.path is not None:
        return ex.ctx.path
    return ex.head.target.partition(b"?")[0] if ex.head is not None else None


def _query(ex: Any, st: Stamp) -> Any:
    if ex.ctx is not None and ex.ctx.path is not None:
        return ex.ctx.query if ex.ctx.has_query else None
    if ex.head is None or b"?" not in ex.head.target:
        return None
    return ex.head.target.partition(b"?")[2]


def _bytes_received(ex: Any, st: Stamp) -> Any:
    head = ex.head
    if head is None:
        return 0
    # The head as parsed: request line, "Name: value\r\n" per field, the blank line.
    return (len(head.method) + len(head.raw) + 4 * head.header_count + 14
            + ex.req_bytes)


def _route(ex: Any, st: Stamp) -> Any:
    rule = ex.rule
    if rule is None:
        return None
    name = rule.route.name
    return name if name is not None else f"routes[{rule.index}]"


def _tls(ex: Any) -> Any:
    if ex.client.proto != b"https":
        return None
    transport = ex.client.transport
    return transport.get_extra_info("ssl_object") if transport is not None else None


def _tls_version(ex: Any, st: Stamp) -> Any:
    ssl_object = _tls(ex)
    return ssl_object.version() if ssl_object is not None else None


def _tls_sni(ex: Any, st: Stamp) -> Any:
    ssl_object = _tls(ex)
    if ssl_object is None:
        return None
    return getattr(ssl_object, "sni_name", None) or getattr(ssl_object, "fastproxy_sni", None)


def _protocol(ex: Any) -> str:
    """The client's protocol: an HTTP/2 stream's request reaches the exchange as
    HTTP/1.1 (h2server), so its connection says which it was."""
    return "HTTP/2.0" if ex.client.stream else "HTTP/1.%d" % ex.head.http_minor


def _request(ex: Any, st: Stamp) -> Any:
    head = ex.head
    if head is None:
        return None
    return b"%s %s %s" % (head.method, head.target, _protocol(ex).encode())


GETTERS: dict[str, Getter] = {
    "time": lambda ex, st: st.iso(),
    "time_local": lambda ex, st: st.local(),
    "client_ip": _client_ip,
    "method": lambda ex, st: ex.head.method if ex.head is not None else None,
    "host": lambda ex, st: ex.host,
    "path": _path,
    "query": _query,
    "protocol": lambda ex, st: _protocol(ex) if ex.head is not None else None,
    "request": _request,
    "status": lambda ex, st: ex.status,
    "bytes_sent": lambda ex, st: ex.sent,
    "bytes_received": _bytes_received,
    "duration_ms": lambda ex, st: _ms(st.mono - ex.t_start) if ex.t_start >= 0 else None,
    "upstream_addr": lambda ex, st: ex.upstream_label if ex.upstream_label != "-" else None,
    "upstream_status": lambda ex, st: ex.upstream_status or None,
    "upstream_connect_ms": lambda ex, st: _ms(ex.connect_time),
    "upstream_response_ms": lambda ex, st: _ms(ex.upstream_time),
    "route": _route,
    "cache_status": lambda ex, st: ex.cache_status,
    "request_id": lambda ex, st: ex.request_id,
    "trace_id": lambda ex, st: ex.trace_id,
    "span_id": lambda ex, st: ex.span_id,
    "user_agent": lambda ex, st: ex.head.get(b"user-agent") if ex.head is not None else None,
    "referer": lambda ex, st: ex.head.get(b"referer") if ex.head is not None else None,
    "tls_version": _tls_version,
    "tls_sni": _tls_sni,
}
assert set(GETTERS) == set(VARIABLES)


# -- formats --------------------------------------------------------------------------

class Formatter:
    """Turns a finished exchange into one line of text (with its newline)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def line(self, ex: Any, st: Stamp) -> str:
        raise NotImplementedError


class Combined(Formatter):
    """nginx's "combined": $remote_addr - $remote_user [$time_local] "$request" $status
    $body_bytes_sent "$http_referer" "$http_user_agent", escaped as nginx escapes."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("combined")

    def line(self, ex: Any, st: Stamp) -> str:
        head = ex.head
        ip = (ex.ctx.client_ip if ex.ctx is not None else ex.client.ip).decode()
        if head is None:
            return '%s - - [%s] "-" %d %d "-" "-"\n' % (ip, st.local(), ex.status, ex.sent)
        return '%s - - [%s] "%s %s %s" %d %d "%s" "%s"\n' % (
            ip, st.local(), head.method.decode(), escape(head.target), _protocol(ex),
            ex.status, ex.sent, escape(head.get(b"referer")), escape(head.get(b"user-agent")))


def _json_value(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bytes:
        value = value.decode("utf-8", "backslashreplace")
    if type(value) is str:
        return encode_basestring_ascii(value)
    if type(value) is float:
        return "%.3f" % value
    return str(value)


_JSON_SAFE = re.compile(rb'[^"\\\x00-\x1f\x7f-\xff]*')
# The keys in FIELDS order, with a %s for each value (already JSON text).
_JSON_LINE = "{" + ",".join('"%s":%%s' % name for name in FIELDS) + "}\n"


def _js(value: bytes | None) -> str:
    """bytes as a JSON string (null for None): the common all-printable-ASCII case
    without a decode-and-encode round."""
    if value is None:
        return "null"
    if _JSON_SAFE.fullmatch(value):
        return '"%s"' % value.decode("ascii")
    return encode_basestring_ascii(value.decode("utf-8", "backslashreplace"))


def _jn(seconds: float) -> str:
    return "null" if seconds < 0 else "%.3f" % (seconds * 1000.0)


class Json(Formatter):
    """One JSON object per line, every key of FIELDS in order. Written out by hand
    (one % format) rather than per field: this runs for every request."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("json")

    def line(self, ex: Any, st: Stamp) -> str:
        head = ex.head
        if head is None:
            return _JSON_LINE % tuple(_json_value(GETTERS[name](ex, st)) for name in FIELDS)
        ctx = ex.ctx
        if ctx is not None and ctx.path is not None:
            ip, path = ctx.client_ip, ctx.path
            query = ctx.query if ctx.has_query else None
        else:
            ip = ctx.client_ip if ctx is not None else ex.client.ip
            path, mark, query = head.target.partition(b"?")
            if not mark:
                query = None
        label = ex.upstream_label
        tls = ex.client.proto == b"https"
        trace = ex.traceparent
        return _JSON_LINE % (
            '"%s"' % st.iso(), '"%s"' % ip.decode("ascii"), '"%s"' % head.method.decode(),
            _js(ex.host), _js(path), _js(query), '"%s"' % _protocol(ex),
            ex.status, ex.sent, _bytes_received(ex, st),
            _jn(st.mono - ex.t_start), "null" if label == "-" else _js(label.encode()),
            ex.upstream_status or "null", _jn(ex.connect_time), _jn(ex.upstream_time),
            _json_value(_route(ex, st)) if ex.rule is not None else "null",
            _json_value(ex.cache_status), _js(ex.request_id),
            '"%s"' % trace[3:35].decode() if trace is not None else "null",
            '"%s"' % trace[36:52].decode() if trace is not None else "null",
            _js(head.get(b"user-agent")), _js(head.get(b"referer")),
            _json_value(_tls_version(ex, st)) if tls else "null",
            _json_value(_tls_sni(ex, st)) if tls else "null")


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if type(value) is bytes:
        return escape(value)
    if type(value) is str:
        return escape(value.encode("utf-8"))
    if type(value) is float:
        return "%.3f" % value
    return str(value)


class Template(Formatter):
    """A line made of literal text and {variables} (missing values are "-")."""

    __slots__ = ("_parts",)

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._parts: tuple[tuple[Getter | None, str], ...] = tuple(
            (GETTERS[value], "") if is_var else (None, value)
            for is_var, value in parse_template(text))

    def line(self, ex: Any, st: Stamp) -> str:
        out = [_text_value(get(ex, st)) if get is not None else text
               for get, text in self._parts]
        out.append("\n")
        return "".join(out)


def formatter(text: str) -> Formatter:
    """The formatter of a `format` setting (checked by the config already)."""
    if text == "combined":
        return Combined()
    if text == "json":
        return Json()
    return Template(text)


def check_format(text: str) -> str:
    """For the config: "combined", "json" or a valid template; ValueError otherwise."""
    if text not in ("combined", "json"):
        parse_template(text)
    return text
