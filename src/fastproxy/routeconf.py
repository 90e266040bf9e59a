"""The route schema of the config (docs/routing-spec.md): objects, checks, shadowing.

``config.py`` stays the entry point: it hands the raw ``[[routes]]`` array to
:func:`parse_routes` together with its checker (a :class:`KeyChecker`), which
collects every problem under its key path, and asks :func:`route_warnings`
for the routes that can never be reached.

The small helpers both modules need (describing TOML values, key paths,
did-you-mean, host names) live here rather than in config.py so that this
module imports nothing from config.py and there is no import cycle.

Everything a route needs at run time is parsed here, once: hosts are
normalized, paths go through the same ``normalize_path`` as requests,
regexes are compiled (to check them) and templates are split into literals
and variables, so that the router and the rewriter never meet a bad value.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fastproxy._url import normalize_path

__all__ = [
    "VARIABLES",
    "CompressSpec",
    "HeaderEdits",
    "KeyChecker",
    "Redirect",
    "Respond",
    "Rewrite",
    "Route",
    "RouteMatch",
    "RoutingSettings",
    "Template",
    "ValueTest",
    "Var",
    "parse_routes",
    "parse_template",
    "route_warnings",
    "shadows",
]


# --------------------------------------------------------------------------
# Shared helpers: values, key paths, the checker interface


def toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, _dt.datetime):
        return "datetime"
    if isinstance(value, _dt.date):
        return "date"
    if isinstance(value, _dt.time):
        return "time"
    return type(value).__name__


def describe(value: object) -> str:
    """'string "x"', 'integer 5', 'table' -- the type and, when short, the value."""
    kind = toml_type(value)
    if isinstance(value, bool):
        return f"{kind} {'true' if value else 'false'}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"{kind} {shown!r}"
    if isinstance(value, (int, float)):
        text = repr(value)
        return f"{kind} {text}" if len(text) <= 30 else kind
    return kind


_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


def _quote_key(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def key(path: str, name: object) -> str:
    """``path.name``, with the name quoted as TOML needs it."""
    text = str(name)
    if not _BARE_KEY_RE.fullmatch(text):
        text = _quote_key(text)
    return f"{path}.{text}" if path else text


def _header_key(path: str, name: str) -> str:
    # Header names are always quoted, so they read as the field names they are
    # (`request_headers.set."X-Real-IP"`), whatever characters they hold.
    return f"{path}.{_quote_key(name)}"


def suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, found {describe(value)}")
    return value


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected a boolean (true or false), found {describe(value)}")
    return value


def _auth_timeout(value: object) -> float:
    from fastproxy.config import parse_duration  # config imports this module

    seconds = parse_duration(value)
    if not 0 < seconds <= 300:
        raise ValueError(f"must be more than 0 and at most 5m, found {describe(value)}")
    return seconds


def _tunnel_idle(value: object) -> float:
    from fastproxy.config import parse_duration  # config imports this module

    seconds = parse_duration(value)
    if not 0 <= seconds <= 86400:
        raise ValueError(f"must be from 0 (no timeout) to 24h, found {describe(value)}")
    return seconds


BODY_SIZE_MAX: Final = 1 << 50  # far beyond any body; keeps the value a C long long


def body_size(value: object) -> int:
    """A request body limit in bytes, like [limits] max_body_bytes (0: unlimited)."""
    from fastproxy.config import parse_size  # config imports this module

    size = parse_size(value)
    if size > BODY_SIZE_MAX:
        raise ValueError(f"must be at most 1p ({BODY_SIZE_MAX} bytes), found {describe(value)}")
    return size


# Route compression (`compress`): the codings by name with their level ranges, and
# the defaults (the compiled side is fastproxy._compress, which keeps the same ones).
COMPRESS_LEVELS: Final = {"zstd": (1, 19), "br": (0, 11), "gzip": (1, 9)}
COMPRESS_ALGORITHMS: Final = ("zstd", "br", "gzip")
COMPRESS_TYPES: Final = (
    "text/*", "application/json", "application/javascript", "application/x-javascript",
    "application/ecmascript", "application/xml", "application/xhtml+xml", "application/wasm",
    "application/manifest+json", "application/x-ndjson", "application/graphql-response+json",
    "application/vnd.api+json", "application/x-www-form-urlencoded", "image/svg+xml",
    "image/x-icon", "image/vnd.microsoft.icon", "image/bmp", "font/ttf", "font/otf",
    "application/vnd.ms-fontobject", "*/*+json", "*/*+xml",
)
_MEDIA_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _media_pattern(value: object) -> str:
    """A media type for compress.types: "type/subtype", "type/*" or "*/*+suffix"."""
    text = string(value).strip().lower()
    major, slash, minor = text.partition("/")
    ok = bool(slash) and _MEDIA_TOKEN_RE.fullmatch(major) is not None and (
        _MEDIA_TOKEN_RE.fullmatch(minor) is not None)
    if ok and "*" in text:
        ok = (major != "*" and minor == "*") or (
            major == "*" and minor.startswith("*+") and "*" not in minor[1:] and len(minor) > 2)
    if not ok:
        raise ValueError('expected a media type like "text/html", "text/*" or "*/*+json", '
                         f"found {describe(value)}")
    return text


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


MISSING: Final = object()  # a key that is absent
INVALID: Final = object()  # a value that was refused (the error is already recorded)


class KeyChecker:
    """Checks raw TOML values under key paths; subclasses decide where problems go.

    Every method records the problem and carries on, so that one run reports
    every issue in the file.
    """

    @property
    def error_count(self) -> int:
        raise NotImplementedError

    def error(self, key: str, reason: str) -> None:
        raise NotImplementedError

    def warn(self, key: str, reason: str) -> None:
        raise NotImplementedError

    def table(self, value: object, key: str, hint: str = "") -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.error(key, f"expected a table{hint}, found {describe(value)}")
        return None

    def array(self, value: object, key: str, hint: str = "") -> Sequence[Any] | None:
        if isinstance(value, (list, tuple)):
            return value
        self.error(key, f"expected an array{hint}, found {describe(value)}")
        return None

    def known_keys(self, table: Mapping[str, Any], path: str, known: Sequence[str]) -> None:
        for name in table:
            if name not in known:
                self.error(key(path, name), "unknown key" + suggest(str(name), known))

    def convert(self, key: str, convert: Callable[[Any], Any], value: object) -> Any:
        try:
            return convert(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return INVALID


# --------------------------------------------------------------------------
# Host names and ports

_LABEL_RE: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
# Characters that IDNA 2003 (Python's codec) maps differently from IDNA 2008 /
# UTS 46 non-transitional (what browsers send): the A-label would not match.
_IDNA_DEVIATIONS: Final = frozenset("\u00df\u03c2\u200c\u200d")


def parse_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, found {text!r}")
    return int(text)


def ipv6(host: str) -> str:
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        raise ValueError(f"invalid IPv6 address {host!r}") from None


def _idna_label(label: str, host: str) -> str:
    if label.isascii():
        return label
    if _IDNA_DEVIATIONS.intersection(label):
        raise ValueError(
            f"host name {host!r} contains a character that IDNA versions encode differently"
            " (ß, ς, or a zero-width joiner); write the label in its xn-- form"
        )
    try:
        return label.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"invalid host name {host!r}") from None


def hostname(host: str) -> str:
    """An IPv4 literal or a DNS name: lower case, no trailing dot, IDNA-encoded."""
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if labels[-1].isdigit() and labels[-1].isascii():
        # Looks like an IPv4 address: it must be a valid one.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r}") from None
    if name and not name.isascii():
        labels = [_idna_label(label.lower(), host) for label in labels]
        name = ".".join(labels)
    if not name or len(name) > 253 or not all(_LABEL_RE.fullmatch(lbl) for lbl in labels):
        raise ValueError(f"invalid host name {host!r}")
    return name.lower()


def match_host(value: object, *, wildcard: bool = True) -> str:
    """A host as routes name it: "example.com", "*.example.com", "10.0.0.1", "[::1]"."""
    text = string(value)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"missing ']' after the IPv6 address in {text!r}")
        if text[end + 1 :]:
            raise ValueError(f"must not include a port, found {text!r}")
        return f"[{ipv6(text[1:end])}]"
    if text.count(":") == 1:
        raise ValueError(f"must not include a port, found {text!r}")
    if ":" in text:
        raise ValueError(f'an IPv6 address must be in brackets, e.g. "[::1]", found {text!r}')
    if "*" in text:
        if not wildcard:
            raise ValueError(f"must be a single host name, not a wildcard, found {text!r}")
        rest = text[2:]
        if not text.startswith("*.") or "*" in rest:
            raise ValueError(
                f'a wildcard must be a whole leading label, as in "*.example.com", found {text!r}'
            )
        # Checked before hostname(), which would read "*.0.0.1" as a bad IPv4 address.
        if rest.rstrip(".").rsplit(".", 1)[-1].isdigit():
            raise ValueError(f"a wildcard cannot stand for part of an IP address, found {text!r}")
        return "*." + hostname(rest)
    return hostname(text)


def _host_header(text: str) -> None:
    """Check a literal Host value: host, optionally with ":port"."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"missing ']' after the IPv6 address in {text!r}")
        ipv6(text[1:end])
        rest = text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid host {text!r}")
            parse_port(rest[1:])
        return
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    if ":" in host:
        raise ValueError(f'an IPv6 address must be in brackets, e.g. "[::1]", found {text!r}')
    hostname(host)
    if sep:
        parse_port(port)


