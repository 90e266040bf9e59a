"""What a shared HTTP cache may store, for how long, and when it may reuse it.

Pure policy for an RFC 9111 *shared* cache: no I/O, no clock (every time is
passed in, as wall-clock float seconds like ``time.time()``), no storage.
Headers are ``Sequence[tuple[bytes, bytes]]`` (name as received, value),
statuses are ints. The storage (the C index) and the request path call these
functions; each decision comes with a short reason for logs, the Cache-Status
``detail`` parameter (RFC 9211) and ``explain`` output.

Where the RFCs leave a choice, the choice and its reason sit beside the code
(search for "Choice:"). In short:

* Only GET responses are stored; answering HEAD from a stored GET, Range and
  206 handling are the caller's job. 206 and anything with Content-Range is
  never stored as a full response.
* ``private`` and ``no-cache`` with a field list are treated like their
  unqualified forms (RFC 9111 §5.2.2.4 and §5.2.2.7 note that most caches
  do this): ``private="x"`` is not stored; ``no-cache="x"`` is revalidated on
  every use. Both are the safe reading.
* ``Set-Cookie`` responses are not stored unless ``Policy.store_set_cookie``
  (nginx and Varnish refuse them by default; RFC 9111 §7.3 allows them).
* ``s-maxage`` implies proxy-revalidate (§5.2.2.10), so a response with
  s-maxage is never served stale: not by stale-while-revalidate, not by
  stale-if-error, not by a client's max-stale.
* A directive repeated with different values counts as invalid, so a
  repeated max-age makes the response stale (§4.2.1 allows "first
  occurrence" or "stale"; stale is the restrictive one).
"""

from __future__ import annotations

import calendar
import enum
import math
import re
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from types import MappingProxyType
from urllib.parse import urljoin, urlsplit

__all__ = [
    "DEFAULT_POLICY",
    "DELTA_SECONDS_MAX",
    "FWD_REASONS",
    "HEURISTICALLY_CACHEABLE",
    "Decision",
    "Freshness",
    "Headers",
    "Policy",
    "RequestDirectives",
    "Verdict",
    "cache_status",
    "client_conditional",
    "current_age",
    "format_age",
    "format_http_date",
    "freshens",
    "freshness",
    "invalidations",
    "is_error_status",
    "merge_not_modified",
    "not_modified_headers",
    "parse_cache_control",
    "parse_http_date",
    "secondary_key",
    "serve",
    "storable",
    "usable_on_error",
    "validators",
    "vary_names",
]

Headers = Sequence[tuple[bytes, bytes]]

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
DELTA_SECONDS_MAX = 2147483648

# RFC 9110 §15.1: status codes defined as heuristically cacheable.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

# Status codes whose caching requirements this module implements: the final
# codes of RFC 9110 (none but 206 and 304 has special caching rules, and those
# two are never stored here) plus 429 (RFC 6585) and 451 (RFC 7725). Used only
# for must-understand (RFC 9111 §5.2.2.3).
_UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205}
    | {300, 301, 302, 303, 305, 307, 308}
    | set(range(400, 418)) | {421, 422, 426, 429, 451}
    | {500, 501, 502, 503, 504, 505}
)

# RFC 9110 §9.2.1. Anything else is unsafe or of unknown safety (RFC 9111 §4.4).
_SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

# RFC 5861 §4: "an error is any situation that would result in a 500, 502,
# 503, or 504 HTTP response status code being returned".
_ERROR_STATUSES = frozenset({500, 502, 503, 504})

# RFC 9211 §2.2.
FWD_REASONS = frozenset(
    {"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"})

# RFC 9110 §7.6.1 hop-by-hop fields and RFC 9111 §3.1 proxy-specific fields:
# never taken from a 304 into a stored response.
_NOT_STORED = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
    b"proxy-authenticate", b"proxy-authentication-info", b"proxy-authorization",
})
# RFC 9111 §3.2: Content-Length is never updated. Choice: neither are the
# fields that describe the stored bytes themselves (the "header fields that
# the cache's stored response depends upon"): a 304 naming another content
# coding or a range must not relabel the body we hold.
_KEEP_STORED = frozenset({b"content-length", b"content-encoding", b"content-range"})

# RFC 9110 §15.4.5: what a 304 carries (Last-Modified only without ETag).
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"})

_OWS = b" \t"
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_INTEGER_MAX = 999_999_999_999_999
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def _values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of the field ``name`` (lower-case), in order."""
    return [value for n, value in headers if n.lower() == name]


def _has(headers: Headers, name: bytes) -> bool:
    return any(n.lower() == name for n, _ in headers)


def _secs(seconds: float) -> str:
    """Seconds for people: whole numbers without a fraction."""
    if seconds == math.inf:
        return "unbounded"
    rounded = round(seconds, 1)
    if rounded == int(rounded):
        return "%d s" % rounded
    return "%.1f s" % rounded


# -- delta-seconds and Cache-Control (RFC 9111 §1.2.2, §5.2) ----------------------------


def _delta(value: str | None) -> int | None:
    """A delta-seconds argument (``1*DIGIT``, token or quoted form), or None if invalid."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    digits = value.lstrip("0") or "0"
    if len(digits) > 10:  # also keeps int() away from huge strings
        return DELTA_SECONDS_MAX
    return min(int(digits), DELTA_SECONDS_MAX)