# --------------------------------------------------------------------------
# Objects


@dataclass(frozen=True, slots=True)
class Var:
    """A template variable: a request value, or a capture of the route's regex."""

    name: str | int  # "host", ...; for a capture the group number or group name
    capture: bool


@dataclass(frozen=True, slots=True)
class Template:
    source: str  # as written in the config
    parts: tuple[str | Var, ...]  # non-empty literals (braces unescaped) and variables


@dataclass(frozen=True, slots=True)
class ValueTest:
    """One condition on a header or a query argument."""

    name: str  # header names lower case; query names as written
    kind: str  # "present" | "absent" | "equals" | "regex"
    value: str | None  # the exact value or the regex source; None for present/absent


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class BasicAuthSpec:
    realm: str
    users: tuple[tuple[str, str], ...]  # (user, stored hash: see fastproxy.auth)


@dataclass(frozen=True, slots=True)
class ForwardAuthSpec:
    """forward_auth on a route: ask `url` before the request goes upstream."""

    url: str
    timeout: float = 5.0
    copy_headers: tuple[str, ...] = ()
    request_headers: tuple[str, ...] | None = None  # None: all but hop-by-hop and framing
    max_body: int = 65536
    ca: str | None = None  # PEM bundle for an https:// service (default: the system's)


@dataclass(frozen=True, slots=True)
class AccessList:
    """Client addresses refused with 403: every one in `deny`, and, when `allow`
    is given, every one not in it (deny wins over allow)."""

    allow: tuple[IPNetwork, ...] | None
    deny: tuple[IPNetwork, ...]


_ACCESS_KEYS: Final = ("allow", "deny", "allow_file", "deny_file")


def access_list(ck: KeyChecker, raw: object, path: str, base_dir: str) -> AccessList | None:
    """allow/deny: a CIDR or an array of them; allow_file/deny_file: a file with one
    CIDR per line ("#" starts a comment), relative to the config file."""
    table = ck.table(raw, path, ' like { allow = ["10.0.0.0/8"], deny = ["10.1.0.0/16"] }')
    if table is None:
        return None
    ck.known_keys(table, path, _ACCESS_KEYS)
    before = ck.error_count
    lists: dict[str, list[IPNetwork] | None] = {"allow": None, "deny": None}
    for kind in ("allow", "deny"):
        if kind in table:
            raw_list = table[kind]
            items = [raw_list] if isinstance(raw_list, str) else ck.array(
                raw_list, key(path, kind), " of CIDR strings")
            nets = []
            for i, item in enumerate(items or ()):
                where = key(path, kind) + (f"[{i}]" if not isinstance(raw_list, str) else "")
                net = ck.convert(where, client_net, item)
                if net is not INVALID:
                    nets.append(net)
            lists[kind] = nets
        file_key = f"{kind}_file"
        if file_key in table:
            nets_from_file = _networks_file(ck, table[file_key], key(path, file_key), base_dir)
            lists[kind] = (lists[kind] or []) + nets_from_file
    if "allow" not in table and "allow_file" not in table and "deny" not in table \
            and "deny_file" not in table:
        ck.error(path, "give allow, deny, allow_file or deny_file")
    if ck.error_count != before:
        return None
    allow = lists["allow"]
    return AccessList(tuple(allow) if allow is not None else None, tuple(lists["deny"] or ()))


def _networks_file(ck: KeyChecker, raw: object, path: str, base_dir: str) -> list[IPNetwork]:
    name = ck.convert(path, string, raw)
    if name is INVALID:
        return []
    full = os.path.normpath(os.path.join(base_dir, name))
    try:
        with open(full, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        ck.error(path, f"cannot read {full}: {getattr(e, 'strerror', None) or e}")
        return []
    nets = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            nets.append(client_net(text))
        except ValueError as e:
            ck.error(path, f"{full} line {number}: {e}")
    return nets


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The conditions of a route; all must hold. None / () means no condition."""

    hosts: tuple[str, ...] | None  # lower case, "*.x" wildcards, "[v6]", IDNA A-labels
    paths: tuple[str, ...]  # exact, normalized
    path_prefixes: tuple[str, ...]  # normalized
    whole_segments: bool  # prefixes match only up to a "/" or the end of the path
    path_regex: str | None
    methods: tuple[str, ...] | None
    headers: tuple[ValueTest, ...]
    query: tuple[ValueTest, ...]
    client_ips: tuple[IPNetwork, ...] | None
    listeners: tuple[str, ...] | None
    tls: bool | None = None  # the request came over TLS (True) or not (False)
    client_cert: tuple[ValueTest, ...] = ()  # on the TLS client certificate's facts

    @property
    def matches_everything(self) -> bool:
        return (
            self.hosts is None
            and not self.paths
            and not self.path_prefixes
            and self.path_regex is None
            and self.methods is None
            and not self.headers
            and not self.query
            and self.client_ips is None
            and self.listeners is None
            and self.tls is None
            and not self.client_cert
        )


@dataclass(frozen=True, slots=True)
class Redirect:
    to: Template
    status: int


@dataclass(frozen=True, slots=True)
class Respond:
    status: int
    body: Template
    headers: tuple[tuple[str, Template], ...]


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Applied in field order: strip_prefix, regex/replace, add_prefix, query, host."""

    strip_prefix: str | None  # normalized
    regex: str | None
    replace: Template | None  # set exactly when regex is
    add_prefix: str | None  # normalized
    set_query: tuple[tuple[str, Template], ...]
    remove_query: tuple[str, ...]
    host: Template | None


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Applied in the order remove, set, add; names as written."""

    remove: tuple[str, ...]
    set: tuple[tuple[str, Template], ...]
    add: tuple[tuple[str, Template], ...]


@dataclass(frozen=True, slots=True)
class CompressSpec:
    """A route's ``compress``: codings in server order, levels, size and types."""

    algorithms: tuple[str, ...] = COMPRESS_ALGORITHMS
    levels: tuple[tuple[str, int], ...] = ()  # given per algorithm; the rest default
    min_size: int = 256
    types: tuple[str, ...] = COMPRESS_TYPES


@dataclass(frozen=True, slots=True)
class Route:
    index: int  # position in the file, 0-based (as in the key path routes[N])
    name: str | None
    match: RouteMatch
    # Exactly one of the three actions is set.
    upstream: str | None
    redirect: Redirect | None
    respond: Respond | None
    rewrite: Rewrite | None  # upstream routes only
    request_headers: HeaderEdits | None  # upstream routes only
    response_headers: HeaderEdits | None
    limits: tuple[str, ...] = ()  # names of [limits.NAME] rate limits, checked in order
    access: AccessList | None = None  # client addresses refused with 403
    basic_auth: BasicAuthSpec | None = None  # users who may pass (401 for the others)
    waf: bool = True  # the [waf] rules apply (when there is a [waf] section)
    max_body_bytes: int | None = None  # overrides the listener's and [limits]' (0: unlimited)
    forward_auth: ForwardAuthSpec | None = None  # an auth service asked first
    cache: str | None = None  # the [caches.NAME] that stores this route's responses
    compress: CompressSpec | None = None  # compress responses for clients that accept it
    tunnel_idle_timeout: float = 60.0  # an upgraded (WebSocket) connection's idle time (0: none)

    @property
    def label(self) -> str:
        where = f"routes[{self.index}]"
        return where if self.name is None else f"{where} {_quote_key(self.name)}"


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    merge_slashes: bool


# --------------------------------------------------------------------------
# Templates

VARIABLES: Final = (
    "host",
    "path",
    "query",
    "request_uri",
    "method",
    "scheme",
    "client_ip",
    "request_id",
    "listener",
)
_VAR_NAME_RE: Final = re.compile(
    r"[0-9]+|[A-Za-z_][A-Za-z0-9_]*|(?:header|cookie|query)\.[!#$%&'*+.^_`|~0-9A-Za-z-]+"
)
# {header.NAME}, {cookie.NAME}, {query.NAME}: a request header (the first field;
# name case-insensitive), a cookie, a query argument (decoded); "" when absent.
LOOKUP_VARIABLES: Final = ("header", "cookie", "query")


def parse_template(
    source: str,
    regex: re.Pattern[str] | None = None,
    regex_key: str = "match.path_regex",
    *,
    check_captures: bool = True,
) -> Template:
    """Split ``source`` into literals and variables; ValueError names the problem.

    Captures are checked against ``regex`` (named ``regex_key`` in messages);
    ``check_captures=False`` accepts any capture, for when the regex itself
    was refused and a second error about it would only be noise.
    """
    parts: list[str | Var] = []
    literal: list[str] = []
    i, n = 0, len(source)
    while i < n:
        if source.startswith("{{", i):
            literal.append("{")
            i += 2
        elif source.startswith("}}", i):
            literal.append("}")
            i += 2
        elif source[i] == "}":
            raise ValueError(f"unmatched '}}' at position {i} (write '}}}}' for a literal brace)")
        elif source[i] == "{":
            end = source.find("}", i + 1)
            name = source[i + 1 : end]
            if end < 0 or "{" in name:
                raise ValueError(
                    f"unmatched '{{' at position {i} (write '{{{{' for a literal brace)"
                )
            if not _VAR_NAME_RE.fullmatch(name):
                raise ValueError(
                    f"invalid variable {{{name}}} at position {i}: expected a variable name"
                    " or a group number"
                )
            if literal:
                parts.append("".join(literal))
                literal.clear()
            parts.append(_variable(name, regex, regex_key, check_captures))
            i = end + 1
        else:
            end = min((j for j in (source.find("{", i), source.find("}", i)) if j >= 0), default=n)
            literal.append(source[i:end])
            i = end
    if literal:
        parts.append("".join(literal))
    return Template(source, tuple(parts))


def _variable(
    name: str, regex: re.Pattern[str] | None, regex_key: str, check_captures: bool
) -> Var:
    if name.isdigit():
        number = int(name)
        if check_captures:
            if regex is None:
                raise ValueError(f"{{{name}}} refers to a regex group, but there is no {regex_key}")
            if number > regex.groups:
                raise ValueError(
                    f"{{{name}}} refers to group {number}, but {regex_key} has only "
                    f"{_plural(regex.groups, 'group')}"
                )
        return Var(number, True)
    if name in VARIABLES:
        return Var(name, False)
    kind, dot, what = name.partition(".")
    if dot and kind in LOOKUP_VARIABLES:
        return Var(f"{kind}.{what.lower()}" if kind == "header" else name, False)
    if not check_captures or (regex is not None and name in regex.groupindex):
        return Var(name, True)
    known = ", ".join(VARIABLES) + ", header.NAME, cookie.NAME, query.NAME"
    groups = list(regex.groupindex) if regex is not None else []
    if groups:
        known += f"; groups of {regex_key}: {', '.join(groups)}"
    hint = suggest(name, [*VARIABLES, *groups])
    raise ValueError(f"unknown variable {{{name}}} (known: {known}){hint}")


# --------------------------------------------------------------------------
# Value checks

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PATH_FORBIDDEN_RE: Final = re.compile(r"[\x00-\x20\x7f?#]")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Field values may hold HTAB but no other control character (RFC 9110 §5.5).
_VALUE_FORBIDDEN_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_HOST_LITERAL_FORBIDDEN_RE: Final = re.compile(r"[\x00-\x20\x7f/?#@]")

# Header fields the proxy writes itself (framing, hop-by-hop, forwarding): an
# edit of one of them would break framing or lie about the client.
PROXY_OWNED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
    }
)
_REDIRECT_STATUSES: Final = (301, 302, 303, 307, 308)
_NO_BODY_STATUSES: Final = (204, 205, 304)

_ROUTE_KEYS: Final = (
    "name",
    "match",
    "upstream",
    "redirect",
    "respond",
    "rewrite",
    "request_headers",
    "response_headers",
    "limits",
    "access",
    "basic_auth",
    "waf",
    "max_body_bytes",
    "forward_auth",
    "cache",
    "compress",
    "tunnel_idle_timeout",
)
_COMPRESS_KEYS: Final = ("algorithms", "level", "min_size", "types")
_ACTIONS: Final = ("upstream", "redirect", "respond")
_MATCH_KEYS: Final = (
    "host",
    "path",
    "path_prefix",
    "whole_segments",
    "path_regex",
    "methods",
    "headers",
    "query",
    "client_ip",
    "listener",
    "tls",
    "client_cert",
)
# The client-certificate facts a route may test (see fastproxy.tls.describe_peer_cert).
CLIENT_CERT_FACTS: Final = ("subject", "issuer", "fingerprint", "serial", "verify")
_PATH_KEYS: Final = ("path", "path_prefix", "path_regex")
_REDIRECT_KEYS: Final = ("to", "status")
_RESPOND_KEYS: Final = ("status", "body", "headers")
_REWRITE_KEYS: Final = (
    "strip_prefix",
    "regex",
    "replace",
    "add_prefix",
    "set_query",
    "remove_query",
    "host",
)
_EDIT_KEYS: Final = ("remove", "set", "add")
FORWARD_AUTH_KEYS: Final = ("url", "timeout", "copy_headers", "request_headers", "max_body", "ca")
BASIC_AUTH_KEYS: Final = ("realm", "users")
VALUE_TEST_KEYS: Final = ("regex",)  # a header, query or client_cert test given as a table
_VALUE_TEST_HINT: Final = 'a string (equals), true (present), false (absent) or { regex = "..." }'