def _member_end(line: str, i: int) -> int:
    """Index of the next list separator at or after ``i``, skipping quoted-strings."""
    n = len(line)
    quoted = False
    while i < n:
        c = line[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ",":
            return i
        i += 1
    return n


def _quoted_string(line: str, i: int) -> tuple[str, int] | None:
    """The unescaped content of the quoted-string at ``line[i] == '"'`` and the
    index after it, or None when it is not terminated."""
    out: list[str] = []
    i += 1
    n = len(line)
    while i < n:
        c = line[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            i += 1
            if i == n:
                return None
            c = line[i]
        out.append(c)
        i += 1
    return None


def _directives(line: str) -> Iterator[tuple[str, str | None]]:
    """``#( token [ "=" ( token / quoted-string ) ] )`` as (lower-case name, value).

    Strict where leniency would lengthen a lifetime: no whitespace around "=",
    and a malformed argument is returned raw (so delta-seconds rejects it and
    the response counts as stale). A member that does not start with a token
    is skipped; text after a directive's name or argument makes the argument
    invalid but keeps the directive (``no-store junk`` still means no-store).
    """
    i, n = 0, len(line)
    while i < n:
        if line[i] in " \t,":
            i += 1
            continue
        j = i
        while j < n and line[j] in _TCHAR:
            j += 1
        end = _member_end(line, j)
        if j == i:
            i = end
            continue
        name = line[i:j].lower()
        value: str | None = None
        if j < n and line[j] == "=":
            raw = line[j + 1:end].rstrip(" \t")
            value = raw
            if raw.startswith('"'):
                parsed = _quoted_string(raw, 0)
                if parsed is not None and parsed[1] == len(raw):
                    value = parsed[0]
        yield name, value
        i = end


def parse_cache_control(values: Iterable[bytes]) -> dict[str, str | None]:
    """Cache-Control field lines, combined, as ``{directive: argument}`` (RFC 9111 §5.2).

    Names are lower-cased; quoted-string arguments are unquoted; a directive
    without an argument maps to None; unknown directives are kept. A directive
    repeated with a different argument maps to ``""``, which every directive
    taking delta-seconds reads as invalid: RFC 9111 §4.2.1 lets a cache either
    use the first occurrence or consider the response stale, and this takes
    the restrictive reading. Never raises on any bytes.
    """
    out: dict[str, str | None] = {}
    for raw in values:
        for name, value in _directives(raw.decode("latin-1")):
            if name not in out:
                out[name] = value
            elif out[name] != value:
                out[name] = ""
    return out


def _cache_control(headers: Headers) -> dict[str, str | None]:
    return parse_cache_control(_values(headers, b"cache-control"))


# -- HTTP-date (RFC 9110 §5.6.7) -------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE = re.compile(_DAY + r", (\d\d) ([a-z]{3}) (\d{4}) " + _TIME + r" gmt", re.ASCII)
_RFC850_DATE = re.compile(
    r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), "
    r"(\d\d)-([a-z]{3})-(\d\d) " + _TIME + r" gmt", re.ASCII)
_ASCTIME_DATE = re.compile(_DAY + r" ([a-z]{3}) ( \d|\d\d) " + _TIME + r" (\d{4})", re.ASCII)
_FIFTY_YEARS = 50 * 365.2425 * 86400


def _timestamp(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float | None:
    if not 1 <= year <= 9999 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hh > 23 or mm > 59 or ss > 60:  # 60: a leap second
        return None
    return float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)))