def label_name(value: object) -> str:
    """A route or listener name: shown in messages and the {listener} variable."""
    text = string(value)
    if not text:
        raise ValueError("must not be empty")
    bad = _CONTROL_RE.search(text)
    if bad is not None:
        raise ValueError(f"must not contain control characters, found {text!r}")
    return text


def config_path(text: str, merge_slashes: bool) -> str:
    """A path written in the config, normalized exactly as request paths are."""
    if not text.startswith("/"):
        raise ValueError(f'must start with "/", found {text!r}')
    bad = _PATH_FORBIDDEN_RE.search(text)
    if bad is not None:
        raise ValueError(f"must not contain {bad.group()!r}, found {text!r}")
    result = normalize_path(text.encode(), merge_slashes)
    if result is None:
        if _BAD_ESCAPE_RE.search(text):
            raise ValueError(f"'%' must start an escape of two hex digits, found {text!r}")
        raise ValueError(f"'..' climbs above the root, found {text!r}")
    # Every byte >= 0x80 comes back percent-encoded, so the result is ASCII.
    return result.decode("ascii")


def _method(value: object) -> str:
    text = string(value)
    if not _TOKEN_RE.fullmatch(text):
        raise ValueError(f"invalid method {text!r}: expected a token like \"GET\"")
    return text.upper()


def _header_name(name: str) -> str:
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}: expected a token like \"X-Env\"")
    return name


def _edit_name(name: str, *, request: bool) -> str:
    _header_name(name)
    if name.lower() in PROXY_OWNED_HEADERS:
        hint = "; use rewrite.host" if request and name.lower() == "host" else ""
        raise ValueError(f"{name!r} is set by the proxy itself and cannot be edited{hint}")
    return name


def _query_name(name: str) -> str:
    if not name:
        raise ValueError("argument name must not be empty")
    return name


def client_net(value: object) -> IPNetwork:
    text = string(value)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f'expected an IP address or a CIDR network like "10.0.0.0/8", found {text!r}'
        ) from None
    raise ValueError(f"host bits are set in {text!r}; did you mean {str(loose)!r}?")


def _compile(value: object) -> re.Pattern[str]:
    text = string(value)
    try:
        # The router matches bytes (the path as received, percent-encoded):
        # the pattern must compile as bytes too, e.g. (?u) is refused there.
        re.compile(text.encode())
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    except (OverflowError, RecursionError):
        raise ValueError("invalid regular expression: too large or nested too deeply") from None


# --------------------------------------------------------------------------
# Routes


@dataclass(frozen=True, slots=True)
class _Captures:
    """What {N} and {name} refer to in a template."""

    regex: re.Pattern[str] | None
    key: str  # "match.path_regex" or "rewrite.regex", for messages
    checked: bool  # False when the regex was refused: accept any capture quietly


class _RouteParser:
    def __init__(
        self,
        ck: KeyChecker,
        merge_slashes: bool,
        upstreams: Collection[str] | None,
        listeners: Collection[str] | None,
        rate_limits: Collection[str] | None = (),
        caches: Collection[str] | None = (),
    ) -> None:
        self.ck = ck
        self.caches = caches  # [caches.NAME] names (None: unknown, skip the check)
        self.merge_slashes = merge_slashes
        self.upstreams = upstreams  # None: unknown (the section was unusable), skip the check
        self.listeners = listeners
        self.rate_limits = rate_limits
        self.names: dict[str, int] = {}

    def route(self, index: int, raw: object) -> Route | None:
        ck = self.ck
        path = f"routes[{index}]"
        table = ck.table(raw, path)
        if table is None:
            return None
        before = ck.error_count
        ck.known_keys(table, path, _ROUTE_KEYS)
        name = self.route_name(index, table, path)
        match, captures = self.match(table.get("match", {}), f"{path}.match")

        actions = [action for action in _ACTIONS if action in table]
        if not actions:
            ck.error(path, "missing action: give one of upstream, redirect, respond")
        for extra in actions[1:]:
            ck.error(f"{path}.{extra}", f"only one action per route ({actions[0]} is given too)")
        upstream = redirect = respond = None
        if "upstream" in table:
            upstream = self.upstream(table["upstream"], f"{path}.upstream")
        if "redirect" in table:
            redirect = self.redirect(table["redirect"], f"{path}.redirect", captures)
        if "respond" in table:
            respond = self.respond(table["respond"], f"{path}.respond", captures)

        rewrite = request_headers = None
        for only_upstream in ("rewrite", "request_headers"):
            if only_upstream in table and "upstream" not in table:
                ck.error(
                    f"{path}.{only_upstream}",
                    "only allowed on a route with upstream (nothing is forwarded otherwise)",
                )
        if "rewrite" in table and "upstream" in table:
            rewrite = self.rewrite(table["rewrite"], f"{path}.rewrite", captures)
        if "request_headers" in table and "upstream" in table:
            request_headers = self.header_edits(
                table["request_headers"], f"{path}.request_headers", captures, request=True
            )
        response_headers = None
        if "response_headers" in table:
            response_headers = self.header_edits(
                table["response_headers"], f"{path}.response_headers", captures, request=False
            )
        limits: tuple[str, ...] = ()
        if "limits" in table:
            limits = self.limits(table["limits"], f"{path}.limits") or ()
        waf: Any = True
        if "waf" in table:
            waf = ck.convert(f"{path}.waf", boolean, table["waf"])
        max_body = None
        if "max_body_bytes" in table:
            max_body = ck.convert(f"{path}.max_body_bytes", body_size, table["max_body_bytes"])
        cache = None
        if "cache" in table:
            cache = ck.convert(f"{path}.cache", string, table["cache"])
            if cache is not INVALID and "upstream" not in table:
                ck.error(f"{path}.cache", "only allowed on a route with upstream (nothing "
                                          "is fetched to store otherwise)")
            elif cache is not INVALID and self.caches is not None and cache not in self.caches:
                defined = ", ".join(sorted(self.caches)) or "none"
                ck.error(f"{path}.cache", f"unknown cache {cache!r} (defined: {defined}; "
                                          "define it as [caches.NAME])")
        compress = None
        if "compress" in table:
            if "upstream" not in table:
                ck.error(f"{path}.compress", "only allowed on a route with upstream (local "
                                             "answers are not compressed)")
            else:
                compress = self.compress(table["compress"], f"{path}.compress")
        tunnel_idle: Any = 60.0
        if "tunnel_idle_timeout" in table:
            tunnel_idle = ck.convert(f"{path}.tunnel_idle_timeout", _tunnel_idle,
                                     table["tunnel_idle_timeout"])
            if tunnel_idle is not INVALID and "upstream" not in table:
                ck.error(f"{path}.tunnel_idle_timeout", "only allowed on a route with upstream "
                                                        "(only those switch protocols)")
        forward_auth = None
        if "forward_auth" in table:
            forward_auth = self.forward_auth(table["forward_auth"], f"{path}.forward_auth")
        basic_auth = None
        if "basic_auth" in table:
            basic_auth = self.basic_auth(table["basic_auth"], f"{path}.basic_auth")
        access = None
        if "access" in table:
            access = access_list(ck, table["access"], f"{path}.access",
                                 getattr(ck, "base_dir", os.getcwd()))
        if ck.error_count != before or match is None:
            return None
        return Route(
            index=index,
            name=name,
            match=match,
            upstream=upstream,
            redirect=redirect,
            respond=respond,
            rewrite=rewrite,
            request_headers=request_headers,
            response_headers=response_headers,
            limits=limits,
            access=access,
            basic_auth=basic_auth,
            waf=waf is not False,
            max_body_bytes=max_body,
            forward_auth=forward_auth,
            cache=cache if isinstance(cache, str) else None,
            compress=compress,
            tunnel_idle_timeout=tunnel_idle if isinstance(tunnel_idle, float) else 60.0,
        )

    def compress(self, raw: object, path: str) -> CompressSpec | None:
        """compress = true | false | { algorithms, level, min_size, types }"""
        ck = self.ck
        if isinstance(raw, bool):
            return CompressSpec() if raw else None
        if not isinstance(raw, Mapping):
            ck.error(path, "expected true, false or a table like { algorithms = [\"gzip\"] }, "
                           f"found {describe(raw)}")
            return None
        before = ck.error_count
        ck.known_keys(raw, path, _COMPRESS_KEYS)
        algorithms: tuple[str, ...] = COMPRESS_ALGORITHMS
        if "algorithms" in raw:
            items = ck.array(raw["algorithms"], f"{path}.algorithms", ' like ["zstd", "gzip"]')
            if items is not None:
                if not items:
                    ck.error(f"{path}.algorithms", "must name at least one algorithm (or set "
                                                   "compress = false)")
                names: list[str] = []
                for i, item in enumerate(items):
                    where = f"{path}.algorithms[{i}]"
                    if item not in COMPRESS_LEVELS:
                        ck.error(where, f"unknown algorithm {describe(item)} (known: "
                                        + ", ".join(COMPRESS_LEVELS) + ")")
                    elif item in names:
                        ck.error(where, f"{item!r} is listed twice")
                    else:
                        names.append(item)
                algorithms = tuple(names)
        levels: list[tuple[str, int]] = []
        if "level" in raw:
            table = ck.table(raw["level"], f"{path}.level", " like { gzip = 6, br = 5 }")
            for name, value in (table or {}).items():
                where = key(f"{path}.level", name)
                if name not in COMPRESS_LEVELS:
                    ck.error(where, "unknown algorithm" + suggest(str(name), COMPRESS_LEVELS))
                    continue
                low, high = COMPRESS_LEVELS[name]
                if isinstance(value, bool) or not isinstance(value, int) \
                        or not low <= value <= high:
                    ck.error(where, f"must be an integer from {low} to {high}, found "
                                    f"{describe(value)}")
                    continue
                levels.append((name, value))
        min_size = 256
        if "min_size" in raw:
            got = ck.convert(f"{path}.min_size", body_size, raw["min_size"])
            if got is not INVALID:
                min_size = got
        types: tuple[str, ...] | None = COMPRESS_TYPES
        if "types" in raw:
            if raw["types"] == []:
                ck.error(f"{path}.types", "must name at least one media type (or set "
                                          "compress = false)")
            else:
                types = self.string_list(raw["types"], f"{path}.types", _media_pattern)
        if ck.error_count != before:
            return None
        return CompressSpec(algorithms, tuple(levels), min_size, types or COMPRESS_TYPES)

    def forward_auth(self, raw: object, path: str) -> ForwardAuthSpec | None:
        """forward_auth = { url = "http://127.0.0.1:9000/verify", copy_headers = [...] }"""
        from fastproxy.forwardauth import ForwardAuth

        ck = self.ck
        table = ck.table(raw, path, ' like { url = "http://127.0.0.1:9000/verify" }')
        if table is None:
            return None
        ck.known_keys(table, path, FORWARD_AUTH_KEYS)
        before = ck.error_count
        if "url" not in table:
            ck.error(key(path, "url"), "missing required key")
        url = ck.convert(key(path, "url"), string, table.get("url", ""))
        timeout = ck.convert(key(path, "timeout"), _auth_timeout, table.get("timeout", "5s"))
        max_body = ck.convert(key(path, "max_body"), body_size, table.get("max_body", "64k"))
        names: dict[str, Any] = {}
        for field in ("copy_headers", "request_headers"):
            if field in table:
                value = table[field]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    ck.error(key(path, field), f"expected an array of header names, found "
                                               f"{describe(value)}")
                    names[field] = INVALID
                else:
                    names[field] = tuple(value)
        ca = None
        if "ca" in table:
            ca = ck.convert(key(path, "ca"), string, table["ca"])
            if ca is not INVALID:
                ca = os.path.join(getattr(ck, "base_dir", os.getcwd()), ca)
                if not os.path.isfile(ca):
                    ck.error(key(path, "ca"), f"no such file: {ca}")
                    ca = INVALID
                else:
                    try:
                        ssl.create_default_context(cafile=ca)
                    except (OSError, ssl.SSLError, ValueError) as e:
                        ck.error(key(path, "ca"), f"not a usable PEM CA bundle: {e}")
                        ca = INVALID
        if ck.error_count != before or INVALID in (url, timeout, max_body, ca,
                                                   *names.values()):
            return None
        spec = ForwardAuthSpec(url, timeout, names.get("copy_headers", ()),
                               names.get("request_headers"), max_body, ca)
        if ca is not None and not url.startswith("https://"):
            ck.error(key(path, "ca"), "only for an https:// url")
            return None
        try:
            ForwardAuth(url, timeout=timeout, copy_headers=spec.copy_headers,
                        request_headers=spec.request_headers, max_body=max_body)
        except ValueError as e:
            reason = str(e)
            field = next((f for f in ("copy_headers", "request_headers", "timeout", "max_body")
                          if f in reason), "url")
            ck.error(key(path, field), reason)
            return None
        return spec

    def basic_auth(self, raw: object, path: str) -> BasicAuthSpec | None:
        """basic_auth = { realm = "admin", users = { alice = "pbkdf2_sha256$..." } }"""
        from fastproxy.auth import parse_hash

        ck = self.ck
        table = ck.table(raw, path, ' like { realm = "admin", users = { NAME = "HASH" } }')
        if table is None:
            return None
        ck.known_keys(table, path, BASIC_AUTH_KEYS)
        before = ck.error_count
        realm = ck.convert(key(path, "realm"), string, table.get("realm", "restricted"))
        if realm is not INVALID and ('"' in realm or "\\" in realm or not realm.isprintable()):
            ck.error(key(path, "realm"), "must be printable, without quotes or backslashes")
        users = ck.table(table.get("users", MISSING), key(path, "users"),
                         " of user names to password hashes")
        pairs = []
        if users is not None:
            if not users:
                ck.error(key(path, "users"), "at least one user is needed")
            for user, stored in users.items():
                where = key(key(path, "users"), user)
                if ":" in user or not user.isprintable():
                    ck.error(where, "a user name may not hold ':' or control characters")
                    continue
                value = ck.convert(where, string, stored)
                if value is INVALID:
                    continue
                try:
                    parse_hash(value)
                except ValueError as e:
                    ck.error(where, str(e))
                    continue
                pairs.append((user, value))
        if ck.error_count != before or realm is INVALID:
            return None
        return BasicAuthSpec(realm, tuple(pairs))

    def limits(self, raw: object, path: str) -> tuple[str, ...] | None:
        names = self.string_list(raw, path, string)
        if names is None or self.rate_limits is None:
            return names
        for i, name in enumerate(names):
            if name not in self.rate_limits:
                defined = ", ".join(sorted(self.rate_limits)) or "none"
                where = f"{path}[{i}]" if isinstance(raw, list) else path
                self.ck.error(where, f"unknown rate limit {name!r} (defined: {defined}; "
                                     "define it as [limits.NAME])")
        return names

    def route_name(self, index: int, table: Mapping[str, Any], path: str) -> str | None:
        if "name" not in table:
            return None
        name = self.ck.convert(f"{path}.name", label_name, table["name"])
        if name is INVALID:
            return None
        if name in self.names:
            self.ck.error(
                f"{path}.name",
                f"duplicate route name {name!r} (already used by routes[{self.names[name]}])",
            )
            return None
        self.names[name] = index
        return str(name)

    # -- match ------------------------------------------------------------

    def match(self, raw: object, path: str) -> tuple[RouteMatch | None, _Captures]:
        ck = self.ck
        no_regex = _Captures(None, "match.path_regex", True)
        table = ck.table(raw, path)
        if table is None:
            return None, no_regex
        ck.known_keys(table, path, _MATCH_KEYS)

        def strings(name: str, convert: Any) -> tuple[Any, ...] | None:
            if name not in table:
                return None
            return self.string_list(table[name], key(path, name), convert)

        hosts = strings("host", match_host)
        paths = strings("path", lambda v: config_path(string(v), self.merge_slashes))
        prefixes = strings("path_prefix", lambda v: config_path(string(v), self.merge_slashes))

        given = [name for name in _PATH_KEYS if name in table]
        for extra in given[1:]:
            ck.error(
                key(path, extra),
                f"only one of path, path_prefix, path_regex may be given ({given[0]} is given too)",
            )
        whole_segments: Any = False
        if "whole_segments" in table:
            whole_segments = ck.convert(
                key(path, "whole_segments"), boolean, table["whole_segments"]
            )
            if "path_prefix" not in table:
                ck.error(key(path, "whole_segments"), "only allowed with path_prefix")
        regex_source: str | None = None
        captures = no_regex
        if "path_regex" in table:
            compiled = self.regex(table["path_regex"], key(path, "path_regex"))
            if compiled is None:
                captures = _Captures(None, "match.path_regex", False)
            else:
                regex_source = compiled.pattern
                captures = _Captures(compiled, "match.path_regex", True)

        methods = strings("methods", _method)
        headers: tuple[ValueTest, ...] = ()
        query: tuple[ValueTest, ...] = ()
        if "headers" in table:
            headers = self.value_tests(table["headers"], key(path, "headers"), header=True)
        if "query" in table:
            query = self.value_tests(table["query"], key(path, "query"), header=False)
        client_ips = strings("client_ip", client_net)
        listeners = strings("listener", string)
        if listeners is not None and self.listeners is not None:
            for i, name in enumerate(listeners):
                if name not in self.listeners:
                    where = key(path, "listener")
                    where += f"[{i}]" if isinstance(table["listener"], list) else ""
                    defined = ", ".join(sorted(self.listeners)) or "none"
                    ck.error(where, f"unknown listener {name!r} (defined: {defined})")

        tls: Any = None
        if "tls" in table:
            tls = ck.convert(key(path, "tls"), boolean, table["tls"])
            if tls is INVALID:
                tls = None
        client_cert: tuple[ValueTest, ...] = ()
        if "client_cert" in table:
            client_cert = self.cert_tests(table["client_cert"], key(path, "client_cert"))
            if tls is False:
                ck.error(key(path, "client_cert"), "can never match with tls = false")

        match = RouteMatch(
            hosts=hosts,
            paths=paths or (),
            path_prefixes=prefixes or (),
            whole_segments=whole_segments is True,
            path_regex=regex_source,
            methods=methods,
            headers=headers,
            query=query,
            client_ips=client_ips,
            listeners=listeners,
            tls=tls,
            client_cert=client_cert,
        )
        return match, captures

    def cert_tests(self, raw: object, path: str) -> tuple[ValueTest, ...]:
        """client_cert = { subject = "CN=alice", fingerprint = { regex = "..." }, ... }"""
        ck = self.ck
        table = ck.table(raw, path, " of client-certificate facts to " + _VALUE_TEST_HINT)
        if table is None:
            return ()
        ck.known_keys(table, path, CLIENT_CERT_FACTS)
        result = []
        for name, value in table.items():
            if name in CLIENT_CERT_FACTS:
                test = self.value_test(name, value, key(path, name), header=True)
                if test is not None:
                    result.append(test)
        return tuple(result)

    def string_list(self, raw: object, path: str, convert: Any) -> tuple[Any, ...] | None:
        """A string or a non-empty array of them, each converted, no duplicates."""
        ck = self.ck
        if isinstance(raw, str):
            value = ck.convert(path, convert, raw)
            return None if value is INVALID else (value,)
        if not isinstance(raw, (list, tuple)):
            ck.error(path, f"expected a string or an array of strings, found {describe(raw)}")
            return None
        if not raw:
            ck.error(path, "must not be empty (leave the key out to match anything)")
            return None
        result: list[Any] = []
        seen: dict[Any, int] = {}
        for i, item in enumerate(raw):
            value = ck.convert(f"{path}[{i}]", convert, item)
            if value is INVALID:
                continue
            if value in seen:
                ck.error(f"{path}[{i}]", f"duplicate of {path.rsplit('.', 1)[-1]}[{seen[value]}]")
                continue
            seen[value] = i
            result.append(value)
        return tuple(result) if len(result) == len(raw) else None

    def regex(self, raw: object, path: str) -> re.Pattern[str] | None:
        compiled = self.ck.convert(path, _compile, raw)
        if compiled is INVALID:
            return None
        assert isinstance(compiled, re.Pattern)
        if not compiled.pattern.isascii():
            # Paths are matched in their normalized form, where "é" is "%C3%A9".
            self.ck.error(path, "must be ASCII: a path is matched percent-encoded "
                                "(write é as %C3%A9)")
            return None
        clashes = [name for name in compiled.groupindex if name in VARIABLES]
        if clashes:
            self.ck.error(
                path,
                f"group name {clashes[0]!r} is also a template variable; rename the group",
            )
            return None
        return compiled

    def value_tests(self, raw: object, path: str, *, header: bool) -> tuple[ValueTest, ...]:
        ck = self.ck
        table = ck.table(raw, path, " of names to " + _VALUE_TEST_HINT)
        if table is None:
            return ()
        result: list[ValueTest] = []
        seen: dict[str, str] = {}
        for written, value in table.items():
            where = _header_key(path, written) if header else key(path, written)
            name = ck.convert(where, _header_name if header else _query_name, written)
            if name is INVALID:
                continue
            if header:
                name = name.lower()
                if name in seen:
                    ck.error(where, f"duplicate header name (also given as {seen[name]!r})")
                    continue
                seen[name] = written
            test = self.value_test(name, value, where, header=header)
            if test is not None:
                result.append(test)
        return tuple(result)

    def value_test(self, name: str, value: object, where: str, *, header: bool) -> ValueTest | None:
        if value is True:
            return ValueTest(name, "present", None)
        if value is False:
            return ValueTest(name, "absent", None)
        if isinstance(value, str):
            if header and _VALUE_FORBIDDEN_RE.search(value):
                self.ck.error(
                    where,
                    f"can never match: header values hold no control characters, found {value!r}",
                )
                return None
            return ValueTest(name, "equals", value)
        if isinstance(value, Mapping):
            self.ck.known_keys(value, where, VALUE_TEST_KEYS)
            if "regex" not in value:
                self.ck.error(f"{where}.regex", "missing required key")
                return None
            compiled = self.ck.convert(f"{where}.regex", _compile, value["regex"])
            if compiled is INVALID:
                return None
            return ValueTest(name, "regex", compiled.pattern)
        self.ck.error(where, f"expected {_VALUE_TEST_HINT}, found {describe(value)}")
        return None

    # -- actions ----------------------------------------------------------

    def upstream(self, raw: object, path: str) -> str | None:
        name = self.ck.convert(path, string, raw)
        if name is INVALID:
            return None
        if self.upstreams is not None and name not in self.upstreams:
            defined = ", ".join(sorted(self.upstreams)) or "none"
            self.ck.error(path, f"unknown upstream {name!r} (defined: {defined})")
            return None
        return str(name)

    def template(
        self,
        raw: object,
        path: str,
        captures: _Captures,
        forbidden: re.Pattern[str] | None = _VALUE_FORBIDDEN_RE,
    ) -> Template | None:
        def convert(value: object) -> Template:
            text = string(value)
            template = parse_template(
                text, captures.regex, captures.key, check_captures=captures.checked
            )
            for part in template.parts:
                bad = forbidden.search(part) if forbidden and isinstance(part, str) else None
                if bad is not None:
                    raise ValueError(f"must not contain control characters, found {text!r}")
            return template

        result = self.ck.convert(path, convert, raw)
        return None if result is INVALID else result

    def redirect(self, raw: object, path: str, captures: _Captures) -> Redirect | None:
        ck = self.ck
        table = ck.table(raw, path, ' like { to = "https://{host}{request_uri}", status = 301 }')
        if table is None:
            return None
        ck.known_keys(table, path, _REDIRECT_KEYS)
        to = None
        if "to" not in table:
            ck.error(f"{path}.to", "missing required key")
        elif table["to"] == "":
            ck.error(f"{path}.to", "must not be empty")
        else:
            to = self.template(table["to"], f"{path}.to", captures)
        status = table.get("status", 302)
        if isinstance(status, bool) or not isinstance(status, int):
            ck.error(f"{path}.status", f"expected an integer, found {describe(status)}")
            return None
        if status not in _REDIRECT_STATUSES:
            allowed = ", ".join(map(str, _REDIRECT_STATUSES))
            ck.error(f"{path}.status", f"must be one of {allowed}, found {status}")
            return None
        return None if to is None else Redirect(to, status)

    def respond(self, raw: object, path: str, captures: _Captures) -> Respond | None:
        ck = self.ck
        table = ck.table(raw, path, ' like { status = 200, body = "ok" }')
        if table is None:
            return None
        before = ck.error_count
        ck.known_keys(table, path, _RESPOND_KEYS)
        status = table.get("status", 200)
        if isinstance(status, bool) or not isinstance(status, int):
            ck.error(f"{path}.status", f"expected an integer, found {describe(status)}")
        elif not 200 <= status <= 599:
            ck.error(f"{path}.status", f"must be from 200 to 599, found {status}")
        # A body is any text, newlines included: it is never part of the head.
        body = self.template(table.get("body", ""), f"{path}.body", captures, forbidden=None)
        if body is not None and body.parts and status in _NO_BODY_STATUSES:
            ck.error(f"{path}.body", f"must be empty: a {status} response has no body")
        headers: tuple[tuple[str, Template], ...] = ()
        if "headers" in table:
            headers = self.header_values(
                table["headers"], f"{path}.headers", captures, request=False
            )
        if ck.error_count != before or body is None:
            return None
        return Respond(status, body, headers)

    # -- rewrite and header edits -----------------------------------------

    def rewrite(self, raw: object, path: str, captures: _Captures) -> Rewrite | None:
        ck = self.ck
        table = ck.table(raw, path)
        if table is None:
            return None
        before = ck.error_count
        ck.known_keys(table, path, _REWRITE_KEYS)

        def prefix(name: str) -> str | None:
            if name not in table:
                return None
            convert = lambda v: config_path(string(v), self.merge_slashes)  # noqa: E731
            result = ck.convert(f"{path}.{name}", convert, table[name])
            return None if result is INVALID else str(result)

        strip_prefix = prefix("strip_prefix")
        regex: re.Pattern[str] | None = None
        replace = None
        if "regex" in table:
            regex = self.regex(table["regex"], f"{path}.regex")
            if "replace" not in table:
                ck.error(f"{path}.replace", "missing: rewrite.regex needs a replace template")
        if "replace" in table:
            if "regex" not in table:
                ck.error(f"{path}.replace", "only allowed with rewrite.regex")
            else:
                groups = _Captures(regex, "rewrite.regex", regex is not None)
                # A path may hold any character but controls; the result is normalized again.
                replace = self.template(table["replace"], f"{path}.replace", groups, _CONTROL_RE)
        add_prefix = prefix("add_prefix")

        set_query: list[tuple[str, Template]] = []
        if "set_query" in table:
            items = ck.table(table["set_query"], f"{path}.set_query", " of argument names")
            for name, value in (items or {}).items():
                where = key(f"{path}.set_query", name)
                if ck.convert(where, _query_name, name) is not INVALID:
                    template = self.template(value, where, captures, _CONTROL_RE)
                    if template is not None:
                        set_query.append((name, template))
        remove_query: tuple[str, ...] | None = ()
        if "remove_query" in table:
            remove_query = self.string_list(
                table["remove_query"],
                f"{path}.remove_query",
                lambda v: _query_name(string(v)),
            )
        host = None
        if "host" in table:
            host = self.template(table["host"], f"{path}.host", captures)
            if host is not None:
                self.check_host_template(host, f"{path}.host")

        if ck.error_count != before:
            return None
        rewrite = Rewrite(
            strip_prefix=strip_prefix,
            regex=None if regex is None else regex.pattern,
            replace=replace,
            add_prefix=add_prefix,
            set_query=tuple(set_query),
            remove_query=remove_query or (),
            host=host,
        )
        # An empty [routes.rewrite] changes nothing: say so with None, like no table.
        return None if rewrite == _NO_REWRITE else rewrite

    def check_host_template(self, template: Template, path: str) -> None:
        if not template.parts:
            self.ck.error(path, "must not be empty")
        elif all(isinstance(part, str) for part in template.parts):
            self.ck.convert(path, _host_header, "".join(map(str, template.parts)))
        else:
            for part in template.parts:
                bad = _HOST_LITERAL_FORBIDDEN_RE.search(part) if isinstance(part, str) else None
                if bad is not None:
                    self.ck.error(
                        path, f"must not contain {bad.group()!r}, found {template.source!r}"
                    )
                    return

    def header_edits(
        self, raw: object, path: str, captures: _Captures, *, request: bool
    ) -> HeaderEdits | None:
        ck = self.ck
        table = ck.table(raw, path)
        if table is None:
            return None
        before = ck.error_count
        ck.known_keys(table, path, _EDIT_KEYS)
        remove: tuple[str, ...] | None = ()
        if "remove" in table:

            def removable(value: object) -> str:
                return _edit_name(string(value), request=request)

            remove = self.string_list(table["remove"], f"{path}.remove", removable)
        sets: tuple[tuple[str, Template], ...] = ()
        adds: tuple[tuple[str, Template], ...] = ()
        if "set" in table:
            sets = self.header_values(table["set"], f"{path}.set", captures, request=request)
        if "add" in table:
            adds = self.header_values(table["add"], f"{path}.add", captures, request=request)
        if ck.error_count != before or not (remove or sets or adds):
            return None
        return HeaderEdits(remove or (), sets, adds)

    def header_values(
        self, raw: object, path: str, captures: _Captures, *, request: bool
    ) -> tuple[tuple[str, Template], ...]:
        ck = self.ck
        table = ck.table(raw, path, " of header names to values")
        if table is None:
            return ()
        result: list[tuple[str, Template]] = []
        seen: dict[str, str] = {}
        for name, value in table.items():
            where = _header_key(path, name)
            if ck.convert(where, lambda n: _edit_name(n, request=request), name) is INVALID:
                continue
            if name.lower() in seen:
                ck.error(where, f"duplicate header name (also given as {seen[name.lower()]!r})")
                continue
            seen[name.lower()] = name
            template = self.template(value, where, captures)
            if template is not None:
                result.append((name, template))
        return tuple(result)