def parse_http_date(value: bytes, now: float | None = None) -> float | None:
    """An HTTP-date as a Unix timestamp, or None when it is not one.

    Accepts IMF-fixdate and both obsolete formats (rfc850-date, asctime-date),
    as recipients MUST. Matched case-insensitively (RFC 9111 §4.2 SHOULD);
    any zone but GMT is invalid. The day name is not checked against the date.
    A two-digit rfc850 year that would be more than 50 years after ``now`` is
    taken from the previous century (RFC 9110 §5.6.7); without ``now`` the
    years 70-99 are 19xx and 00-69 are 20xx.
    """
    text = value.decode("latin-1").strip(" \t").lower()
    match = _IMF_FIXDATE.fullmatch(text)
    if match:
        day, mon, year, hh, mm, ss = match.groups()
        month = _MONTHS.get(mon)
        if month is None:
            return None
        return _timestamp(int(year), month, int(day), int(hh), int(mm), int(ss))
    match = _ASCTIME_DATE.fullmatch(text)
    if match:
        mon, day, hh, mm, ss, year = match.groups()
        month = _MONTHS.get(mon)
        if month is None:
            return None
        return _timestamp(int(year), month, int(day.strip()), int(hh), int(mm), int(ss))
    match = _RFC850_DATE.fullmatch(text)
    if match is None:
        return None
    day, mon, yy, hh, mm, ss = match.groups()
    month = _MONTHS.get(mon)
    if month is None:
        return None
    if now is None:
        year = int(yy) + (1900 if int(yy) >= 70 else 2000)
        return _timestamp(year, month, int(day), int(hh), int(mm), int(ss))
    this_year = time.gmtime(now).tm_year
    best: float | None = None
    for century in (this_year // 100 - 1, this_year // 100, this_year // 100 + 1):
        stamp = _timestamp(century * 100 + int(yy), month, int(day), int(hh), int(mm), int(ss))
        if stamp is not None and stamp <= now + _FIFTY_YEARS:
            best = stamp
    return best


def format_http_date(timestamp: float) -> bytes:
    """IMF-fixdate for a Unix timestamp, rounded down to the second (as the
    worker clock formats Date)."""
    return formatdate(math.floor(timestamp), usegmt=True).encode("ascii")


def _first_date(headers: Headers, name: bytes, now: float | None) -> float | None:
    lines = _values(headers, name)
    return parse_http_date(lines[0], now) if lines else None


def format_age(seconds: float) -> bytes:
    """The Age field value for a current_age (RFC 9111 §5.1): whole seconds, never
    negative, at most 2^31."""
    return b"%d" % min(max(0, math.floor(seconds)), DELTA_SECONDS_MAX)


# -- settings and request directives --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """Operator settings. Everything not here follows the RFCs.

    heuristic_fraction, heuristic_max:
        without explicit freshness, a heuristically cacheable (or ``public``)
        response is fresh for this fraction of the time since Last-Modified, at
        most heuristic_max seconds (RFC 9111 §4.2.2 suggests 10%).
    default_ttl_by_status:
        like nginx ``proxy_cache_valid``: a lifetime in seconds per status code,
        used only when the response has no explicit freshness (no s-maxage,
        max-age or Expires). Choice: it takes precedence over the heuristic and
        makes statuses that are not heuristically cacheable (302, 500...)
        storable: a reverse proxy speaks for its origin, so this is the origin's
        out-of-band instruction (RFC 9111 §4.2.4, "configuration in accordance
        with an out-of-band contract").
    store_set_cookie:
        store responses carrying Set-Cookie. Off by default, as in nginx and
        Varnish: one user's cookie must not be served to everyone. RFC 9111
        §7.3 allows storing them; origins then need ``private`` or ``no-cache``.
    ignore_no_cache_request:
        like Varnish (and nginx without proxy_cache_bypass), let a client's
        ``no-cache`` (or ``Pragma: no-cache``) not force a revalidation. Request
        directives are advisory (RFC 9111 §5.2.1); off by default.
    max_object_size:
        responses whose Content-Length exceeds this many bytes are not stored;
        the caller enforces it for bodies of unknown length while streaming.
    stale_while_revalidate, stale_if_error:
        seconds used when the response has no such directive (RFC 5861), like
        Varnish's grace and nginx's ``proxy_cache_use_stale``; 0 means none.
        They never override must-revalidate, proxy-revalidate, s-maxage or
        no-cache.
    """

    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    default_ttl_by_status: Mapping[int, float] = field(default_factory=dict)
    store_set_cookie: bool = False
    ignore_no_cache_request: bool = False
    max_object_size: int | None = None
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.heuristic_fraction <= 1.0:
            raise ValueError("heuristic_fraction must be between 0 and 1")
        for name in ("heuristic_max", "stale_while_revalidate", "stale_if_error"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_object_size is not None and self.max_object_size < 0:
            raise ValueError("max_object_size must be >= 0")
        ttls = dict(self.default_ttl_by_status)
        for status, ttl in ttls.items():
            if not 100 <= status <= 999 or not ttl >= 0:
                raise ValueError(f"default_ttl_by_status: bad entry {status}: {ttl}")
        object.__setattr__(self, "default_ttl_by_status", MappingProxyType(ttls))


DEFAULT_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """The cache directives of a request (RFC 9111 §5.2.1, RFC 5861 §4).

    Durations are seconds or None when absent. ``max_stale`` is ``math.inf``
    for a max-stale without argument. An argument that is not delta-seconds
    makes the directive count as absent: an invalid max-stale grants nothing
    and an invalid max-age or min-fresh asks for nothing.
    """

    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None
    max_stale: float | None = None
    min_fresh: float | None = None
    only_if_cached: bool = False
    stale_if_error: float | None = None
    pragma_no_cache: bool = False  # no_cache came from Pragma (for explain)

    @classmethod
    def from_headers(cls, headers: Headers) -> RequestDirectives:
        """Read Cache-Control; ``Pragma: no-cache`` counts as ``no-cache`` only when
        the request has no Cache-Control at all (RFC 7234 §5.4; RFC 9111 §5.4
        deprecates Pragma, which HTTP/1.0 clients still send)."""
        lines = _values(headers, b"cache-control")
        if lines:
            cc = parse_cache_control(lines)
            pragma = False
        else:
            cc = {}
            pragma = any(name == "no-cache"
                         for line in _values(headers, b"pragma")
                         for name, _ in _directives(line.decode("latin-1")))
        max_stale: float | None = None
        if "max-stale" in cc:
            max_stale = math.inf if cc["max-stale"] is None else _delta(cc["max-stale"])
        return cls(
            no_cache="no-cache" in cc or pragma,
            no_store="no-store" in cc,
            max_age=_delta(cc.get("max-age")),
            max_stale=max_stale,
            min_fresh=_delta(cc.get("min-fresh")),
            only_if_cached="only-if-cached" in cc,
            stale_if_error=_delta(cc.get("stale-if-error")),
            pragma_no_cache=pragma,
        )


# -- storing (RFC 9111 §3) -------------------------------------------------------------


def vary_names(response_headers: Headers) -> tuple[bytes, ...] | None:
    """The request fields a response varies on: lower-cased, deduplicated, sorted.

    None when the response can never be selected: ``Vary: *`` (RFC 9111 §4.1),
    or a member that is not a field name (we cannot tell what it nominates).
    """
    names: set[bytes] = set()
    for line in _values(response_headers, b"vary"):
        for member in line.split(b","):
            member = member.strip(_OWS)
            if not member:
                continue
            if member == b"*" or not _TOKEN.fullmatch(member):
                return None
            names.add(member.lower())
    return tuple(sorted(names))


def secondary_key(names: Sequence[bytes], request_headers: Headers) -> bytes:
    """The selecting request fields for ``names`` (from vary_names) as one key.

    Normalized only as RFC 9111 §4.1 allows for every field: the lines of one
    field are trimmed of surrounding whitespace and combined with ", ". An
    absent field differs from an empty one. Field-specific normalization (for
    example reducing Accept-Encoding to the codings the proxy serves) is the
    caller's, done on the request before this. The result reads like
    ``accept-encoding="gzip, br"; cookie`` (cookie absent) and is unambiguous:
    names are tokens and values are quoted with escapes.
    """
    parts: list[bytes] = []
    for name in names:
        lines = [v.strip(_OWS) for n, v in request_headers if n.lower() == name]
        if lines:
            value = b", ".join(lines).replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            parts.append(b'%s="%s"' % (name, value))
        else:
            parts.append(name)
    return b"; ".join(parts)


def _content_length(headers: Headers) -> int | None:
    lines = _values(headers, b"content-length")
    if not lines:
        return None
    value = lines[0].strip(_OWS)
    return int(value) if value.isdigit() and len(value) <= 19 else None


def storable(method: bytes, status: int, request_headers: Headers,
             response_headers: Headers, policy: Policy = DEFAULT_POLICY) -> tuple[bool, str]:
    """Whether a shared cache may store this response (RFC 9111 §3), and why.

    Only GET is stored: a HEAD is answered from a stored GET by the caller.
    206 and responses with Content-Range are never stored as full responses.
    ``no-cache`` responses are storable (they are revalidated on every use).
    Choice: a response with no explicit freshness, no Last-Modified for a
    heuristic and no validator is refused: it could never be reused (RFC 9111
    §3 notes caches may skip such responses).
    """
    if method != b"GET":
        return False, "method %s is not cached" % method.decode("latin-1")
    if not 200 <= status <= 999:
        return False, "status %d is not final" % status
    if status == 206:
        return False, "206 partial content is not stored"
    if _has(response_headers, b"content-range"):
        return False, "Content-Range: partial content is not stored"
    if status == 304:
        return False, "304 is not stored"
    cc = _cache_control(response_headers)
    understood = status in _UNDERSTOOD_STATUSES
    if "must-understand" in cc and not understood:
        return False, "must-understand and status %d is not understood" % status
    # RFC 9111 §5.2.2.3: must-understand with an understood status overrides no-store.
    if "no-store" in cc and not ("must-understand" in cc and understood):
        return False, "response no-store"
    if "no-store" in _cache_control(request_headers):
        return False, "request no-store"
    if "private" in cc:
        return False, "private"
    if _has(request_headers, b"authorization") and not (
            "public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return False, "Authorization without public, s-maxage or must-revalidate"
    if vary_names(response_headers) is None:
        return False, "Vary: *" if any(
            m.strip(_OWS) == b"*" for v in _values(response_headers, b"vary")
            for m in v.split(b",")) else "Vary names a field that is not a token"
    if not policy.store_set_cookie and _has(response_headers, b"set-cookie"):
        return False, "Set-Cookie"
    length = _content_length(response_headers)
    if policy.max_object_size is not None and length is not None \
            and length > policy.max_object_size:
        return False, "Content-Length %d over max_object_size %d" % (
            length, policy.max_object_size)
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            return True, "explicit freshness (%s)" % directive
    if _has(response_headers, b"expires"):
        return True, "explicit freshness (Expires)"
    if status in policy.default_ttl_by_status:
        return True, "default_ttl for status %d" % status
    if "public" in cc:
        why = "public"
    elif status in HEURISTICALLY_CACHEABLE:
        why = "heuristically cacheable status %d" % status
    else:
        return False, "no explicit freshness and status %d is not heuristically cacheable" % status
    if not (_has(response_headers, b"last-modified") or _has(response_headers, b"etag")):
        return False, "no explicit freshness, no Last-Modified and no ETag"
    return True, why


# -- freshness and age (RFC 9111 §4.2) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Freshness:
    """What is known about a stored response's freshness, computed once when it
    is stored or freshened; with the response_time of that moment it answers
    every later question.

    lifetime: freshness lifetime in seconds (§4.2.1).
    source: "s-maxage", "max-age", "expires", "default_ttl", "heuristic" or "none".
    corrected_initial_age: §4.2.3, the conservative form
        max(apparent_age, age_value + response_delay).
    must_revalidate: never served stale (must-revalidate, proxy-revalidate, or
        s-maxage, which implies proxy-revalidate); ``revalidate_directive`` says which.
    no_cache: the response's no-cache: validated on every use.
    stale_while_revalidate, stale_if_error: seconds (RFC 5861), 0 for none.
    """

    lifetime: float
    source: str
    corrected_initial_age: float
    must_revalidate: bool = False
    no_cache: bool = False
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    revalidate_directive: str = ""
    age_value: float = 0.0
    apparent_age: float = 0.0
    response_delay: float = 0.0
    lifetime_detail: str = ""
    notes: tuple[str, ...] = ()

    def describe(self, response_time: float | None = None,
                 now: float | None = None) -> list[str]:
        """Sentences for explain output, e.g. "max-age=60 from Cache-Control",
        "Age: 10 received", "stored 5 s ago", "45 s left"."""
        out = [self.lifetime_detail] if self.lifetime_detail else []
        out.extend(self.notes)
        if self.age_value:
            out.append("Age: %d received" % self.age_value)
        if self.apparent_age:
            out.append("Date is %s before arrival" % _secs(self.apparent_age))
        if self.response_delay >= 0.05:
            out.append("upstream took %s" % _secs(self.response_delay))
        if self.corrected_initial_age >= 0.05:
            out.append("age on arrival %s" % _secs(self.corrected_initial_age))
        if self.no_cache:
            out.append("no-cache: revalidated on every use")
        if self.must_revalidate:
            out.append("%s: never served stale" % self.revalidate_directive)
        if self.stale_while_revalidate and not self.must_revalidate:
            out.append("stale-while-revalidate %s" % _secs(self.stale_while_revalidate))
        if self.stale_if_error and not self.must_revalidate:
            out.append("stale-if-error %s" % _secs(self.stale_if_error))
        if response_time is not None and now is not None:
            age = current_age(self, response_time, now)
            out.append("stored %s ago" % _secs(max(0.0, now - response_time)))
            left = self.lifetime - age
            out.append("%s left" % _secs(left) if left > 0 else "stale for %s" % _secs(-left))
        return out


def _extension_seconds(cc: Mapping[str, str | None], name: str,
                       default: float, notes: list[str]) -> float:
    if name in cc:
        value = _delta(cc[name])
        if value is not None:
            return float(value)
        notes.append("%s=%r is invalid: ignored" % (name, cc[name]))
    if default:
        notes.append("%s %s from policy" % (name, _secs(default)))
    return default


def freshness(response_headers: Headers, status: int, request_time: float,
              response_time: float, policy: Policy = DEFAULT_POLICY) -> Freshness:
    """Freshness lifetime (§4.2.1, §4.2.2) and initial age (§4.2.3) of a response
    received at ``response_time`` for a request sent at ``request_time``.

    Invalid freshness information makes the response stale: an s-maxage or
    max-age that is not delta-seconds, an Expires that is not an HTTP-date
    (``0`` included, §5.3), or Expires lines that disagree. An invalid Age is
    ignored (§5.1); of a list-valued Age the first member counts. Without a
    valid Date the arrival time stands in for it (RFC 9110 §6.6.1).
    """
    cc = _cache_control(response_headers)
    notes: list[str] = []
    date_value = _first_date(response_headers, b"date", response_time)
    if date_value is None:
        notes.append("no valid Date: arrival time used")
        date_value = response_time
    age_value = 0
    age_lines = _values(response_headers, b"age")
    if age_lines:
        parsed = _delta(age_lines[0].split(b",")[0].strip(_OWS).decode("latin-1"))
        if parsed is None:
            notes.append("invalid Age ignored")
        else:
            age_value = parsed
    apparent_age = max(0.0, float(response_time - date_value))
    response_delay = max(0.0, float(response_time - request_time))
    corrected_initial_age = max(apparent_age, age_value + response_delay)

    lifetime = 0.0
    source = "none"
    detail = ""
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            source = directive
            value = _delta(cc[directive])
            if value is None:
                detail = "%s=%r is invalid: stale" % (directive, cc[directive])
            else:
                lifetime = float(value)
                detail = "%s=%d from Cache-Control" % (directive, value)
            break
    else:
        expires = [v.strip(_OWS) for v in _values(response_headers, b"expires")]
        if expires:
            source = "expires"
            stamp = parse_http_date(expires[0], response_time)
            if len(set(expires)) > 1:
                detail = "conflicting Expires lines: stale"
            elif stamp is None:
                detail = "invalid Expires %r: already expired" % expires[0].decode("latin-1")
            else:
                lifetime = max(0.0, stamp - date_value)
                detail = "Expires is %s after Date" % _secs(lifetime)
        elif status in policy.default_ttl_by_status:
            source = "default_ttl"
            lifetime = float(policy.default_ttl_by_status[status])
            detail = "default_ttl %s for status %d" % (_secs(lifetime), status)
        elif status in HEURISTICALLY_CACHEABLE or "public" in cc:
            modified = _first_date(response_headers, b"last-modified", response_time)
            if modified is None:
                detail = "no explicit freshness and no Last-Modified: lifetime 0"
            else:
                source = "heuristic"
                since = max(0.0, date_value - modified)
                lifetime = min(policy.heuristic_max, policy.heuristic_fraction * since)
                detail = "heuristic: %g%% of %s since Last-Modified, at most %s" % (
                    policy.heuristic_fraction * 100, _secs(since), _secs(policy.heuristic_max))
        else:
            detail = "no explicit freshness: lifetime 0"

    revalidate = ""
    for directive in ("must-revalidate", "proxy-revalidate"):
        if directive in cc:
            revalidate = directive
            break
    else:
        if "s-maxage" in cc:
            revalidate = "s-maxage (implies proxy-revalidate)"
    return Freshness(
        lifetime=lifetime,
        source=source,
        corrected_initial_age=corrected_initial_age,
        must_revalidate=bool(revalidate),
        no_cache="no-cache" in cc,
        stale_while_revalidate=_extension_seconds(
            cc, "stale-while-revalidate", policy.stale_while_revalidate, notes),
        stale_if_error=_extension_seconds(cc, "stale-if-error", policy.stale_if_error, notes),
        revalidate_directive=revalidate,
        age_value=float(age_value),
        apparent_age=apparent_age,
        response_delay=response_delay,
        lifetime_detail=detail,
        notes=tuple(notes),
    )


def current_age(fresh: Freshness, response_time: float, now: float) -> float:
    """RFC 9111 §4.2.3: corrected_initial_age + resident_time. A clock that went
    back (now < response_time) adds no resident time: never negative, never
    decreasing in ``now``."""
    return fresh.corrected_initial_age + max(0.0, float(now - response_time))


# -- reuse (RFC 9111 §4, §4.2.4, §5.2.1; RFC 5861) ------------------------------------


class Verdict(enum.Enum):
    """What to do with a selected stored response."""

    FRESH = "fresh"  # serve it
    STALE_SERVE = "stale"  # serve it stale: the client's max-stale allows it
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"  # serve it, refresh in the background
    REVALIDATE = "revalidate"  # forward a conditional request (see validators())
    MISS_ONLY_IF_CACHED = "only-if-cached"  # answer 504 (§5.2.1.7)


@dataclass(frozen=True, slots=True)
class Decision:
    """A Verdict with its reason, the current age and the remaining freshness
    (``ttl``, negative when stale: the Cache-Status ttl)."""

    verdict: Verdict
    reason: str
    age: float
    ttl: float


def serve(fresh: Freshness, response_time: float, now: float, request: RequestDirectives,
          policy: Policy = DEFAULT_POLICY) -> Decision:
    """Whether a selected stored response may be reused for this request now.

    In order: the response's no-cache; the request's no-cache (unless the
    policy ignores it), max-age and min-fresh; fresh; stale with must-revalidate
    (or proxy-revalidate, s-maxage); stale within stale-while-revalidate
    (preferred: the client gets the same bytes and the cache refreshes);
    stale within the request's max-stale; otherwise revalidate. When the
    answer would be to go forward and the request says only-if-cached, the
    verdict is MISS_ONLY_IF_CACHED.
    """
    age = current_age(fresh, response_time, now)
    ttl = fresh.lifetime - age

    def forward(reason: str) -> Decision:
        if request.only_if_cached:
            return Decision(Verdict.MISS_ONLY_IF_CACHED, "only-if-cached, but " + reason, age, ttl)
        return Decision(Verdict.REVALIDATE, reason, age, ttl)

    if fresh.no_cache:
        return forward("response no-cache")
    if request.no_cache and not policy.ignore_no_cache_request:
        return forward("request Pragma: no-cache" if request.pragma_no_cache
                       else "request no-cache")
    if request.max_age is not None and age > request.max_age:
        return forward("request max-age=%d, age %s" % (request.max_age, _secs(age)))
    if request.min_fresh is not None and ttl < request.min_fresh:
        return forward("request min-fresh=%d, %s left" % (request.min_fresh, _secs(max(ttl, 0))))
    if ttl > 0:
        return Decision(Verdict.FRESH, "fresh, %s left" % _secs(ttl), age, ttl)
    staleness = -ttl
    if fresh.must_revalidate:
        return forward("stale by %s and %s" % (_secs(staleness), fresh.revalidate_directive))
    if fresh.stale_while_revalidate > 0 and staleness <= fresh.stale_while_revalidate:
        return Decision(Verdict.STALE_WHILE_REVALIDATE, "stale by %s, stale-while-revalidate %s"
                        % (_secs(staleness), _secs(fresh.stale_while_revalidate)), age, ttl)
    if request.max_stale is not None and staleness <= request.max_stale:
        return Decision(Verdict.STALE_SERVE, "stale by %s, request max-stale %s"
                        % (_secs(staleness), _secs(request.max_stale)), age, ttl)
    return forward("stale by %s" % _secs(staleness))


def is_error_status(status: int) -> bool:
    """An upstream answer that counts as an error for stale-if-error (RFC 5861 §4):
    500, 502, 503 or 504. A failure to get any answer counts too."""
    return status in _ERROR_STATUSES


def usable_on_error(fresh: Freshness, response_time: float, now: float,
                    request: RequestDirectives) -> bool:
    """Whether the stored response may answer when going forward failed.

    Never with the response's no-cache (§5.2.2.4: "even by caches that have
    been configured to send stale responses") and never stale with
    must-revalidate, proxy-revalidate or s-maxage (§5.2.2.2: the cache MUST
    answer with an error, 504). A stale one is used within the response's or
    the request's stale-if-error, or the request's max-stale. Choice: one
    that is still fresh by the origin's measure is used even if the request's
    no-cache, max-age or min-fresh sent us forward (request directives are
    preferences, §5.2.1, and an error serves the client worse).
    """
    if fresh.no_cache:
        return False
    staleness = current_age(fresh, response_time, now) - fresh.lifetime
    if staleness < 0:
        return True
    if fresh.must_revalidate:
        return False
    windows = (fresh.stale_if_error, request.stale_if_error, request.max_stale)
    return any(w is not None and w > 0 and staleness <= w for w in windows)


# -- validators and conditional requests (RFC 9110 §8.8, §13; RFC 9111 §4.3) ----------

_ETAG = re.compile(rb'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def _parse_etag(value: bytes) -> tuple[bool, bytes] | None:
    """An entity-tag as (weak, opaque-tag) or None. ``W/`` is case-sensitive."""
    match = _ETAG.fullmatch(value.strip(_OWS))
    return (match.group(1) is not None, match.group(2)) if match else None


def _parse_etag_list(value: bytes) -> list[tuple[bool, bytes]] | None:
    """``1#entity-tag`` (empty members ignored), or None when malformed."""
    tags: list[tuple[bool, bytes]] = []
    i, n = 0, len(value)
    while i < n:
        if value[i] in b" \t,":
            i += 1
            continue
        match = _ETAG.match(value, i)
        if match is None:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        i = match.end()
        while i < n and value[i] in _OWS:
            i += 1
        if i < n and value[i] != ord(","):
            return None
    return tags or None


def _stored_etag(headers: Headers) -> tuple[bool, bytes] | None:
    lines = _values(headers, b"etag")
    return _parse_etag(lines[0]) if lines else None


def client_conditional(request_headers: Headers, stored_response_headers: Headers,
                       response_time: float | None = None,
                       now: float | None = None) -> int | None:
    """304 when the client's own validators match the stored response, else None
    (send the full response). For a GET or HEAD answered from a stored 200.

    RFC 9110 §13.2.2 order, as it applies to a cache (RFC 9111 §4.3.2): If-Match
    and If-Unmodified-Since are for the origin and ignored. If-None-Match,
    when present, decides alone: ``*`` or any listed tag weakly matching the
    stored ETag gives 304; a malformed list never does. Otherwise a single,
    valid If-Modified-Since gives 304 when the stored Last-Modified is not
    later; without a usable Last-Modified the stored Date, then the time the
    response was received (``response_time``), stand in (RFC 9111 §4.3.2
    SHOULD). ``now`` only resolves two-digit years.
    """
    inm = _values(request_headers, b"if-none-match")
    if inm:
        value = b", ".join(v.strip(_OWS) for v in inm)
        if value == b"*":
            return 304
        tags = _parse_etag_list(value)
        etag = _stored_etag(stored_response_headers)
        if tags is None or etag is None:
            return None
        return 304 if any(opaque == etag[1] for _, opaque in tags) else None
    ims = _values(request_headers, b"if-modified-since")
    if len(ims) != 1:
        return None
    since = parse_http_date(ims[0], now)
    if since is None:
        return None
    modified = _first_date(stored_response_headers, b"last-modified", now)
    if modified is None:
        modified = _first_date(stored_response_headers, b"date", now)
    if modified is None:
        modified = response_time
    if modified is None:
        return None
    return 304 if modified <= since else None


def not_modified_headers(stored_response_headers: Headers) -> list[tuple[bytes, bytes]]:
    """The stored fields a 304 carries (RFC 9110 §15.4.5): Cache-Control,
    Content-Location, Date, ETag, Expires, Vary, and Last-Modified when there
    is no ETag. The caller adds Age (RFC 9111 §4) and its own fields."""
    keep = _NOT_MODIFIED_FIELDS
    if not _has(stored_response_headers, b"etag"):
        keep = keep | {b"last-modified"}
    return [(n, v) for n, v in stored_response_headers if n.lower() in keep]


def validators(stored_response_headers: Headers) -> list[tuple[bytes, bytes]]:
    """Precondition fields to revalidate one stored response (RFC 9111 §4.3.1):
    If-None-Match with its ETag (MUST) and If-Modified-Since with its
    Last-Modified (SHOULD), values as received. Choice: the Date is not used
    in place of a missing Last-Modified (RFC 9110 §13.1.3 calls Last-Modified
    the interoperable source, and origins that compare exact timestamps never
    match a Date); nginx and Varnish do the same. A client's own validators
    are the caller's to merge."""
    out: list[tuple[bytes, bytes]] = []
    etags = _values(stored_response_headers, b"etag")
    if etags and _parse_etag(etags[0]) is not None:
        out.append((b"If-None-Match", etags[0].strip(_OWS)))
    modified = _values(stored_response_headers, b"last-modified")
    if modified and parse_http_date(modified[0]) is not None:
        out.append((b"If-Modified-Since", modified[0].strip(_OWS)))
    return out


def freshens(stored_response_headers: Headers, not_modified_headers: Headers) -> bool:
    """Whether a 304 answering validators() of this stored response may update it
    (RFC 9111 §4.3.4). A strong ETag in the 304 must equal the stored one
    (strong comparison); a weak one must match it weakly; a Last-Modified in
    the 304 must equal the stored one unless a strong ETag already matched.

    Choice: a 304 without validators freshens the response whose validators
    were sent. §4.3.4's third rule (update only a stored response that has no
    validator either) picks among several stored responses when the request's
    preconditions came from elsewhere; here exactly one was asked about.
    """
    new_lines = _values(not_modified_headers, b"etag")
    new_etag = _parse_etag(new_lines[0]) if new_lines else None
    if new_lines and new_etag is None:
        return False
    old_etag = _stored_etag(stored_response_headers)
    if new_etag is not None:
        if old_etag is None or old_etag[1] != new_etag[1]:
            return False
        if not new_etag[0]:
            return not old_etag[0]
    if _has(not_modified_headers, b"last-modified"):
        new_modified = _first_date(not_modified_headers, b"last-modified", None)
        old_modified = _first_date(stored_response_headers, b"last-modified", None)
        return new_modified is not None and new_modified == old_modified
    return True


def merge_not_modified(stored_headers: Headers,
                       not_modified_headers: Headers) -> list[tuple[bytes, bytes]]:
    """The stored response's fields updated from a 304 (RFC 9111 §3.2, §4.3.4).

    Every field of the 304 replaces all lines of that field, in the place of
    the first; new fields are appended. Not taken from the 304: hop-by-hop
    fields and those its Connection lists, Proxy-Authenticate,
    Proxy-Authentication-Info, Proxy-Authorization (§3.1); Content-Length
    (§3.2); and Content-Encoding and Content-Range, which describe the stored
    body. The stored Age is dropped (the 304's, if any, replaces it): the
    validation restarted the response's age (§4.2, "generated by, or
    successfully validated with, the origin server"). Recompute freshness()
    on the result with the validation's request and response times.
    """
    skip = set(_NOT_STORED | _KEEP_STORED)
    for line in _values(not_modified_headers, b"connection"):
        skip.update(m.strip(_OWS).lower() for m in line.split(b","))
    updates: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value in not_modified_headers:
        key = name.lower()
        if key not in skip:
            updates.setdefault(key, []).append((name, value))
    merged: list[tuple[bytes, bytes]] = []
    placed: set[bytes] = set()
    for name, value in stored_headers:
        key = name.lower()
        if key in updates:
            if key not in placed:
                merged.extend(updates[key])
                placed.add(key)
        elif key != b"age":
            merged.append((name, value))
    for key, lines in updates.items():
        if key not in placed:
            merged.extend(lines)
    return merged


# -- invalidation (RFC 9111 §4.4) ------------------------------------------------------


def _origin(scheme: str, authority: str) -> tuple[str, str | None, int | None] | None:
    try:
        parts = urlsplit("%s://%s/" % (scheme, authority))
        port = parts.port
    except ValueError:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, port if port is not None else default


def invalidations(method: bytes, status: int, host: bytes, target: bytes,
                  response_headers: Headers, scheme: bytes = b"http") -> list[tuple[bytes, bytes]]:
    """The (host, path-and-query) entries to invalidate after this exchange.

    For an unsafe method (anything but GET, HEAD, OPTIONS, TRACE: RFC 9111
    §4.4 includes methods of unknown safety) with a 2xx or 3xx status: the
    target URI (MUST), then the Location and Content-Location URIs (MAY),
    resolved against the target, when they have the same origin (scheme, host
    and port; MUST NOT otherwise). ``target`` is the origin-form request
    target; returned paths are as resolved (dot segments removed for relative
    references), to be normalized like any cache key by the caller.
    """
    if method in _SAFE_METHODS or not 200 <= status <= 399:
        return []
    out = [(host, target)]
    base_scheme = scheme.decode("latin-1").lower()
    authority = host.decode("latin-1")
    origin = _origin(base_scheme, authority)
    if origin is None:
        return out
    base = "%s://%s%s" % (base_scheme, authority, target.decode("latin-1"))
    for name in (b"location", b"content-location"):
        lines = _values(response_headers, name)
        if len(lines) != 1:
            continue
        reference = lines[0].strip(_OWS).decode("latin-1")
        if not reference or _CONTROL.search(reference):
            continue
        try:
            parts = urlsplit(urljoin(base, reference))
            resolved_origin = _origin(parts.scheme.lower(), parts.netloc.rpartition("@")[2])
        except ValueError:
            continue
        if resolved_origin != origin:
            continue
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        entry = (host, path.encode("latin-1"))
        if entry not in out:
            out.append(entry)
    return out


# -- Cache-Status (RFC 9211, serialized per RFC 8941 §4.1) ----------------------------


def _sf_string(value: str | bytes) -> str:
    """An sf-string. Bytes outside printable ASCII, which RFC 8941 cannot carry,
    are percent-encoded (the value is for people and logs)."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    out = ['"']
    for byte in raw:
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append("%%%02X" % byte)
    out.append('"')
    return "".join(out)


def _sf_token_or_string(value: str | bytes) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text if _SF_TOKEN.fullmatch(text) else _sf_string(value)


def _sf_integer(value: float) -> str:
    return "%d" % min(max(math.floor(value), -_SF_INTEGER_MAX), _SF_INTEGER_MAX)


def cache_status(name: str | bytes = "fastproxy", *, hit: bool = False,
                 fwd: str | None = None, fwd_status: int | None = None,
                 ttl: float | None = None, stored: bool | None = None,
                 collapsed: bool | None = None, key: str | bytes | None = None,
                 detail: str | bytes | None = None) -> bytes:
    """One Cache-Status list member (RFC 9211), e.g. ``fastproxy;fwd=stale;fwd-status=304``.

    Serialized as RFC 8941 §4.1 does: parameters in RFC 9211's order (hit,
    fwd, fwd-status, ttl, stored, collapsed, key, detail), ``;`` without
    spaces, a true boolean as its bare name, false as ``=?0``. The cache name
    and ``detail`` are tokens when they can be, otherwise strings; ``key`` is
    always a string; ``ttl`` is rounded down to whole seconds (negative when
    stale). Append it to an upstream's Cache-Status with ", " (RFC 9211 §2:
    caches SHOULD preserve it). Raises ValueError for hit with fwd, an unknown
    fwd reason, or fwd-status, stored or collapsed without fwd.
    """
    if hit and fwd is not None:
        raise ValueError("hit and fwd are exclusive")
    if fwd is not None and fwd not in FWD_REASONS:
        raise ValueError("unknown fwd reason %r" % fwd)
    if fwd is None and (fwd_status is not None or stored is not None or collapsed is not None):
        raise ValueError("fwd-status, stored and collapsed need fwd")
    parts = [_sf_token_or_string(name)]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append("fwd=" + fwd)
    if fwd_status is not None:
        parts.append("fwd-status=" + _sf_integer(fwd_status))
    if ttl is not None:
        parts.append("ttl=" + _sf_integer(ttl))
    if stored is not None:
        parts.append("stored" if stored else "stored=?0")
    if collapsed is not None:
        parts.append("collapsed" if collapsed else "collapsed=?0")
    if key is not None:
        parts.append("key=" + _sf_string(key))
    if detail is not None:
        parts.append("detail=" + _sf_token_or_string(detail))
    return ";".join(parts).encode("ascii")


def tags_of(headers: Iterable[tuple[bytes, bytes]],
            names: Collection[bytes]) -> tuple[bytes, ...]:
    """The purge tags a response carries: the values of the fields `names` (lower
    case), split on spaces and commas (Surrogate-Key uses spaces, Cache-Tag commas)."""
    tags: list[bytes] = []
    for name, value in headers:
        if name.lower() in names:
            tags.extend(t for t in value.replace(b",", b" ").split() if t not in tags)
    return tuple(tags)