_NO_REWRITE: Final = Rewrite(None, None, None, None, (), (), None)


def parse_routes(
    ck: KeyChecker,
    raw: object,
    *,
    merge_slashes: bool,
    upstreams: Collection[str] | None,
    listeners: Collection[str] | None,
    rate_limits: Collection[str] | None = (),
    caches: Collection[str] | None = (),
) -> list[Route]:
    """Check the ``routes`` array (``MISSING`` when absent) and build the valid routes.

    ``upstreams`` and ``listeners`` are the names routes may refer to, or None
    when they are not known (their section was refused): references are then
    not checked, so that one mistake does not show up twice.
    """
    if raw is MISSING:
        ck.error("routes", "missing: at least one [[routes]] table is required")
        return []
    items = ck.array(raw, "routes", " of tables ([[routes]])")
    if items is None:
        return []
    if not items:
        ck.error("routes", "at least one route is required")
    parser = _RouteParser(ck, merge_slashes, upstreams, listeners, rate_limits, caches)
    routes = [parser.route(i, item) for i, item in enumerate(items)]
    return [route for route in routes if route is not None]


# --------------------------------------------------------------------------
# Shadowing: a route no request can reach
#
# Each test below is conservative: it answers True only when every request
# the later route matches is certainly matched by the earlier one, so a
# warning is never wrong (some unreachable routes go unreported).


def _host_covers(a: str, b: str) -> bool:
    # "*.x" stands for one or more labels before ".x": it covers "y.x", "a.b.x", "*.y.x".
    return a == b or (a.startswith("*.") and b.endswith(a[1:]))


def _prefix_matches(prefix: str, whole_segments: bool, path: str) -> bool:
    if not path.startswith(prefix):
        return False
    if not whole_segments or prefix.endswith("/") or len(path) == len(prefix):
        return True
    return path[len(prefix)] == "/"


def _prefix_covers(a: str, a_whole: bool, b: str, b_whole: bool) -> bool:
    if not b.startswith(a):
        return False
    if not a_whole or a.endswith("/"):
        return True
    rest = b[len(a) :]
    # b = a + "/...": every match continues a at a segment boundary. b == a:
    # only when b stops at boundaries too, else b matches "/apix" and a does not.
    return rest.startswith("/") or (not rest and b_whole)


def _paths_cover(a: RouteMatch, b: RouteMatch) -> bool:
    if not a.paths and not a.path_prefixes and a.path_regex is None:
        return True
    if "/" in a.path_prefixes:
        return True  # every normalized path starts with "/"
    if a.path_regex is not None:
        return a.path_regex == b.path_regex
    if b.path_regex is not None or not (b.paths or b.path_prefixes):
        return False
    exact_ok = all(
        path in a.paths or any(_prefix_matches(p, a.whole_segments, path) for p in a.path_prefixes)
        for path in b.paths
    )
    return exact_ok and all(
        any(_prefix_covers(p, a.whole_segments, bp, b.whole_segments) for p in a.path_prefixes)
        for bp in b.path_prefixes
    )


def _net_inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    # Spelled out per version: subnet_of raises TypeError across versions.
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _nets_cover(a: Sequence[IPNetwork], b: Sequence[IPNetwork]) -> bool:
    return all(any(_net_inside(bn, an) for an in a) for bn in b)


def shadows(a: RouteMatch, b: RouteMatch) -> bool:
    """True when every request ``b`` matches is also matched by ``a``."""
    if a.hosts is not None and (
        b.hosts is None or not all(any(_host_covers(ah, bh) for ah in a.hosts) for bh in b.hosts)
    ):
        return False
    if not _paths_cover(a, b):
        return False
    if a.methods is not None and (b.methods is None or not set(b.methods) <= set(a.methods)):
        return False
    if not set(a.headers) <= set(b.headers) or not set(a.query) <= set(b.query):
        return False
    if (a.tls is not None and a.tls != b.tls) or not set(a.client_cert) <= set(b.client_cert):
        return False
    if a.client_ips is not None and (
        b.client_ips is None or not _nets_cover(a.client_ips, b.client_ips)
    ):
        return False
    return a.listeners is None or (
        b.listeners is not None and set(b.listeners) <= set(a.listeners)
    )


def _covering_host_keys(host: str) -> list[str]:
    """Keys of the host patterns that may cover `host`: itself, and ".x" for every
    wildcard "*.x" that it ends with."""
    name = host[2:] if host.startswith("*.") else host
    keys = [host]
    if host.startswith("*."):
        keys.append(host[1:])
    keys.extend(name[i:] for i in range(len(name)) if name[i] == ".")
    return keys


def route_warnings(routes: Sequence[Route]) -> list[tuple[str, str]]:
    """(key, reason) for every route that an earlier route leaves unreachable.

    Only earlier routes that can cover the later one's first host are compared
    (found through an index by host), so thousands of host routes stay cheap.
    """
    result: list[tuple[str, str]] = []
    any_host: list[Route] = []
    by_key: dict[str, list[Route]] = {}  # exact host, or ".x" for "*.x"
    for later in routes:
        hosts = later.match.hosts
        if hosts is None:
            candidates = any_host
        else:
            found = list(any_host)
            for key in _covering_host_keys(hosts[0]):
                found.extend(by_key.get(key, ()))
            candidates = sorted(found, key=lambda r: r.index)
        for earlier in candidates:
            if shadows(earlier.match, later.match):
                if earlier.match.matches_everything:
                    what = "matches every request"
                else:
                    what = "matches every request this route matches"
                result.append((f"routes[{later.index}]", f"unreachable: {earlier.label} {what}"))
                break
        if hosts is None:
            any_host.append(later)
        else:
            for h in hosts:
                by_key.setdefault(h[1:] if h.startswith("*.") else h, []).append(later)
    return result
