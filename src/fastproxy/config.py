"""Load and validate the fastproxy TOML configuration.

The file is parsed once into immutable objects (frozen dataclasses, tuples,
read-only mappings); the rest of the proxy only ever sees those objects.

Validation never stops at the first problem: every issue is collected, each
naming the file, the key path (``routes[2].upstream``,
``upstreams.backend.servers[0]``) and the reason, and all of them are raised
together as one :class:`ConfigError`.

``docs/configuration.md`` documents every key below and is kept in step with
this module; the field tables (``SERVER_FIELDS`` and friends) carry the
defaults and descriptions so that the reference can later be generated.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import ipaddress
import math
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

# The route schema lives in routeconf; Route and RouteMatch are re-exported here,
# where the rest of the proxy has always found them.
from fastproxy.routeconf import INVALID as _INVALID
from fastproxy.routeconf import MISSING as _MISSING
from fastproxy.routeconf import (
    PROXY_OWNED_HEADERS,
    AccessList,
    KeyChecker,
    Route,
    RouteMatch,
    RoutingSettings,
    Template,
    access_list,
    label_name,
    parse_routes,
    parse_template,
    route_warnings,
)
from fastproxy.routeconf import boolean as _boolean
from fastproxy.routeconf import describe as _describe
from fastproxy.routeconf import hostname as _hostname
from fastproxy.routeconf import ipv6 as _ipv6
from fastproxy.routeconf import key as _key
from fastproxy.routeconf import match_host as _match_host
from fastproxy.routeconf import parse_port as _parse_port
from fastproxy.routeconf import string as _string
from fastproxy.routeconf import suggest as _suggest

__all__ = [
    "CLIENT_CERT_FIELDS",
    "AccessOutput",
    "CertificateFiles",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "FieldSpec",
    "Limits",
    "Listener",
    "ListenerTls",
    "LogSettings",
    "Route",
    "RouteMatch",
    "RoutingSettings",
    "ServerAddress",
    "ServerSettings",
    "StickyCookie",
    "Timeouts",
    "Tracing",
    "Upstream",
    "UpstreamTls",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "schema",
]


# --------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file: where it is and what is wrong."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


class ConfigError(Exception):
    """The config was refused; ``errors`` lists every issue found."""

    errors: list[ConfigIssue]

    def __init__(self, errors: Iterable[ConfigIssue]) -> None:
        self.errors = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)


# --------------------------------------------------------------------------
# Config objects


@dataclass(frozen=True, slots=True)
class ServerSettings:
    workers: int
    shutdown_timeout: float
    via: bool
    max_connections: int
    # The client address behind trusted proxies (as nginx's realip): from a peer in
    # these networks, the last address of `real_ip_header` not itself trusted.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    real_ip_header: str = "X-Forwarded-For"
    pid_file: str = ""  # written by the master ("" = none); relative to the config file
    user: str = ""  # the children run as this user when the master is root ("" = as is)
    group: str = ""  # ... and group (default: the user's)


@dataclass(frozen=True, slots=True)
class Limits:
    max_line_bytes: int
    max_header_bytes: int
    max_header_count: int
    max_body_bytes: int  # 0 means unlimited
    max_requests_per_connection: int = 1000  # 0 means unlimited
    max_in_flight: int = 0  # per worker; 0 means unlimited
    max_connections_per_ip: int = 0  # instance-wide; 0 means unlimited
    rate_limit_keys: int = 100_000
    # HTTP/2 to clients (per connection): streams at once, client stream resets in
    # any 10 s, and PING/SETTINGS frames per second before GOAWAY ENHANCE_YOUR_CALM.
    h2_max_concurrent_streams: int = 128
    h2_max_resets: int = 200
    h2_max_control_frames: int = 100


# [limits] keys that a listener may set for itself.
LISTENER_SIZE_KEYS: Final = ("max_line_bytes", "max_header_bytes", "max_header_count",
                             "max_body_bytes")


@dataclass(frozen=True, slots=True)
class WafSettings:
    """[waf]: the built-in attack rules, on every route unless it says `waf = false`."""

    rule_sets: tuple[str, ...]  # names, "NAME:log" for detection only
    exclusions: tuple[str, ...]
    rules: tuple[Any, ...]  # waf.Rule, parsed and checked
    body_limit: int = 8192  # bytes of a request body inspected (0: bodies are not)


@dataclass(frozen=True, slots=True)
class AutoBan:
    """[auto_ban]: a client refused `after` times within `window` is refused for `ban_time`."""

    after: int
    window: float
    ban_time: float
    on: tuple[str, ...]  # "waf" (WAF blocks), "4xx" (any 4xx answer) or a status "401"...
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    clients: int  # the shared table holds this many clients at once

    def statuses(self) -> frozenset[int]:
        """The answer statuses that count (a WAF block counts through "waf")."""
        if "4xx" in self.on:
            return frozenset(range(400, 500))
        return frozenset(int(event) for event in self.on if event != "waf")


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """The disk tier of a [caches.NAME]: `disk = { path = ..., size = ... }`."""

    path: str  # absolute; made when missing
    size: int  # bytes the evictor keeps the directory under
    max_object: int  # a bigger response is not written to disk


@dataclass(frozen=True, slots=True)
class RedisCacheSpec:
    """The Redis tier of a [caches.NAME]: `redis = "redis://..."` or a table."""

    url: str  # checked (redislink.check_url); may hold a password: never logged as is
    max_object: int  # a bigger response is not written to Redis
    timeout: float  # seconds a Redis step may take before it counts as failed
    prefix: str  # of every Redis key of this cache


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """[caches.NAME]: a shared HTTP cache (RFC 9111) that routes name in `cache`."""

    name: str
    memory: int  # bytes of responses each worker keeps
    max_object: int  # a bigger response is not stored
    key: Template  # the primary cache key
    heuristic_fraction: float
    heuristic_max: float
    valid: Mapping[int, float]  # status -> seconds, when the response gives no freshness
    stale_while_revalidate: float
    stale_if_error: float
    store_set_cookie: bool
    ignore_client_no_cache: bool
    lock_timeout: float  # how long a request waits for a fill of the same key
    debug: bool  # Cache-Status shows the key
    tag_headers: tuple[str, ...] = ("Surrogate-Key", "Cache-Tag")  # purge by tag
    disk: DiskSpec | None = None  # the disk tier, shared by the workers
    redis: RedisCacheSpec | None = None  # the Redis tier, shared by instances

    @property
    def store_limit(self) -> int:
        """The largest response some tier stores."""
        return max(self.max_object, self.disk.max_object if self.disk is not None else 0,
                   self.redis.max_object if self.redis is not None else 0)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """[metrics]: what /metrics on the admin API counts."""

    enabled: bool = True
    analytics: bool = True  # the dashboard's top paths, clients and user agents
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """[admin]: the admin API (JSON over HTTP), served by its own process."""

    host: str
    port: int
    token: str | None  # required as "Authorization: Bearer TOKEN" when set

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """[limits.NAME]: `rate` requests per second per key, `burst` more at once."""

    name: str
    key: Template | None  # what is counted; None: one bucket per route ("route")
    rate: float
    burst: int
    rate_text: str  # as written ("10/s")
    delay: int = -1  # excess requests passed at once, the rest held at the rate; -1: none held
    store: str | None = None  # "redis://..." to count across instances; None: this instance
    on_store_error: str = "allow"  # "allow" | "deny" while the store cannot be reached
    store_timeout: float = 0.1  # seconds a store check may take before it counts as failed


@dataclass(frozen=True, slots=True)
class Timeouts:
    header: float
    body: float
    keepalive: float
    send: float
    lingering_time: float  # 0: no lingering close
    lingering_timeout: float
    body_min_rate: int = 0  # bytes/s a request body must average (0: no minimum)


@dataclass(frozen=True, slots=True)
class LogSettings:
    access: str  # "stdout", "stderr", "off" or an absolute file path
    format: str  # "combined", "json" or a template (logformat.parse_template)
    level: str
    # [[log.access_outputs]]: when given, these replace `access`.
    outputs: tuple[AccessOutput, ...] = ()
    error_format: str = "text"  # "text" | "json"
    error_repeats: int = 100  # lines of one message template per minute (0: no limit)

    def access_outputs(self) -> tuple[AccessOutput, ...]:
        """Where access lines go: the [[log.access_outputs]], else `access` in `format`."""
        if self.outputs:
            return self.outputs
        if self.access == "off":
            return ()
        if self.access in ("stdout", "stderr"):
            return (AccessOutput(kind=self.access, target="", format=self.format),)
        return (AccessOutput(kind="file", target=self.access, format=self.format),)


SYSLOG_FACILITIES: Final = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
                            "uucp", "cron", "authpriv", "ftp", "ntp", "audit", "alert",
                            "clock", "local0", "local1", "local2", "local3", "local4",
                            "local5", "local6", "local7")


@dataclass(frozen=True, slots=True)
class AccessOutput:
    """One destination of access lines ([[log.access_outputs]] or `log.access`)."""

    kind: str  # "file" | "stdout" | "stderr" | "syslog"
    target: str  # file: absolute path; syslog: "udp://h:p", "tcp://h:p" or "unix:///path"
    format: str  # "combined", "json" or a template
    min_status: int = 0  # only responses with a status >= this
    sample: float = 1.0  # the share of (those) requests logged
    facility: str = "local0"  # syslog
    app_name: str = "fastproxy"  # syslog APP-NAME


@dataclass(frozen=True, slots=True)
class Tracing:
    """[tracing]: request ids and W3C Trace Context."""

    request_id: bool = False  # send the id upstream (request_id_header) and back
    request_id_header: str = "X-Request-ID"
    trust_request_id: str = "trusted_proxies"  # "always" | "never" | "trusted_proxies"
    traceparent: bool = False  # continue (or start) traces with a span per hop
    start_trace: bool = True  # with traceparent: start a trace when the request has none


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """One certificate of a TLS listener: PEM files, paths made absolute."""

    cert: str  # the certificate chain, leaf first
    key: str  # its private key
    # SNI names it serves; (): the DNS names of its subjectAltName (its CN without one)
    names: tuple[str, ...] = ()


CLIENT_CERT_FIELDS: Final = ("subject", "issuer", "fingerprint", "serial", "verify")


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """TLS termination on a listener (secure by default, see docs/configuration.md)."""

    certificates: tuple[CertificateFiles, ...]  # the first one is the default
    unknown_sni: str = "default"  # "default" | "refuse": no SNI, or a name no certificate has
    min_version: str = "1.2"  # "1.2" | "1.3"
    ciphers: str | None = None  # TLS 1.2 suites, OpenSSL syntax; None: forward-secret AEAD only
    alpn: tuple[str, ...] = ("h2", "http/1.1")  # "h2" in it: HTTP/2 by ALPN
    client_auth: str = "none"  # "none" | "optional" | "required"
    client_ca: str | None = None  # CA bundle for client certificates (needed unless "none")
    # Client-certificate facts sent upstream: (field in CLIENT_CERT_FIELDS, header name);
    # the same headers coming from the client are removed.
    client_cert_headers: tuple[tuple[str, str], ...] = ()
    handshake_timeout: float = 10.0
    hsts: str | None = None  # a Strict-Transport-Security value added to every response
    # Who runs TLS: "openssl" (fastproxy._tls, OpenSSL driven from C) or "python"
    # (uvloop's SSL transport over the ssl module).
    engine: str = "openssl"


@dataclass(frozen=True, slots=True)
class SniRule:
    """A tcp listener's connections whose ClientHello names one of `names` (lower
    case; "*.example.com": one or more labels before ".example.com") go to `upstream`."""

    names: tuple[str, ...]
    upstream: str


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """A `mode = "tcp"` listener: bytes to a balanced upstream, unparsed."""

    upstream: str | None  # the default upstream (None: a connection no SNI rule takes is closed)
    sni: tuple[SniRule, ...] | None = None  # None: no SNI routing (no ClientHello is read)
    idle_timeout: float = 600.0  # no byte either way for this long closes both sides
    client_hello_timeout: float = 5.0  # SNI routing: the whole ClientHello within this
    client_hello_max_bytes: int = 16384  # SNI routing: a larger ClientHello is refused


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    name: str  # unique; by default the address as normalized ("0.0.0.0:8080")
    default_host: str | None  # routes a request whose host no route names as this host
    tls: ListenerTls | None = None
    https_redirect: int | None = None  # plain listener: 308 every request to https on this port
    access: AccessList | None = None  # client addresses refused with 403 on this listener
    # Size limits of this listener where they differ from [limits]: a subset of
    # LISTENER_SIZE_KEYS (name -> bytes or count); a route may still set max_body_bytes.
    sizes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # Every connection starts with a PROXY protocol v1/v2 header naming the client.
    proxy_protocol: bool = False
    mode: str = "http"  # "http" | "tcp"
    tcp: TcpSettings | None = None  # mode = "tcp": where the bytes go
    # A plain listener also takes HTTP/2 with prior knowledge (the client preface).
    h2c: bool = False

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)

    def size(self, limits: Limits, name: str) -> int:
        """This listener's `name` size limit (its own, else the [limits] one)."""
        value = self.sizes.get(name)
        return int(getattr(limits, name)) if value is None else value


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int
    weight: int
    max_conns: int = 0  # requests in flight per worker; 0 = no limit
    backup: bool = False  # used only while no primary server is usable
    tls: bool = False  # "https://host:port": TLS to this server (see Upstream.tls)
    proxy_protocol: str | None = None  # "off" | "v1" | "v2"; None: the upstream's
    h2: bool = False  # "h2c://host:port": HTTP/2 with prior knowledge (Upstream.protocol too)

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    servers: tuple[ServerAddress, ...]
    keepalive: int
    idle_timeout: float
    connect_timeout: float
    read_timeout: float
    send_timeout: float
    balance: str = "round_robin"
    hash_key: Template | None = None  # ring and maglev: what is hashed
    balance_factor: float = 0.0  # ring and maglev: bounded load (0 = off)
    sticky: StickyCookie | None = None
    slow_start: float = 0.0  # seconds over which a returning server's weight ramps up
    queue: int = 100  # requests waiting per worker when every server is at max_conns
    queue_timeout: float = 10.0
    resolve_interval: float = 30.0  # servers named by host name are re-resolved this often
    protocol: str = "http1"  # "h2": HTTP/2 to every server (see ServerAddress.h2)
    health_check: HealthCheck | None = None
    eject: Ejection = field(default_factory=lambda: Ejection())
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy())
    tls: UpstreamTls = field(default_factory=lambda: UpstreamTls())
    proxy_protocol: str = "off"  # "off" | "v1" | "v2": a PROXY header starts each connection

    def server_proxy_protocol(self, server: ServerAddress) -> str:
        """The PROXY protocol version sent to `server` ("off": none)."""
        return server.proxy_protocol or self.proxy_protocol


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How the proxy speaks TLS to this upstream's https:// servers."""

    verify: bool = True  # check the server's certificate and name
    ca: str | None = None  # CA bundle (absolute path); None: the system's CAs
    sni: str | None = None  # server name sent and verified; None: the server's host name
    cert: str | None = None  # client certificate (mTLS to the upstream), with `key`
    key: str | None = None
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checks: one prober per instance; its verdicts reach every worker."""

    path: str = "/"  # origin-form request target ("/healthz?full=1"), sent as written
    method: str = "GET"  # GET, HEAD or OPTIONS
    host: str | None = None  # the Host header, normalized; None: the server's address
    interval: float = 5.0
    timeout: float = 2.0
    status: tuple[tuple[int, int], ...] = ((200, 399),)  # accepted ranges, inclusive
    body: str | None = None  # a substring the response body must contain
    rise: int = 2  # consecutive passes that bring a down server back
    fall: int = 3  # consecutive failures that take an up server down
    type: str = "http"  # "http": a request; "tcp": a connect that succeeds passes
    grpc_service: str | None = None  # gRPC health protocol for this service (HTTP/2 only)


@dataclass(frozen=True, slots=True)
class Ejection:
    """Passive checks: a server failing `failures` times in a row (connect error,
    reset or timeout before a response, a 502/503/504) is ejected for `time`,
    doubling on each repeat up to `max_time`; after it one request probes it."""

    failures: int = 5  # 0 = off
    time: float = 10.0
    max_time: float = 300.0


RETRY_CONDITIONS: Final = ("reset", "timeout", "502", "503", "504")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries to another server. A connect failure is always retried (nothing was
    sent); the conditions in `on` only for idempotent methods whose body, if any,
    was kept whole within `buffer` bytes."""

    retries: int = 2  # extra tries after the first
    on: frozenset[str] = frozenset({"reset", "timeout"})
    budget: float = 0.2  # retries may add at most this fraction of the requests
    per_try_timeout: float = 0.0  # wait for a response head per try; 0 = read_timeout
    buffer: int = 65536  # request bodies up to this size are kept for a retry


@dataclass(frozen=True, slots=True)
class StickyCookie:
    """Sticky sessions: the proxy names the server in a cookie and follows it."""

    cookie: str
    max_age: float  # 0: a session cookie (no Max-Age)
    secure: bool


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    server: ServerSettings
    limits: Limits
    timeouts: Timeouts
    log: LogSettings
    routing: RoutingSettings
    listeners: tuple[Listener, ...]
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]
    warnings: tuple[str, ...]
    rate_limits: Mapping[str, RateLimitSpec] = field(
        default_factory=lambda: MappingProxyType({}))
    waf: WafSettings | None = None
    auto_ban: AutoBan | None = None
    caches: Mapping[str, CacheSpec] = field(default_factory=lambda: MappingProxyType({}))
    admin: AdminSettings | None = None
    metrics: MetricsSettings = field(default_factory=lambda: MetricsSettings())
    tracing: Tracing = Tracing()

    @property
    def counting(self) -> bool:
        """Metrics are counted: on, and the admin API is there to show them."""
        return self.metrics.enabled and self.admin is not None

    def summary(self) -> str:
        servers = sum(len(u.servers) for u in self.upstreams.values())
        addresses = ", ".join(listener.address + (" tcp" if listener.mode == "tcp" else "")
                              for listener in self.listeners)
        return (
            f"config OK: {_plural(len(self.listeners), 'listener')} ({addresses}), "
            f"{_plural(len(self.upstreams), 'upstream')} ({_plural(servers, 'server')}), "
            f"{_plural(len(self.routes), 'route')}, "
            f"{_plural(self.server.workers, 'worker')}"
        )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --------------------------------------------------------------------------
# Value syntax: durations and sizes

_DURATION_RE: Final = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,9})?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT: Final = 'a number of seconds, or a string like "500ms", "30s", "5m", "1h"'

_SIZE_RE: Final = re.compile(r"([0-9]{1,18})(k|kb|kib|m|mb|mib|g|gb|gib|b)?", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE_HINT: Final = 'a number of bytes, or a string like "512", "16k", "64MiB", "1g"'


def parse_duration(value: object) -> float:
    """Seconds from a number (int/float >= 0) or a string "500ms"/"30s"/"5m"/"1h"."""
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if m is None:
            raise ValueError(f"invalid duration {value!r}: expected {_DURATION_HINT}")
        number, unit = m.groups()
        # Divide for milliseconds so that "500ms" is exactly 0.5.
        seconds = float(number) / 1000.0 if unit == "ms" else float(number) * _DURATION_UNITS[unit]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"duration {value!r} is too large") from None
        if not math.isfinite(seconds):
            raise ValueError(f"duration must be a finite number, found {_describe(value)}")
    else:
        raise ValueError(f"expected a duration ({_DURATION_HINT}), found {_describe(value)}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, found {_describe(value)}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an int or a string "512"/"16k"/"16KiB"/"16KB"/"64m"/"1GiB" (1024-based)."""
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if m is None:
            raise ValueError(f"invalid size {value!r}: expected {_SIZE_HINT} (1024-based)")
        number, unit = m.groups()
        size = int(number) * _SIZE_UNITS[(unit or "")[:1].lower()]
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise ValueError(f"expected a size ({_SIZE_HINT}), found {_describe(value)}")
    if size < 0:
        raise ValueError(f"size must not be negative, found {_describe(value)}")
    return size


def _human_size(n: int) -> str:
    for suffix, unit in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


# --------------------------------------------------------------------------
# Field converters: each takes the raw TOML value and returns the typed value
# or raises ValueError with the reason.

Converter = Callable[[object], Any]

_MAX_DURATION: Final = 86400.0  # keeps timer arithmetic far from overflow


def _integer(lo: int, hi: int) -> Converter:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, found {_describe(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be from {lo} to {hi}, found {value}")
        return value

    return convert


def _duration(*, zero_ok: bool = False) -> Converter:
    def convert(value: object) -> float:
        seconds = parse_duration(value)
        if seconds == 0 and not zero_ok:
            raise ValueError(f"must be greater than 0, found {_describe(value)}")
        if seconds > _MAX_DURATION:
            raise ValueError(f"must be at most 24h, found {_describe(value)}")
        return seconds

    return convert


def _size(lo: int, hi: int | None = None) -> Converter:
    def convert(value: object) -> int:
        size = parse_size(value)
        if size < lo or (hi is not None and size > hi):
            if hi is None:
                bounds = f"must be at least {_human_size(lo)} ({lo} bytes)"
            else:
                bounds = f"must be from {_human_size(lo)} to {_human_size(hi)} ({lo} to {hi} bytes)"
            raise ValueError(f"{bounds}, found {_describe(value)}")
        return size

    return convert


def _choice(*options: str) -> Converter:
    def convert(value: object) -> str:
        text = _string(value)
        if text not in options:
            hint = _suggest(text, options)
            raise ValueError(f"unsupported value {text!r} (supported: {', '.join(options)}){hint}")
        return text

    return convert


class _ElementErrors(ValueError):
    """Problems with elements of an array, each reported at its own key (``on[2]``)."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        super().__init__("; ".join(f"[{index}]: {reason}" for index, reason in problems))
        self.problems = problems


def _array(element: Converter, what: str, *, empty_ok: bool, unique: bool = False) -> Converter:
    """An array whose elements are checked one by one (all problems are reported);
    ``unique`` refuses an element equal to an earlier one, once converted."""

    def convert(value: object) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected an array of {what}, found {_describe(value)}")
        if not value and not empty_ok:
            raise ValueError(f"must not be empty: give at least one of {what}")
        result: list[Any] = []
        seen: dict[Any, int] = {}
        problems: list[tuple[int, str]] = []
        for index, item in enumerate(value):
            try:
                converted = element(item)
            except ValueError as exc:
                problems.append((index, str(exc)))
                continue
            if unique and converted in seen:
                problems.append((index, f"duplicate {item!r} (already at index {seen[converted]})"))
                continue
            seen.setdefault(converted, index)
            result.append(converted)
        if problems:
            raise _ElementErrors(problems)
        return tuple(result)

    return convert


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number from 0 to 1, found {_describe(value)}")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"must be from 0 to 1, found {value}")
    return float(value)


def _workers(value: object) -> int:
    if isinstance(value, str) and value == "auto":
        return max(1, min(os.cpu_count() or 1, 1024))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'expected an integer or "auto", found {_describe(value)}')
    if not 1 <= value <= 1024:
        raise ValueError(f'must be from 1 to 1024 or "auto", found {value}')
    return value


def _access_log(value: object) -> str:
    text = _string(value)
    if not text:
        raise ValueError('must not be empty (use "off" to disable the access log)')
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    return text


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One key of a section: its default (as written in TOML; None for an
    optional key that is None when absent), its type as shown in the docs, what
    it means, and how its value is checked."""

    name: str
    default: object
    type: str
    doc: str
    convert: Converter


SERVER_FIELDS: Final = (
    FieldSpec(
        "workers",
        "auto",
        'integer 1..1024 or "auto"',
        'worker processes; "auto" = number of CPUs',
        _workers,
    ),
    FieldSpec(
        "shutdown_timeout",
        "30s",
        "duration",
        "drain time on SIGTERM/SIGINT before in-flight requests are cut; 0 cuts at once",
        _duration(zero_ok=True),
    ),
    FieldSpec(
        "via",
        True,
        "boolean",
        'add "Via: 1.1 fastproxy" to forwarded requests and responses',
        _boolean,
    ),
    FieldSpec(
        "max_connections",
        10000,
        "integer 1..1000000",
        "open client connections per worker; beyond it new connections are closed at once",
        _integer(1, 1_000_000),
    ),
    FieldSpec(
        "trusted_proxies",
        (),
        "array of CIDRs",
        "peers whose real_ip_header is believed: the client is the last address in it that"
        " is not itself a trusted proxy (as nginx real_ip_recursive)",
        lambda v: _cidr_list(v),
    ),
    FieldSpec(
        "real_ip_header",
        "X-Forwarded-For",
        '"X-Forwarded-For" | "X-Real-IP" | "Forwarded"',
        "where trusted proxies put the client address",
        _choice("X-Forwarded-For", "X-Real-IP", "Forwarded"),
    ),
    FieldSpec("pid_file", "", "path", "the master writes its PID here (relative to the config "
              "file); removed when it stops", lambda v: _path_text(v)),
    FieldSpec("user", "", "user name", "when started as root, the workers and the other "
              "children switch to this user (the master keeps root to open ports on reload)",
              lambda v: _user(v)),
    FieldSpec("group", "", "group name", "... and this group (default: the user's)",
              lambda v: _group(v)),
)


def _path_text(value: object) -> str:
    text = _string(value)
    if "\0" in text:
        raise ValueError("must not contain NUL")
    return text


def _account(value: object, lookup: Callable[[str], object], what: str) -> str:
    """A user or group name that exists on this machine ("" for none)."""
    name = _string(value)
    if name:
        try:
            lookup(name)
        except KeyError:
            raise ValueError(f"no such {what}: {name!r}") from None
    return name


def _user(value: object) -> str:
    import pwd

    return _account(value, pwd.getpwnam, "user")


def _group(value: object) -> str:
    import grp

    return _account(value, grp.getgrnam, "group")


def _cidr_list(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A CIDR or an array of them (each bad entry reported at its index)."""
    from fastproxy.routeconf import client_net

    if isinstance(value, str):
        return (client_net(value),)
    nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _array(
        client_net, 'CIDRs like "10.0.0.0/8"', empty_ok=True, unique=True)(value)
    return nets

LIMITS_FIELDS: Final = (
    FieldSpec(
        "max_line_bytes", "8k", "size 256..1m", "request line; over it -> 414", _size(256, 1024**2)
    ),
    FieldSpec(
        "max_header_bytes",
        "32k",
        "size 1k..1m",
        "request line + header section; over it -> 431",
        _size(1024, 1024**2),
    ),
    FieldSpec(
        "max_header_count",
        100,
        "integer 1..10000",
        "header fields per request; over it -> 431",
        _integer(1, 10000),
    ),
    FieldSpec(
        "max_body_bytes", "64m", "size", "request body; over it -> 413; 0 means unlimited",
        _size(0, 1 << 50)
    ),
    FieldSpec(
        "max_requests_per_connection", 1000, "integer 0..100000000",
        "requests on one keep-alive connection, then it is closed (as nginx keepalive_requests);"
        " 0 means unlimited",
        _integer(0, 100_000_000),
    ),
    FieldSpec(
        "max_in_flight", 0, "integer 0..10000000",
        "requests a worker works on at once; past it, 503 + Retry-After at once (load "
        "shedding); 0 means unlimited",
        _integer(0, 10_000_000),
    ),
    FieldSpec(
        "max_connections_per_ip", 0, "integer 0..1000000",
        "open connections per client address, for the whole instance; past it the new "
        "connection gets a 429 and is closed; 0 means unlimited",
        _integer(0, 1_000_000),
    ),
    FieldSpec(
        "rate_limit_keys", 100_000, "integer 1..10000000",
        "keys the shared rate-limit table holds at once (16 bytes each, 2 slots per key)",
        _integer(1, 10_000_000),
    ),
    FieldSpec(
        "h2_max_concurrent_streams", 128, "integer 1..10000",
        "HTTP/2: streams a client may have open at once on one connection (SETTINGS); one "
        "more is refused with REFUSED_STREAM",
        _integer(1, 10_000),
    ),
    FieldSpec(
        "h2_max_resets", 200, "integer 1..1000000",
        "HTTP/2: streams a client may reset (RST_STREAM) on one connection in 10 seconds; "
        "past it GOAWAY ENHANCE_YOUR_CALM and close (the rapid-reset attack)",
        _integer(1, 1_000_000),
    ),
    FieldSpec(
        "h2_max_control_frames", 100, "integer 1..1000000",
        "HTTP/2: PING and SETTINGS frames a client may send on one connection in a second; "
        "past it GOAWAY ENHANCE_YOUR_CALM and close (ping and settings floods)",
        _integer(1, 1_000_000),
    ),
)

TIMEOUTS_FIELDS: Final = (
    FieldSpec(
        "header",
        "30s",
        "duration > 0",
        "from connection (or the first byte of the next request) until the full request"
        " head -> 408",
        _duration(),
    ),
    FieldSpec(
        "body",
        "60s",
        "duration > 0",
        "max gap between two reads of a request body -> 408",
        _duration(),
    ),
    FieldSpec(
        "keepalive",
        "75s",
        "duration > 0",
        "idle keep-alive connection between requests -> closed silently",
        _duration(),
    ),
    FieldSpec(
        "send",
        "60s",
        "duration > 0",
        "client not reading the response (no write progress) -> connection closed",
        _duration(),
    ),
    FieldSpec(
        "lingering_time",
        "30s",
        "duration >= 0",
        "after an answer that ends a connection whose request was not read to the end:"
        " how long at most to keep reading and dropping what the client still sends"
        " (0: close at once)",
        _duration(zero_ok=True),
    ),
    FieldSpec(
        "lingering_timeout",
        "5s",
        "duration > 0",
        "while lingering: close when the client has sent nothing for this long",
        _duration(),
    ),
    FieldSpec(
        "body_min_rate",
        0,
        "size per second, 0..1g",
        "slow-body protection: a request body must arrive by `body` plus one second per"
        " this many bytes received (as Apache's MinRate); 0: only the gap rule of `body`",
        _size(0, 1024**3),
    ),
)

def _log_format(value: object) -> str:
    from fastproxy.logformat import check_format

    return check_format(_string(value))


LOG_FIELDS: Final = (
    FieldSpec(
        "access",
        "stdout",
        "string",
        '"stdout", "stderr", "off", or a file path (relative to the config file)',
        _access_log,
    ),
    FieldSpec(
        "format",
        "combined",
        "string",
        'access log format: "combined" (nginx combined), "json" (one object per line) or '
        'a template like "{client_ip} {status} {duration_ms}"; also the default format of '
        "[[log.access_outputs]]",
        _log_format,
    ),
    FieldSpec(
        "level",
        "info",
        "string",
        'error log level: "debug", "info", "warning" or "error"',
        _choice("debug", "info", "warning", "error"),
    ),
    FieldSpec(
        "error_format",
        "text",
        "string",
        'error log lines: "text" or "json" (one object per line)',
        _choice("text", "json"),
    ),
    FieldSpec(
        "error_repeats",
        100,
        "integer 0..1000000",
        "error log lines of one message (its template) per minute; the rest are counted "
        "and reported once (0: no limit)",
        _integer(0, 1_000_000),
    ),
)

_ACCESS_OUTPUT_KEYS: Final = ("file", "stream", "syslog", "format", "min_status", "sample",
                              "facility", "app_name")
_SYSLOG_SCHEMES: Final = ("udp://", "tcp://", "unix://")
_APP_NAME_RE: Final = re.compile(r"[!-~]{1,48}")  # RFC 5424 APP-NAME: PRINTUSASCII{1,48}


def _sample(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"expected a number above 0 and at most 1, found {_describe(value)}")
    return float(value)


def _syslog_address(value: object) -> str:
    """udp://host:port, tcp://host:port, unix:///path (absolute)."""
    text = _string(value)
    scheme = next((s for s in _SYSLOG_SCHEMES if text.startswith(s)), None)
    if scheme is None:
        raise ValueError('expected "udp://HOST:PORT", "tcp://HOST:PORT" or "unix:///PATH", '
                         f"found {text!r}")
    rest = text[len(scheme):]
    if scheme == "unix://":
        if not rest.startswith("/") or "\x00" in rest:
            raise ValueError(f'expected an absolute socket path like "unix:///dev/log", '
                             f"found {text!r}")
        return text
    host, port_text, bracketed = _split_host_port(rest)
    port = _parse_port(port_text)
    host = _ipv6(host) if bracketed else _hostname(host)
    return f"{scheme}[{host}]:{port}" if bracketed else f"{scheme}{host}:{port}"


def _app_name(value: object) -> str:
    text = _string(value)
    if not _APP_NAME_RE.fullmatch(text):
        raise ValueError("expected 1 to 48 printable ASCII characters without spaces "
                         f"(RFC 5424 APP-NAME), found {text!r}")
    return text


# Fields the request id must not replace: the proxy writes or drops these itself.
_RESERVED_ID_HEADERS: Final = frozenset((
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "proxy-connection", "via", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "forwarded", "expect", "traceparent", "tracestate"))


def _request_id_header(value: object) -> str:
    name = _header_name(value)
    if name.lower() in _RESERVED_ID_HEADERS:
        raise ValueError(f"{name!r} is a field the proxy writes itself; choose another name")
    return name


TRACING_FIELDS: Final = (
    FieldSpec("request_id", False, "boolean",
              "send each request's id upstream and return it to the client in "
              "request_id_header (the id is in the access log either way)", _boolean),
    FieldSpec("request_id_header", "X-Request-ID", "header name",
              "the field that carries the request id", _request_id_header),
    FieldSpec("trust_request_id", "trusted_proxies",
              '"trusted_proxies", "always" or "never"',
              "when an incoming id is kept (from a peer in server.trusted_proxies, from "
              "anyone, from no one); otherwise it is replaced by a new one",
              _choice("trusted_proxies", "always", "never")),
    FieldSpec("traceparent", False, "boolean",
              "W3C Trace Context: continue the incoming trace with a new span id for this "
              "hop (tracestate kept); a malformed traceparent is dropped", _boolean),
    FieldSpec("start_trace", True, "boolean",
              "with traceparent: start a trace when the request has none (or a malformed one)",
              _boolean),
)

# PROXY protocol headers sent to upstream servers ("off": none).
PROXY_PROTOCOL_VERSIONS: Final = ("off", "v1", "v2")


def _proxy_protocol_version(value: object) -> str:
    if isinstance(value, bool):
        raise ValueError('expected "off", "v1" or "v2" (the version sent; only a listener takes'
                         f" true/false), found {_describe(value)}")
    version: str = _choice(*PROXY_PROTOCOL_VERSIONS)(value)
    return version

UPSTREAM_FIELDS: Final = (
    FieldSpec(
        "keepalive",
        128,
        "integer 0..10000",
        "max idle pooled connections per server (0 disables pooling)",
        _integer(0, 10000),
    ),
    FieldSpec(
        "idle_timeout",
        "30s",
        "duration > 0",
        "pooled idle connection is closed after this",
        _duration(),
    ),
    FieldSpec(
        "connect_timeout",
        "5s",
        "duration > 0",
        "connecting to a server; exceeded -> 504",
        _duration(),
    ),
    FieldSpec(
        "read_timeout",
        "60s",
        "duration > 0",
        "max gap between reads from the upstream -> 504 before the response head, abort after",
        _duration(),
    ),
    FieldSpec(
        "send_timeout",
        "60s",
        "duration > 0",
        "max time the upstream may stall reading our request",
        _duration(),
    ),
    FieldSpec(
        "queue",
        100,
        "integer 0..1000000",
        "requests waiting per worker while every usable server is at max_conns"
        " (0: answer 503 at once)",
        _integer(0, 1_000_000),
    ),
    FieldSpec(
        "queue_timeout",
        "10s",
        "duration > 0",
        "longest wait in the queue -> 503",
        _duration(),
    ),
    FieldSpec(
        "resolve_interval",
        "30s",
        "duration > 0",
        "servers named by host name are resolved again this often (in every worker)",
        _duration(),
    ),
    FieldSpec(
        "proxy_protocol",
        "off",
        '"off" | "v1" | "v2"',
        "start every connection to the servers with a PROXY protocol header naming the"
        " client (HAProxy send-proxy / send-proxy-v2); health checks send v1 UNKNOWN / v2 LOCAL",
        _proxy_protocol_version,
    ),
    FieldSpec(
        "protocol",
        "http1",
        '"http1" | "h2"',
        "what the proxy speaks to the servers: HTTP/1.1, or HTTP/2 (https:// servers with"
        ' ALPN "h2", the others cleartext with prior knowledge, as h2c:// servers always do)',
        _choice("http1", "h2"),
    ),
)

SERVER_OPTION_FIELDS: Final = (
    FieldSpec("weight", 1, "integer 1..1000", "share of the requests", _integer(1, 1000)),
    FieldSpec(
        "max_conns",
        0,
        "integer 0..1000000",
        "requests in flight to this server, per worker (0: no limit)",
        _integer(0, 1_000_000),
    ),
    FieldSpec(
        "backup",
        False,
        "boolean",
        "used only while no primary (non-backup) server is usable",
        _boolean,
    ),
    FieldSpec(
        "proxy_protocol",
        None,
        '"off" | "v1" | "v2"',
        "this server's PROXY protocol header, instead of the upstream's proxy_protocol",
        _proxy_protocol_version,
    ),
)

BALANCE_ALGORITHMS: Final = (
    "round_robin", "weighted", "least_conn", "random", "p2c", "ewma", "ring", "maglev"
)
HASH_ALGORITHMS: Final = ("ring", "maglev")


def _balance_factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, found {_describe(value)}")
    if value != 0 and not 1.0 < value <= 100.0:
        raise ValueError(f"must be 0 (off) or above 1 and at most 100, found {value}")
    return float(value)


def _hash_template(value: object) -> Template:
    """hash_key: a template over request variables (no regex captures)."""
    template = parse_template(_string(value))
    if not template.parts:
        raise ValueError("must not be empty")
    return template


BALANCE_FIELDS: Final = (
    FieldSpec(
        "balance",
        "round_robin",
        " | ".join(BALANCE_ALGORITHMS),
        "how a server is chosen per request",
        _choice(*BALANCE_ALGORITHMS),
    ),
    FieldSpec(
        "balance_factor",
        0,
        "0, or a number above 1",
        "ring/maglev: no server takes more than factor x the average in-flight requests",
        _balance_factor,
    ),
    FieldSpec(
        "slow_start",
        0,
        "duration",
        "a returning server's weight ramps up from ~0 over this long (0: off;"
        " not with ring/maglev)",
        _duration(zero_ok=True),
    ),
)

# -- [upstreams.NAME.health_check], .eject, .retry

# An origin-form request target (RFC 9112 3.2.1): "/", then URI path and query
# characters; anything else must be percent-encoded.
_TARGET_CHAR_RE: Final = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_STATUS_RANGE_RE: Final = re.compile(r"([0-9]{3})(?:-([0-9]{3}))?")
_MAX_BODY_PROBE: Final = 65536  # how much of a health-check response body is searched


def _health_path(value: object) -> str:
    text = _string(value)
    if not text.startswith("/"):
        raise ValueError(f'must start with "/" (a path, optionally with a ?query), found {text!r}')
    bad = _TARGET_CHAR_RE.search(text)
    if bad is not None:
        raise ValueError(f"must not contain {bad.group()!r} (percent-encode it), found {text!r}")
    if _BAD_ESCAPE_RE.search(text):
        raise ValueError(f"'%' must start an escape of two hex digits, found {text!r}")
    return text


def _health_host(value: object) -> str:
    """A Host header value: a host name or IP literal, optionally ":port"; normalized."""
    text = _string(value)
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end >= 0 and text[end + 1 :]:
            if text[end + 1] != ":":
                raise ValueError(f'expected "[v6]" or "[v6]:port", found {text!r}')
            host, port = text[: end + 1], text[end + 2 :]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    host = _match_host(host, wildcard=False)
    return host if port is None else f"{host}:{_parse_port(port)}"


def _status_range(value: object) -> tuple[int, int]:
    """200 -> (200, 200); "200" -> (200, 200); "200-399" -> (200, 399)."""
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str):
        m = _STATUS_RANGE_RE.fullmatch(value)
        if m is None:
            raise ValueError(f'expected a status "NNN" or a range "NNN-NNN", found {value!r}')
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
    else:
        raise ValueError(
            f'expected a status (200, "200") or a range ("200-399"), found {_describe(value)}'
        )
    for status in (lo, hi):
        if not 100 <= status <= 599:
            raise ValueError(f"statuses must be from 100 to 599, found {_describe(value)}")
    if lo > hi:
        raise ValueError(f"the range must go from low to high ({hi}-{lo}), found {value!r}")
    return lo, hi


def _health_body(value: object) -> str:
    text = _string(value)
    if not text:
        raise ValueError("must not be empty (leave the key out to accept any body)")
    if len(text.encode()) > _MAX_BODY_PROBE:
        raise ValueError("must be at most 64k bytes (only the first 64k of a body are searched)")
    return text


def _grpc_service(value: object) -> str:
    text = _string(value)
    if len(text) > 127 or not text.isascii() or any(c.isspace() or not c.isprintable()
                                                     for c in text):
        raise ValueError(f'expected a gRPC service name like "helloworld.Greeter" (or ""),'
                         f" found {text!r}")
    return text


def _retry_condition(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'expected a string, found integer {value} (write "{value}")')
    text = _string(value)
    if text not in RETRY_CONDITIONS:
        # No "did you mean" for a status: 500 is not a near miss of 504.
        hint = "" if text.isdigit() else _suggest(text, RETRY_CONDITIONS)
        raise ValueError(
            f"unknown condition {text!r} (supported: {', '.join(RETRY_CONDITIONS)}){hint}"
        )
    return text


HEALTH_CHECK_FIELDS: Final = (
    FieldSpec(
        "path",
        "/",
        "string",
        'request target: "/", a path, and optionally a ?query (percent-encoded)',
        _health_path,
    ),
    FieldSpec("method", "GET", "GET | HEAD | OPTIONS", "request method",
              _choice("GET", "HEAD", "OPTIONS")),
    FieldSpec(
        "host",
        None,
        "string",
        'Host header: a host name or IP, optionally ":port" (default: the server address)',
        _health_host,
    ),
    FieldSpec("interval", "5s", "duration > 0", "time between two checks of a server",
              _duration()),
    FieldSpec("timeout", "2s", "duration > 0, at most interval",
              "a check not answered in full within this fails", _duration()),
    FieldSpec(
        "status",
        ["200-399"],
        'array of statuses (200, "200") or ranges ("200-399")',
        "statuses that pass",
        _array(_status_range, "statuses or ranges", empty_ok=False),
    ),
    FieldSpec(
        "body",
        None,
        "string",
        "text the first 64k of the body must contain (default: any body)",
        _health_body,
    ),
    FieldSpec("rise", 2, "integer 1..100", "consecutive passes that bring a server back",
              _integer(1, 100)),
    FieldSpec("fall", 3, "integer 1..100", "consecutive failures that take a server down",
              _integer(1, 100)),
    FieldSpec(
        "grpc_service",
        None,
        "string",
        "probe with the gRPC health protocol (grpc.health.v1.Health/Check) for this service"
        ' name ("": the whole server); HTTP/2 servers only; path, method, status and body'
        " are then not used",
        _grpc_service,
    ),
    FieldSpec("type", "http", "http | tcp",
              '"http": the request above; "tcp": a TCP connect that succeeds passes (for '
              "servers behind tcp listeners that do not speak HTTP)", _choice("http", "tcp")),
)

# The HTTP keys of a health check, refused with type = "tcp".
_HEALTH_HTTP_KEYS: Final = ("path", "method", "host", "status", "body", "grpc_service")

TCP_LISTENER_FIELDS: Final = (
    FieldSpec("idle_timeout", "10m", "duration > 0",
              "no byte either way for this long closes both sides (as nginx's stream "
              "proxy_timeout)", _duration()),
    FieldSpec("client_hello_timeout", "5s", "duration > 0",
              "with sni: the whole TLS ClientHello must arrive within this",
              _duration()),
    FieldSpec("client_hello_max_bytes", 16384, "size 512..65536",
              "with sni: a ClientHello larger than this is refused", _size(512, 65536)),
)

EJECT_FIELDS: Final = (
    FieldSpec(
        "failures",
        5,
        "integer 0..1000",
        "consecutive failures (connect error, reset or timeout before a response,"
        " 502/503/504) seen by a worker that eject a server (0: off)",
        _integer(0, 1000),
    ),
    FieldSpec("time", "10s", "duration > 0", "first ejection; doubled on each one in a row",
              _duration()),
    FieldSpec("max_time", "300s", "duration >= time", "longest ejection", _duration()),
)

RETRY_FIELDS: Final = (
    FieldSpec("retries", 2, "integer 0..10", "extra tries, each on a server not tried yet",
              _integer(0, 10)),
    FieldSpec(
        "on",
        ["reset", "timeout"],
        f"array of {', '.join(RETRY_CONDITIONS)}",
        "what is retried besides connect failures (idempotent requests only)",
        _array(_retry_condition, "conditions", empty_ok=True, unique=True),
    ),
    FieldSpec(
        "budget",
        0.2,
        "number 0..1",
        "retries (other than after a connect failure) add at most this fraction of the"
        " requests",
        _fraction,
    ),
    FieldSpec("per_try_timeout", 0, "duration",
              "wait for a response head per try (0: read_timeout)", _duration(zero_ok=True)),
    FieldSpec("buffer", "64k", "size 0..64m", "request bodies up to this size are kept for a retry",
              _size(0, 64 * 1024**2)),
)

ROUTING_FIELDS: Final = (
    FieldSpec(
        "merge_slashes",
        True,
        "boolean",
        'collapse runs of "/" in request paths (and in the paths routes name) into one',
        _boolean,
    ),
)

# -- [listeners.tls] and [upstreams.NAME.tls]

TLS_VERSIONS: Final = ("1.2", "1.3")  # 1.0 and 1.1 are deprecated (RFC 8996)
ALPN_PROTOCOLS: Final = ("h2", "http/1.1")
# OpenSSL cipher-list syntax: names joined by ':', with the '!', '+' and '-' operators.
_CIPHER_CHAR_RE: Final = re.compile(r"[^A-Za-z0-9:+!_-]")
# RFC 6797 6.1: directive names are case-insensitive; max-age is required (and first here).
_HSTS_RE: Final = re.compile(r"max-age=[0-9]{1,10}[ \t]*(?:;.*)?", re.IGNORECASE)
_NOT_VISIBLE_RE: Final = re.compile(r"[^\x20-\x7e]")
_TLS_VERSION_TYPO_RE: Final = re.compile(r"(?:tls|ssl)[ v]*(1\.[0-3])", re.IGNORECASE)


def _tls_version(value: object) -> str:
    if isinstance(value, float):
        raise ValueError(f'expected a string, found float {value!r} (write "{value!r}")')
    text = _string(value)
    typo = _TLS_VERSION_TYPO_RE.fullmatch(text)
    if typo is not None:
        text = typo.group(1)
    if text in ("1.0", "1.1"):
        raise ValueError(
            f'TLS {text} is not supported (deprecated by RFC 8996); use "1.2" or "1.3"'
        )
    if text not in TLS_VERSIONS or typo is not None:
        hint = f"; did you mean {text!r}?" if typo is not None else ""
        raise ValueError(f"unsupported value {value!r} (supported: 1.2, 1.3){hint}")
    return text


def _ciphers(value: object) -> str:
    text = _string(value)
    if not text:
        raise ValueError("must not be empty (leave the key out for the default suites)")
    bad = _CIPHER_CHAR_RE.search(text)
    if bad is not None:
        raise ValueError(
            f"must not contain {bad.group()!r}: write OpenSSL cipher names joined by ':'"
            f" (with '!', '+' and '-'), found {text!r}"
        )
    # OpenSSL itself is the judge of what the string selects; unknown names are skipped.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(text)
    except ssl.SSLError:
        raise ValueError(f"selects no cipher suite OpenSSL knows, found {text!r}") from None
    return text


def _weak_ciphers(ciphers: str) -> list[str]:
    """The TLS 1.2 suites a (valid) cipher string allows that lack forward secrecy or AEAD."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers(ciphers)
    return [
        suite["name"]
        for suite in context.get_ciphers()
        if suite.get("protocol") != "TLSv1.3"
        and (suite.get("kea") not in ("kx-ecdhe", "kx-dhe") or not suite.get("aead"))
    ]


def _alpn_protocol(value: object) -> str:
    text = _string(value)
    if text not in ALPN_PROTOCOLS:
        hint = _suggest(text, ALPN_PROTOCOLS)
        raise ValueError(
            f"unsupported protocol {text!r} (supported: {', '.join(ALPN_PROTOCOLS)}){hint}"
        )
    return text


def _hsts(value: object) -> str:
    text = _string(value)
    bad = _NOT_VISIBLE_RE.search(text)
    if bad is not None:
        raise ValueError(
            f"must hold only visible ASCII characters and spaces, found {bad.group()!r}"
        )
    if not _HSTS_RE.fullmatch(text):
        raise ValueError(
            'must start with "max-age=" and a number of seconds, as in'
            f' "max-age=31536000; includeSubDomains", found {text!r}'
        )
    return text


def _file_path(value: object) -> str:
    """A file path as written; the checker resolves it against the config's directory."""
    text = _string(value)
    if not text:
        raise ValueError("must not be empty")
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    return text


def _server_name(value: object, *, wildcard: bool) -> str:
    """A name as sent in SNI: a DNS name (normalized like route hosts), never an IP."""
    name = _match_host(value, wildcard=wildcard)
    if name.startswith("["):
        is_ip = True
    else:
        try:
            ipaddress.IPv4Address(name)
            is_ip = True
        except ValueError:
            is_ip = False
    if is_ip:
        raise ValueError(
            f"must be a host name: TLS server names (SNI) are never IP addresses, found {value!r}"
        )
    return name


def _certificate_name(value: object) -> str:
    return _server_name(value, wildcard=True)


def _sni(value: object) -> str:
    return _server_name(value, wildcard=False)


CERTIFICATE_FIELDS: Final = (
    FieldSpec("cert", None, "path, **required**",
              "PEM certificate chain, leaf first (relative to the config file)", _file_path),
    FieldSpec("key", None, "path, **required**", "its PEM private key, unencrypted", _file_path),
    FieldSpec(
        "names",
        None,
        'array of host names or "*.wildcards"',
        "the SNI names this certificate serves (default: the names in it)",
        _array(_certificate_name, "host names", empty_ok=False, unique=True),
    ),
)

LISTENER_TLS_FIELDS: Final = (
    FieldSpec(
        "unknown_sni",
        "default",
        "default | refuse",
        "no SNI, or a name no certificate serves: the first certificate, or a refused handshake",
        _choice("default", "refuse"),
    ),
    FieldSpec("min_version", "1.2", '"1.2" | "1.3"', "oldest TLS version accepted", _tls_version),
    FieldSpec(
        "ciphers",
        None,
        "string",
        "TLS 1.2 cipher suites, OpenSSL syntax (default: ECDHE with AES-GCM or"
        " ChaCha20-Poly1305)",
        _ciphers,
    ),
    FieldSpec(
        "alpn",
        ["h2", "http/1.1"],
        'array of "h2", "http/1.1"',
        "protocols offered by ALPN, in the server's order of preference; without \"h2\""
        " the listener speaks HTTP/1.1 only",
        _array(_alpn_protocol, 'protocol ids like "http/1.1"', empty_ok=False, unique=True),
    ),
    FieldSpec(
        "client_auth",
        "none",
        "none | optional | required",
        "ask clients for a certificate: no, yes (a client without one is let in), yes and"
        " refuse a client without a valid one",
        _choice("none", "optional", "required"),
    ),
    FieldSpec("client_ca", None, "path",
              "PEM bundle of the CAs that sign client certificates (required with client_auth)",
              _file_path),
    FieldSpec("handshake_timeout", "10s", "duration > 0",
              "from the connection until the TLS handshake is done -> closed", _duration()),
    FieldSpec(
        "hsts",
        None,
        "string",
        'Strict-Transport-Security added to every response, e.g. "max-age=31536000"',
        _hsts,
    ),
    FieldSpec(
        "engine",
        "openssl",
        "openssl | python",
        "who runs TLS: OpenSSL driven from C (fastest), or uvloop's SSL transport over"
        " Python's ssl module",
        _choice("openssl", "python"),
    ),
)

UPSTREAM_TLS_FIELDS: Final = (
    FieldSpec("verify", True, "boolean",
              "check the servers' certificates and names", _boolean),
    FieldSpec("ca", None, "path",
              "PEM bundle of the CAs trusted for the servers (default: the system's)",
              _file_path),
    FieldSpec("sni", None, "host name",
              "the name sent as SNI and verified (default: the server's host name)", _sni),
    FieldSpec("cert", None, "path", "client certificate presented to the servers, with key",
              _file_path),
    FieldSpec("key", None, "path", "its PEM private key, unencrypted", _file_path),
    FieldSpec("min_version", "1.2", '"1.2" | "1.3"', "oldest TLS version used", _tls_version),
)

def _ban_event(value: object) -> str:
    text = _string(value)
    if text in ("waf", "4xx") or (len(text) == 3 and text.isdigit() and text.startswith("4")):
        return text
    raise ValueError(f'expected "waf", "4xx" or a 4xx status like "401", found {text!r}')


def _valid_ttls(value: object) -> Mapping[int, float]:
    """{ "200" = "10m", "404" = "1m" }: seconds per status, as nginx's proxy_cache_valid."""
    if not isinstance(value, Mapping):
        raise ValueError(f'expected a table like {{ "200" = "10m" }}, found {_describe(value)}')
    out = {}
    for status, ttl in value.items():
        if not (isinstance(status, str) and status.isdigit() and 100 <= int(status) <= 599):
            raise ValueError(f"{status!r} is not a status code (100..599)")
        try:
            out[int(status)] = parse_duration(ttl)
        except ValueError as e:
            raise ValueError(f"{status}: {e}") from None
    return MappingProxyType(out)


def _cache_key(value: object) -> Template:
    template = parse_template(_string(value))
    if not template.parts:
        raise ValueError("must not be empty")
    return template


def _header_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f'expected a header name (a token like "Cache-Tag"), '
                         f"found {_describe(value)}")
    return value


def _admin_token(value: object) -> str:
    text = _string(value)
    if len(text) < 16 or not all(33 <= ord(c) < 127 for c in text):
        raise ValueError("must be at least 16 printable ASCII characters, without spaces")
    return text


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fraction_0_1(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, found {_describe(value)}")
    return float(value)


CACHE_FIELDS: Final = (
    FieldSpec("memory", "64m", "size 64k..64g", "responses kept in memory, per worker",
              _size(64 * 1024, 64 * 1024**3)),
    FieldSpec("max_object", "8m", "size", "a bigger response is passed on, not stored",
              _size(1)),
    FieldSpec("key", "{scheme}://{host}{request_uri}", "template",
              "the primary cache key (Vary adds the rest)", _cache_key),
    FieldSpec("heuristic_fraction", 0.1, "number 0..1",
              "freshness from Last-Modified when the response gives none: this share of "
              "its age", _fraction_0_1),
    FieldSpec("heuristic_max", "24h", "duration", "cap on that heuristic freshness",
              _duration(zero_ok=True)),
    FieldSpec("valid", {}, 'table like { "200" = "10m" }',
              "freshness per status when the response gives none (nginx proxy_cache_valid)",
              _valid_ttls),
    FieldSpec("stale_while_revalidate", "0s", "duration",
              "serve a stale response this long while it is refreshed (unless the response "
              "says otherwise)", _duration(zero_ok=True)),
    FieldSpec("stale_if_error", "0s", "duration",
              "serve a stale response this long when the upstream fails (unless the "
              "response says otherwise)", _duration(zero_ok=True)),
    FieldSpec("store_set_cookie", False, "boolean",
              "store responses that set cookies (off, as nginx and Varnish)", _boolean),
    FieldSpec("ignore_client_no_cache", False, "boolean",
              "serve fresh hits even when the client asks for no-cache (a browser reload)",
              _boolean),
    FieldSpec("lock_timeout", "5s", "duration > 0",
              "how long a request waits for another one fetching the same key", _duration()),
    FieldSpec("debug", False, "boolean", "Cache-Status shows the cache key", _boolean),
    FieldSpec("tag_headers", ["Surrogate-Key", "Cache-Tag"], "array of header names",
              "response fields whose tags (separated by spaces or commas) the admin API "
              "can purge by", _array(_header_name, "header names", empty_ok=True, unique=True)),
)


# A disk hit is read whole (in a thread) before it is sent: this bounds the memory
# one hit may take.
DISK_MAX_OBJECT: Final = 1024**3

DISK_FIELDS: Final = (
    FieldSpec("path", None, "directory", "where the files go (relative to the config file); "
              "made when missing; one cache per directory", _string),
    FieldSpec("size", None, "size 1m..", "the evictor keeps the directory under this",
              _size(1024 * 1024)),
    FieldSpec("max_object", None, 'size, at most "1g"',
              "a bigger response is not written to disk (default: 64m, at most a quarter "
              "of size)", _size(1, DISK_MAX_OBJECT)),
)


# Redis holds the whole value in memory and answers one command at a time: large
# values slow it down for every proxy sharing it.
REDIS_MAX_OBJECT: Final = 64 * 1024**2
_REDIS_PREFIX_RE: Final = re.compile(r"[!-~]{1,128}")


def _redis_timeout(value: object) -> float:
    seconds = _duration()(value)
    if not 0.001 <= seconds <= 10:
        raise ValueError(f"must be from 1ms to 10s, found {_describe(value)}")
    return float(seconds)


def _redis_prefix(value: object) -> str:
    text = _string(value)
    if not _REDIS_PREFIX_RE.fullmatch(text):
        raise ValueError("must be 1 to 128 printable ASCII characters without spaces, "
                         f"found {text!r}")
    return text


REDIS_CACHE_FIELDS: Final = (
    FieldSpec("url", None, "Redis URL", "redis://HOST:PORT/DB, rediss://... or "
              "unix:///PATH (required)", lambda v: _store_url(v)),
    FieldSpec("max_object", "1m", 'size, at most "64m"',
              "a bigger response is not written to Redis", _size(1, REDIS_MAX_OBJECT)),
    FieldSpec("timeout", "100ms", "duration 1ms..10s",
              "a Redis lookup or write slower than this is a miss (and opens the breaker)",
              _redis_timeout),
    FieldSpec("prefix", "fastproxy:cache:NAME:", "string",
              "of every key this cache writes", _redis_prefix),
)


def _ban_window(value: object) -> float:
    seconds = _duration()(value)
    if seconds < 0.001:
        raise ValueError(f"must be at least 1ms, found {_describe(value)}")
    return float(seconds)


AUTO_BAN_FIELDS: Final = (
    FieldSpec("after", 20, "integer 1..65535",
              "refusals of one client within `window` that ban it", _integer(1, 65535)),
    FieldSpec("window", "1m", "duration 1ms..24h", "the time those refusals are counted over",
              _ban_window),
    FieldSpec("ban_time", "10m", "duration > 0", "how long a banned client is refused",
              _duration()),
    FieldSpec("on", ["waf"], 'array of "waf", "4xx", "401"...',
              'what counts as a refusal: "waf" (WAF blocks), "4xx" (every 4xx answer, the '
              "proxy's or an upstream's) or one status", _array(_ban_event, "events",
                                                                 empty_ok=False, unique=True)),
    FieldSpec("exempt", [], "array of CIDRs", "clients never banned", _cidr_list),
    FieldSpec("clients", 100_000, "integer 64..10000000",
              "clients the shared table follows at once (24 bytes each)",
              _integer(64, 10_000_000)),
)

def _buckets(value: object) -> tuple[float, ...]:
    seconds = _array(_duration(), "durations", empty_ok=False, unique=True)(value)
    if list(seconds) != sorted(seconds):
        raise ValueError("must be in increasing order")
    if len(seconds) > 30:
        raise ValueError(f"at most 30 buckets, found {len(seconds)}")
    if seconds[0] < 0.0001:
        raise ValueError("the smallest bucket is 100us")
    return tuple(seconds)


METRICS_FIELDS: Final = (
    FieldSpec("enabled", True, "boolean",
              "count requests for /metrics on the admin API (which needs [admin])", _boolean),
    FieldSpec("buckets", ["5ms", "10ms", "25ms", "50ms", "100ms", "250ms", "500ms", "1s",
                          "2.5s", "5s", "10s"], "array of durations",
              "upper bounds of the latency histograms (a change needs a restart)", _buckets),
    FieldSpec("analytics", True, "boolean",
              "count each worker's top paths, client addresses and user agents for the "
              "dashboard (64 of each, space-saving)", _boolean),
)

_SECTIONS: Final[Mapping[str, tuple[FieldSpec, ...]]] = MappingProxyType(
    {
        "server": SERVER_FIELDS,
        "limits": LIMITS_FIELDS,
        "timeouts": TIMEOUTS_FIELDS,
        "log": LOG_FIELDS,
        "routing": ROUTING_FIELDS,
        "metrics": METRICS_FIELDS,
        "tracing": TRACING_FIELDS,
    }
)
_TOP_LEVEL_KEYS: Final = (*_SECTIONS, "listeners", "upstreams", "routes", "waf", "auto_ban",
                          "caches", "admin")
_LISTENER_KEYS: Final = ("address", "name", "default_host", "tls", "https_redirect", "access",
                         "proxy_protocol", "h2c", *LISTENER_SIZE_KEYS, "mode", "upstream", "sni",
                         *(f.name for f in TCP_LISTENER_FIELDS))
# Keys that only mean something where requests are parsed (refused on tcp listeners),
# and keys that only mean something for tcp listeners (refused on HTTP ones).
_HTTP_LISTENER_KEYS: Final = ("default_host", "https_redirect", "h2c", *LISTENER_SIZE_KEYS)
_SNI_RULE_KEYS: Final = ("names", "upstream")  # one element of a tcp listener's sni
_TCP_LISTENER_KEYS: Final = ("upstream", "sni", *(f.name for f in TCP_LISTENER_FIELDS))
_STICKY_KEYS: Final = ("cookie", "max_age", "secure")
# An RFC 9110 token: what a header field name is, and an RFC 6265 cookie-name too.
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UPSTREAM_KEYS: Final = (
    "servers",
    "tls",
    "hash_key",
    "sticky",
    "health_check",
    "eject",
    "retry",
    *(f.name for f in UPSTREAM_FIELDS),
    *(f.name for f in BALANCE_FIELDS),
)
_SERVER_KEYS: Final = ("address", *(f.name for f in SERVER_OPTION_FIELDS))
_HEALTH_CHECK_KEYS: Final = tuple(f.name for f in HEALTH_CHECK_FIELDS)
_EJECT_KEYS: Final = tuple(f.name for f in EJECT_FIELDS)
_RETRY_KEYS: Final = tuple(f.name for f in RETRY_FIELDS)
_CERTIFICATE_KEYS: Final = tuple(f.name for f in CERTIFICATE_FIELDS)
_LISTENER_TLS_KEYS: Final = (
    "certificates", "client_cert_headers", *(f.name for f in LISTENER_TLS_FIELDS)
)
_UPSTREAM_TLS_KEYS: Final = tuple(f.name for f in UPSTREAM_TLS_FIELDS)
_WAF_KEYS: Final = ("rule_sets", "exclusions", "rules", "body_limit")
_CACHE_KEYS: Final = (*(f.name for f in CACHE_FIELDS), "disk", "redis")
_ADMIN_KEYS: Final = ("address", "token", "token_file")

_LOG_STREAMS: Final = ("stdout", "stderr", "off")
_RATE_LIMIT_KEYS: Final = ("key", "rate", "burst", "delay", "store", "on_store_error",
                            "store_timeout")
_LONGEST_RATE_WINDOW: Final = 365 * 86400.0  # seconds a whole burst may take to refill
_RATE_RE: Final = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*r?/(s|m|h)")
_RATE_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_KEY_SHORTHANDS: Final = {"client_ip": "{client_ip}", "host": "{host}", "path": "{path}"}


def _rate(value: object) -> tuple[float, str]:
    """'10/s', '600/m', '5r/s' -> (per second, as written)."""
    if not isinstance(value, str):
        raise ValueError(f'expected a string like "10/s" or "600/m", found {_describe(value)}')
    m = _RATE_RE.fullmatch(value.strip())
    if m is None:
        raise ValueError(f'expected a rate like "10/s", "600/m" or "5r/s", found {value!r}')
    per_second = float(m.group(1)) / _RATE_UNITS[m.group(2)]
    if not per_second > 0:
        raise ValueError("must be more than 0")
    return per_second, value.strip()


def _store_url(value: object) -> str:
    """A Redis URL (a rate limit's shared store, a cache's Redis tier): checked,
    and a client built (as the workers will), without connecting."""
    import logging

    from fastproxy.redislink import RedisLink

    url = _string(value)
    RedisLink(url, timeout=0.1, retry_after=1.0, what="", log=logging.getLogger(__name__))
    return url


def _rate_key(value: object) -> Template | None:
    """client_ip | host | path | header:NAME | cookie:NAME | query:NAME | route | a template."""
    text = _string(value)
    if text == "route":
        return None
    if text in _RATE_KEY_SHORTHANDS:
        return parse_template(_RATE_KEY_SHORTHANDS[text])
    kind, sep, name = text.partition(":")
    if sep and "{" not in text and kind in ("header", "cookie", "query"):
        if not name:
            raise ValueError(f"missing the {kind} name after '{kind}:'")
        return parse_template(f"{{{kind}.{name}}}")
    if "{" not in text:
        raise ValueError("expected client_ip, host, path, route, header:NAME, cookie:NAME, "
                         f"query:NAME or a template like \"{{client_ip}}:{{header.x-api-key}}\", "
                         f"found {text!r}")
    template = parse_template(text)
    if not template.parts:
        raise ValueError("must not be empty")
    return template


# --------------------------------------------------------------------------
# Addresses and names

_UPSTREAM_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")


def _split_host_port(text: str) -> tuple[str, str, bool]:
    """Split "host:port" / "[v6]:port" into (host, port text, bracketed)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"missing ']' after the IPv6 address in {text!r}")
        rest = text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f'missing port in {text!r} (expected "[v6]:port")')
        return text[1:end], rest[1:], True
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f'missing port in {text!r} (expected "host:port")')
    if ":" in host:
        raise ValueError(f'an IPv6 address must be in brackets, e.g. "[::1]:{port}"')
    return host, port, False


def _parse_listen_address(value: object) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ValueError(f'expected a string like "127.0.0.1:8080", found {_describe(value)}')
    host, port_text, bracketed = _split_host_port(value)
    port = _parse_port(port_text)
    if bracketed:
        return _ipv6(host), port
    if host in ("", "*"):
        return "0.0.0.0", port
    if host.lower() == "localhost":
        return "localhost", port
    try:
        return str(ipaddress.IPv4Address(host)), port
    except ValueError:
        raise ValueError(f'host must be an IP address or "localhost", found {host!r}') from None


_MAX_PEM_BYTES: Final = 16 * 1024**2  # a PEM file bigger than this is a mistake
_PEM_CERTIFICATE: Final = "-----BEGIN CERTIFICATE-----"
# PKCS#8 ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY") and the legacy RSA/EC/DSA forms.
_PEM_KEY_RE: Final = re.compile(r"-----BEGIN (ENCRYPTED )?(?:RSA |EC |DSA )?PRIVATE KEY-----")
_SERVER_SCHEMES: Final = {"http://": (False, 80), "https://": (True, 443),
                           "h2c://": (False, 80)}


def _parse_server_address(value: object) -> tuple[str, int, bool]:
    """"host:port", "[v6]:port", or with a scheme "http://host[:port]" /
    "https://host[:port]" / "h2c://host[:port]" (default port 80 / 443 / 80):
    (host, port, tls); the caller tells h2c:// by its prefix."""
    if not isinstance(value, str):
        raise ValueError(f'expected a string like "127.0.0.1:9000", found {_describe(value)}')
    text, tls, default_port = value, False, None
    scheme, sep, rest = value.partition("://")
    if sep:
        if scheme.lower() + sep not in _SERVER_SCHEMES:
            raise ValueError(f'unsupported scheme {scheme + sep!r} (use "http://", "https://"'
                             ' or "h2c://")'
                             f" in {value!r}")
        tls, default_port = _SERVER_SCHEMES[scheme.lower() + sep]
        text = rest.removesuffix("/")
        for char in "/?#@":
            if char in text:
                raise ValueError(f"must be a scheme and host[:port] only (no path, query or user),"
                                 f" found {value!r}")
        # "https://host" takes the scheme's port; a port given is parsed as usual.
        has_port = text.rfind(":") > text.rfind("]")
        if not has_port:
            text = f"{text}:{default_port}"
    host, port_text, bracketed = _split_host_port(text)
    if not host:
        raise ValueError(f"missing host in {value!r}")
    port = _parse_port(port_text)
    return (_ipv6(host) if bracketed else _hostname(host)), port, tls


# --------------------------------------------------------------------------
# The checker


def _valid(*values: object) -> bool:
    """None of the values was refused (an error is recorded for each that was)."""
    return all(value is not _INVALID for value in values)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _given(table: Mapping[str, Any], name: str) -> str:
    """A sibling key as a message names it: "interval" or "the default interval"."""
    return name if name in table else f"the default {name}"


def _disk_dir_problem(directory: str) -> str:
    """Why `directory` cannot hold a disk cache, or "" (it is, or can be made, a
    directory this user may write)."""
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            return f"{directory!r} is not a directory"
        if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            return f"{directory!r} is not writable by this user"
        return ""
    parent = os.path.dirname(directory)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{directory!r} cannot be made: {parent!r} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{directory!r} cannot be made: {parent!r} is not writable by this user"
    return ""


class _Checker(KeyChecker):
    def __init__(self, source: str, base_dir: str) -> None:
        self.source = source
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []
        self.warnings: list[str] = []

    @property
    def error_count(self) -> int:
        return len(self.issues)

    def error(self, key: str, reason: str) -> None:
        self.issues.append(ConfigIssue(self.source, key, reason))

    def warn(self, key: str, reason: str) -> None:
        self.warnings.append(str(ConfigIssue(self.source, key, reason)))

    def field(self, table: Mapping[str, Any], path: str, spec: FieldSpec) -> Any:
        """The converted value of one key (its default when absent), or _INVALID."""
        if spec.name not in table and spec.default is None:
            return None  # an optional key without a default
        key = _key(path, spec.name)
        try:
            return spec.convert(table.get(spec.name, spec.default))
        except _ElementErrors as exc:
            for index, reason in exc.problems:
                self.error(f"{key}[{index}]", reason)
        except ValueError as exc:
            self.error(key, str(exc))
        return _INVALID

    def fields(
        self, table: Mapping[str, Any], path: str, specs: Iterable[FieldSpec]
    ) -> dict[str, Any]:
        return {spec.name: self.field(table, path, spec) for spec in specs}

    # -- sections -----------------------------------------------------------

    def section(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        specs = _SECTIONS[name]
        table = self.table(data.get(name, {}), name)
        if table is None:
            table = {}
        self.known_keys(table, name, [spec.name for spec in specs])
        return self.fields(table, name, specs)

    def access_log(self, value: object) -> object:
        if value is _INVALID or value in _LOG_STREAMS:
            return value
        assert isinstance(value, str)
        return self.log_file("log.access", value)

    def access_outputs(self, raw: object, default_format: object) -> tuple[AccessOutput, ...]:
        """[[log.access_outputs]]: each one file, stream or syslog, its format and filters."""
        items = self.array(raw, "log.access_outputs", " of tables ([[log.access_outputs]])")
        if items is None:
            return ()
        if not items:
            self.error("log.access_outputs", 'give at least one output (or log.access = "off")')
        result: list[AccessOutput] = []
        files: dict[str, int] = {}
        for i, item in enumerate(items):
            path = f"log.access_outputs[{i}]"
            table = self.table(item, path)
            if table is None:
                continue
            before = len(self.issues)
            self.known_keys(table, path, _ACCESS_OUTPUT_KEYS)
            where = [k for k in ("file", "stream", "syslog") if k in table]
            if len(where) != 1:
                self.error(path, "give exactly one of file, stream or syslog"
                           + (f" (found {', '.join(where)})" if where else ""))
                continue
            kind = where[0]
            target = ""
            if kind == "file":
                target = self.convert(_key(path, "file"), _access_log, table["file"])
                if target is not _INVALID:
                    target = self.log_file(_key(path, "file"), target)
                    if target in files:
                        self.error(_key(path, "file"), f"the same file as "
                                   f"log.access_outputs[{files[target]}]")
                    files.setdefault(target, i)
            elif kind == "stream":
                kind = self.convert(_key(path, "stream"), _choice("stdout", "stderr"),
                                    table["stream"])
            else:
                target = self.convert(_key(path, "syslog"), _syslog_address, table["syslog"])
            for key in ("facility", "app_name"):
                if key in table and kind != "syslog":
                    self.error(_key(path, key), "applies to syslog outputs only")
            fmt = (self.convert(_key(path, "format"), _log_format, table["format"])
                   if "format" in table else default_format)
            min_status = self.convert(_key(path, "min_status"), _integer(0, 999),
                                      table.get("min_status", 0))
            sample = self.convert(_key(path, "sample"), _sample, table.get("sample", 1.0))
            facility = self.convert(_key(path, "facility"), _choice(*SYSLOG_FACILITIES),
                                    table.get("facility", "local0"))
            app_name = self.convert(_key(path, "app_name"), _app_name,
                                    table.get("app_name", "fastproxy"))
            if len(self.issues) != before or fmt is _INVALID:
                continue
            result.append(AccessOutput(kind=kind, target=target, format=str(fmt),
                                       min_status=min_status, sample=sample,
                                       facility=facility, app_name=app_name))
        return tuple(result)

    def log_file(self, key: str, value: str) -> Any:
        """A log file path made absolute (relative to the config file); its directory
        must exist."""
        path = os.path.normpath(os.path.join(self.base_dir, value))
        if os.path.isdir(path):
            self.error(key, f"{path!r} is a directory")
            return _INVALID
        if not os.path.isdir(os.path.dirname(path)):
            self.error(key, f"directory {os.path.dirname(path)!r} does not exist")
            return _INVALID
        return path

    def listeners(self, raw: object, upstreams: Collection[str] | None = None
                  ) -> tuple[list[Listener], set[str] | None]:
        """The valid listeners, and the names routes may use (None if not all known).
        `upstreams`: the names tcp listeners may use (None: not checked)."""
        if raw is _MISSING:
            self.error("listeners", "missing: at least one [[listeners]] table is required")
            return [], None
        items = self.array(raw, "listeners", " of tables ([[listeners]])")
        if items is None:
            return [], None
        if not items:
            self.error("listeners", "at least one listener is required")
        result: list[Listener] = []
        seen: dict[tuple[str, int], int] = {}
        names: dict[str, int] = {}
        complete = True
        for i, item in enumerate(items):
            path = f"listeners[{i}]"
            table = self.table(item, path)
            if table is None:
                complete = False
                continue
            self.known_keys(table, path, _LISTENER_KEYS)
            name: Any = None
            if "name" in table:
                name = self.convert(f"{path}.name", label_name, table["name"])
                if name is not _INVALID and name in names:
                    self.error(
                        f"{path}.name",
                        f"duplicate listener name {name!r} "
                        f"(already used by listeners[{names[name]}])",
                    )
                    name = _INVALID
                if name is not _INVALID:
                    names[name] = i
            default_host: Any = None
            if "default_host" in table:
                default_host = self.convert(
                    f"{path}.default_host",
                    lambda v: _match_host(v, wildcard=False),
                    table["default_host"],
                )
            tls = self.listener_tls(table["tls"], f"{path}.tls") if "tls" in table else None
            redirect = self.https_redirect(table, path)
            key = f"{path}.address"
            if "address" not in table:
                self.error(key, "missing required key")
                complete = complete and name is not None
                continue
            parsed = self.convert(key, _parse_listen_address, table["address"])
            if parsed is _INVALID:
                complete = complete and name is not None
                continue
            if parsed in seen:
                self.error(
                    key,
                    f"duplicate address {table['address']!r} "
                    f"(already used by listeners[{seen[parsed]}])",
                )
                continue
            seen[parsed] = i
            if name is None:
                name = _format_address(*parsed)
                if name in names:
                    self.error(
                        path,
                        f"its default name {name!r} (the address) is already used by "
                        f"listeners[{names[name]}]; give this listener a name",
                    )
                    continue
                names[name] = i
            access = None
            if "access" in table:
                access = access_list(self, table["access"], f"{path}.access", self.base_dir)
                if access is None:
                    continue
            sizes = self.listener_sizes(table, path)
            proxy_protocol = self.convert(f"{path}.proxy_protocol", _boolean,
                                          table.get("proxy_protocol", False))
            mode = self.convert(f"{path}.mode", _choice("http", "tcp"),
                                table.get("mode", "http"))
            tcp = self.tcp_listener(table, path, upstreams) if mode == "tcp" else None
            if mode == "tcp" and isinstance(tls, ListenerTls) and not (
                    isinstance(table.get("tls"), Mapping) and "alpn" in table["tls"]):
                # The bytes go to a server that need not speak HTTP/2: offer no h2
                # unless the config asks for it.
                tls = dataclasses.replace(tls, alpn=("http/1.1",))
            if mode == "http":
                for k in _TCP_LISTENER_KEYS:
                    if k in table:
                        self.error(f"{path}.{k}", 'only for mode = "tcp" listeners (an HTTP '
                                   "listener's requests go where the routes send them)")
            h2c = self.convert(f"{path}.h2c", _boolean, table.get("h2c", False))
            if h2c is True and tls is not None:
                self.error(f"{path}.h2c", "is for plain listeners; a TLS listener offers HTTP/2"
                           ' by ALPN ([listeners.tls] alpn, "h2" by default)')
                continue
            if not _valid(name, default_host, tls, redirect, sizes, proxy_protocol, mode, tcp,
                          h2c):
                continue
            result.append(Listener(parsed[0], parsed[1], name, default_host, tls, redirect,
                                   access, sizes, proxy_protocol, mode, tcp, h2c))
        return result, set(names) if complete else None

    def tcp_listener(self, table: Mapping[str, Any], path: str,
                     upstreams: Collection[str] | None) -> Any:
        """A `mode = "tcp"` listener's TcpSettings, or _INVALID."""
        errors = len(self.issues)
        for k in _HTTP_LISTENER_KEYS:
            if k in table:
                self.error(f"{path}.{k}", 'not for a mode = "tcp" listener: it passes bytes '
                           "without reading requests (HTTP only)")
        default: Any = None
        if "upstream" in table:
            default = self.tcp_upstream(table["upstream"], f"{path}.upstream", upstreams)
        sni: Any = None
        if "sni" in table:
            sni = self.sni_rules(table["sni"], f"{path}.sni", upstreams)
            if "tls" in table:
                self.error(f"{path}.sni", "routing by SNI passes TLS through unread; with tls "
                           "the proxy terminates TLS itself: give one or the other")
        elif "upstream" not in table:
            self.error(path, 'a mode = "tcp" listener needs upstream (where its connections '
                       "go), sni (routing by the TLS server name), or both")
        for k in ("client_hello_timeout", "client_hello_max_bytes"):
            if k in table and "sni" not in table:
                self.error(f"{path}.{k}", "only with sni (no ClientHello is read otherwise)")
        values = self.fields(table, path, TCP_LISTENER_FIELDS)
        if len(self.issues) != errors or not _valid(default, sni, *values.values()):
            return _INVALID
        return TcpSettings(default, sni, **values)

    def tcp_upstream(self, value: object, key: str, upstreams: Collection[str] | None) -> Any:
        name = self.convert(key, _string, value)
        if name is not _INVALID and upstreams is not None and name not in upstreams:
            defined = ", ".join(sorted(upstreams)) or "none"
            self.error(key, f"unknown upstream {name!r} (defined: {defined})")
            return _INVALID
        return name

    def sni_rules(self, raw: object, path: str, upstreams: Collection[str] | None) -> Any:
        """sni = [{ names = [...], upstream = "NAME" }, ...]"""
        items = self.array(raw, path, ' of tables like { names = ["a.example.com"], '
                                      'upstream = "a" }')
        if items is None:
            return _INVALID
        if not items:
            self.error(path, "give at least one { names = [...], upstream = ... } rule")
            return _INVALID
        rules: list[SniRule] = []
        seen: dict[str, str] = {}
        ok = True
        for j, item in enumerate(items):
            where = f"{path}[{j}]"
            table = self.table(item, where, ' like { names = ["a.example.com"], upstream = "a" }')
            if table is None:
                ok = False
                continue
            self.known_keys(table, where, _SNI_RULE_KEYS)
            if "upstream" not in table or "names" not in table:
                self.error(where, "needs names (server names) and upstream")
                ok = False
                continue
            upstream = self.tcp_upstream(table["upstream"], f"{where}.upstream", upstreams)
            names = self.field(table, where, FieldSpec(
                "names", None, "", "", _array(_sni_name, "server names", empty_ok=False,
                                              unique=True)))
            if not _valid(upstream, names):
                ok = False
                continue
            for name in names:
                if name in seen:
                    self.error(f"{where}.names", f"{name!r} is already routed by {seen[name]}")
                    ok = False
                seen[name] = where
            rules.append(SniRule(tuple(names), upstream))
        return tuple(rules) if ok else _INVALID

    def tcp_upstream_checks(self, listeners: Sequence[Listener],
                            upstreams: Mapping[str, Upstream]) -> set[str]:
        """The upstreams tcp listeners use, refusing what cannot apply to a byte stream."""
        used: dict[str, str] = {}
        for listener in listeners:
            if listener.tcp is None:
                continue
            names = [listener.tcp.upstream] + [r.upstream for r in listener.tcp.sni or ()]
            for name in names:
                if name is not None:
                    used.setdefault(name, listener.name)
        for name, listener_name in used.items():
            upstream = upstreams.get(name)
            if upstream is None:
                continue
            why = f'(used by the mode = "tcp" listener {listener_name!r})'
            for i, server in enumerate(upstream.servers):
                if server.tls:
                    self.error(f"upstreams.{name}.servers[{i}].address",
                               f"https:// is not for a tcp upstream {why}: a tcp listener "
                               "passes TLS through as it is; name the server host:port")
                elif server.h2:
                    self.error(f"upstreams.{name}.servers[{i}].address",
                               f"h2c:// is not for a tcp upstream {why}: a tcp listener "
                               "passes the client's bytes as they are; name the server "
                               "host:port")
            if upstream.protocol == "h2":
                self.error(f"upstreams.{name}.protocol",
                           f"HTTP/2 to the servers is HTTP {why}: a tcp listener passes the "
                           "client's bytes as they are")
            if upstream.sticky is not None:
                self.error(f"upstreams.{name}.sticky",
                           f"sticky cookies are HTTP {why}; balance = \"ring\" or "
                           "\"maglev\" keeps a client address on one server")
            if upstream.hash_key is not None and \
                    upstream.hash_key != parse_template("{client_ip}"):
                self.error(f"upstreams.{name}.hash_key",
                           f"only \"{{client_ip}}\" (the default) can apply {why}: tcp "
                           "connections are hashed by the client address")
        return set(used)

    def listener_sizes(self, table: Mapping[str, Any], path: str) -> Any:
        """A listener's own size limits (the [limits] fields of the same names)."""
        specs = {spec.name: spec for spec in LIMITS_FIELDS}
        sizes = {}
        for name in LISTENER_SIZE_KEYS:
            if name in table:
                value = self.field(table, path, specs[name])
                if value is _INVALID:
                    return _INVALID
                sizes[name] = value
        line, head = sizes.get("max_line_bytes"), sizes.get("max_header_bytes")
        if line is not None and head is not None and line > head:
            self.error(f"{path}.max_line_bytes",
                       f"must not exceed {path}.max_header_bytes ({head} bytes), found "
                       f"{line} bytes")
            return _INVALID
        return MappingProxyType(sizes)

    # -- TLS ----------------------------------------------------------------

    def https_redirect(self, table: Mapping[str, Any], path: str) -> Any:
        """A listener's https_redirect: a port, true (443) or false/absent (None)."""
        if "https_redirect" not in table:
            return None
        key = _key(path, "https_redirect")
        value = table["https_redirect"]
        if value is True:
            port: Any = 443
        elif value is False:
            return None
        elif isinstance(value, int):
            port = self.convert(key, _integer(1, 65535), value)
        else:
            self.error(key, f"expected a port (1 to 65535) or true (port 443), "
                            f"found {_describe(value)}")
            return _INVALID
        if "tls" in table and port is not _INVALID:
            self.error(key, "a TLS listener is already https: put https_redirect on a plain"
                            " listener")
            return _INVALID
        return port

    def listener_tls(self, raw: object, path: str) -> Any:
        """A listener's [listeners.tls] table as ListenerTls, or _INVALID."""
        table = self.table(raw, path, ' like { certificates = [{ cert = "site.pem",'
                                      ' key = "site.key" }] }')
        if table is None:
            return _INVALID
        errors_before = len(self.issues)
        self.known_keys(table, path, _LISTENER_TLS_KEYS)
        certificates = self.certificates(table.get("certificates", _MISSING),
                                         _key(path, "certificates"))
        values = self.fields(table, path, LISTENER_TLS_FIELDS)
        client_auth = values["client_auth"]
        if values["client_ca"] not in (None, _INVALID):
            values["client_ca"] = self.pem_file(_key(path, "client_ca"), values["client_ca"],
                                                certificate=True)
        headers: Any = ()
        if "client_cert_headers" in table:
            headers = self.client_cert_headers(table["client_cert_headers"],
                                               _key(path, "client_cert_headers"))
        if client_auth not in ("none", _INVALID):
            if "client_ca" not in table:
                self.error(_key(path, "client_ca"),
                           f'missing: required with client_auth = "{client_auth}"'
                           " (the CA bundle that signs client certificates)")
        elif client_auth == "none":
            if "client_ca" in table:
                self.warn(_key(path, "client_ca"), 'has no effect with client_auth = "none"')
            if "client_cert_headers" in table:
                self.error(_key(path, "client_cert_headers"),
                           'only used with client_auth = "optional" or "required"')
        ciphers = values["ciphers"]
        if ciphers not in (None, _INVALID):
            if values["min_version"] == "1.3":
                self.warn(_key(path, "ciphers"), 'has no effect with min_version = "1.3"'
                                                 " (TLS 1.3 suites are always the AEAD ones)")
            else:
                weak = _weak_ciphers(ciphers)
                if weak:
                    self.warn(_key(path, "ciphers"),
                              "allows suites without forward secrecy or without AEAD: "
                              + ", ".join(weak))
        if len(self.issues) != errors_before or certificates is None:
            return _INVALID
        tls = ListenerTls(certificates=tuple(certificates), client_cert_headers=headers,
                          **values)
        # Every cheap check passed (files readable, PEM blocks present): load them.
        self.load_certificates(tls, path)
        return tls

    def certificates(self, raw: object, path: str) -> list[CertificateFiles] | None:
        if raw is _MISSING:
            self.error(path, "missing required key")
            return None
        hint = ' like { cert = "site.pem", key = "site.key" }'
        items = self.array(raw, path, f" of tables{hint}")
        if items is None:
            return None
        if not items:
            self.error(path, "at least one certificate is required")
        errors_before = len(self.issues)
        result: list[CertificateFiles] = []
        for i, item in enumerate(items):
            key = f"{path}[{i}]"
            table = self.table(item, key, hint)
            if table is None:
                continue
            self.known_keys(table, key, _CERTIFICATE_KEYS)
            values: dict[str, Any] = {}
            for spec in CERTIFICATE_FIELDS:
                value = self.field(table, key, spec)
                if spec.name == "names":
                    value = () if value is None else value
                elif spec.name not in table:
                    self.error(_key(key, spec.name), "missing required key")
                elif value is not _INVALID:
                    value = self.pem_file(_key(key, spec.name), value,
                                          certificate=spec.name == "cert")
                values[spec.name] = value
            if _valid(*values.values()) and None not in values.values():
                result.append(CertificateFiles(**values))
        return result if len(self.issues) == errors_before and items else None

    def client_cert_headers(self, raw: object, path: str) -> Any:
        """{ field = "Header-Name" } as ((field, header), ...) in the order given."""
        table = self.table(raw, path, ' like { subject = "X-Client-Subject" }')
        if table is None:
            return _INVALID
        errors_before = len(self.issues)
        self.known_keys(table, path, CLIENT_CERT_FIELDS)
        pairs: list[tuple[str, str]] = []
        used: dict[str, str] = {}  # header name, lower-cased -> the field it carries
        for name, header in table.items():
            if name not in CLIENT_CERT_FIELDS:
                continue
            key = _key(path, name)
            if not isinstance(header, str) or not _TOKEN_RE.fullmatch(header):
                self.error(key, 'expected a header name (a token like "X-Client-Subject"),'
                                f" found {_describe(header)}")
            elif header.lower() in PROXY_OWNED_HEADERS:
                self.error(key, f"{header!r} is set by the proxy itself")
            elif header.lower() in used:
                self.error(key, f"header {header!r} already carries the {used[header.lower()]}")
            else:
                used[header.lower()] = name
                pairs.append((name, header))
        return tuple(pairs) if len(self.issues) == errors_before else _INVALID

    def pem_file(self, key: str, value: str, *, certificate: bool) -> Any:
        """The absolute path of a readable PEM file holding a certificate (or a private
        key), or _INVALID. Only cheap text checks: loading is fastproxy.tls's job."""
        path = os.path.normpath(os.path.join(self.base_dir, value))
        try:
            info = os.stat(path)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(info.st_mode):  # a FIFO or a device could block or never end
                self.error(key, f"cannot read {path}: not a regular file")
                return _INVALID
            with open(path, "rb") as fh:
                data = fh.read(_MAX_PEM_BYTES + 1)
        except OSError as exc:
            self.error(key, f"cannot read {path}: {exc.strerror or exc}")
            return _INVALID
        if len(data) > _MAX_PEM_BYTES:
            self.error(key, f"{path} is larger than {_human_size(_MAX_PEM_BYTES)}:"
                            " not a PEM file")
            return _INVALID
        text = data.decode("latin-1")
        if certificate:
            if _PEM_CERTIFICATE not in text:
                self.error(key, f"{path} holds no PEM certificate"
                                f" (no {_PEM_CERTIFICATE!r} line)")
                return _INVALID
            return path
        found = _PEM_KEY_RE.search(text)
        if found is None:
            self.error(key, f"{path} holds no PEM private key"
                            " (no '-----BEGIN ... PRIVATE KEY-----' line)")
            return _INVALID
        if found.group(1) or "Proc-Type: 4,ENCRYPTED" in text:
            self.error(key, f"{path} is encrypted with a passphrase, which fastproxy cannot ask"
                            " for; decrypt it (openssl pkey -in KEY -out PLAIN) and keep it"
                            " readable only by the proxy's user")
            return _INVALID
        return path

    def load_certificates(self, tls: ListenerTls, path: str) -> None:
        """Load the certificate files as serving them will (each key matching its
        certificate, the chains, the client CA bundle): fastproxy.tls builds the same
        contexts the master does, and reports each problem as (subkey, reason), e.g.
        ("certificates[1].key", "does not match the certificate"), shown here as
        ``listeners[0].tls.certificates[1].key``. It runs only after the text checks
        above passed, and only when that module provides it (so that this module does
        not depend on it)."""
        try:
            check = importlib.import_module("fastproxy.tls").check_certificates
        except (ImportError, AttributeError):
            return
        try:
            problems = check(tls)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.error(_key(path, "certificates"), f"cannot load: {exc}")
            return
        for subkey, reason in problems:
            self.error(f"{path}.{subkey}", reason)
        if not problems:
            warnings = getattr(importlib.import_module("fastproxy.tls"), "certificate_warnings",
                               None)
            for subkey, reason in warnings(tls) if warnings is not None else ():
                self.warn(f"{path}.{subkey}", f"{reason}; served anyway, but clients refuse it")

    def waf(self, raw: object) -> WafSettings | None:
        """[waf] rule_sets, exclusions, [[waf.rules]]: checked by building the engine."""
        from fastproxy import waf

        table = self.table(raw, "waf", ' like { rule_sets = ["sqli", "xss"] }')
        if table is None:
            return None
        self.known_keys(table, "waf", _WAF_KEYS)
        before = len(self.issues)
        body_limit = self.convert("waf.body_limit", _size(0, 64 * 1024),
                                  table.get("body_limit", "8k"))
        names = table.get("rule_sets", list(waf.DEFAULT_RULE_SETS))
        exclusions = table.get("exclusions", [])
        for key, value in (("rule_sets", names), ("exclusions", exclusions)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.error(_key("waf", key), f"expected an array of strings, found "
                                             f"{_describe(value)}")
        rules = []
        raw_rules = table.get("rules", [])
        items = self.array(raw_rules, _key("waf", "rules"), " of tables ([[waf.rules]])") or []
        for i, item in enumerate(items):
            where = f"waf.rules[{i}]"
            if not isinstance(item, Mapping):
                self.error(where, f"expected a table, found {_describe(item)}")
                continue
            try:
                rules.append(waf.parse_rule(item, where))
            except ValueError as e:
                key, _, reason = str(e).partition(": ")
                self.error(key if key.startswith("waf.") else where, reason or str(e))
        if len(self.issues) != before:
            return None
        try:
            waf.Waf(tuple(names), tuple(rules), tuple(exclusions), body_limit)
        except ValueError as e:
            self.error("waf", str(e))
            return None
        return WafSettings(tuple(names), tuple(exclusions), tuple(rules), body_limit)

    def caches(self, raw: object) -> dict[str, CacheSpec]:
        table = self.table(raw, "caches", " of [caches.NAME] tables")
        if table is None:
            return {}
        out = {}
        disk_paths: dict[str, str] = {}  # directory -> the cache that has it
        for name, item in table.items():
            path = _key("caches", name)
            if not _UPSTREAM_NAME_RE.fullmatch(name):
                self.error(path, "invalid cache name: use only letters, digits, '_', '.', '-'")
                continue
            spec = self.table(item, path, ' like { memory = "256m" }')
            if spec is None:
                continue
            self.known_keys(spec, path, _CACHE_KEYS)
            values = self.fields(spec, path, CACHE_FIELDS)
            disk = self.cache_disk(spec["disk"], _key(path, "disk"), name, disk_paths) \
                if "disk" in spec else None
            redis = self.cache_redis(spec["redis"], _key(path, "redis"), name) \
                if "redis" in spec else None
            if _INVALID in values.values() or disk is _INVALID or redis is _INVALID:
                continue
            values["disk"] = disk
            values["redis"] = redis
            if "max_object" not in spec:  # the default: 8m, at most a quarter of memory
                values["max_object"] = min(values["max_object"], values["memory"] // 4)
            if values["max_object"] > values["memory"]:
                self.error(_key(path, "max_object"),
                           f"must not exceed memory ({values['memory']} bytes)")
                continue
            out[name] = CacheSpec(name=name, **values)
        return out

    def cache_disk(self, raw: object, path: str, name: str, taken: dict[str, str]) -> Any:
        """`disk = { path, size, max_object }`: a DiskSpec, or _INVALID."""
        table = self.table(raw, path, ' like { path = "/var/cache/fastproxy", size = "10g" }')
        if table is None:
            return _INVALID
        self.known_keys(table, path, tuple(f.name for f in DISK_FIELDS))
        for required in ("path", "size"):
            if required not in table:
                self.error(_key(path, required), "missing required key")
        values = self.fields(table, path, DISK_FIELDS)
        if _INVALID in values.values() or values["path"] is None or values["size"] is None:
            return _INVALID
        if not values["path"] or "\0" in values["path"]:
            self.error(_key(path, "path"), "must not be empty or contain NUL")
            return _INVALID
        directory = os.path.normpath(os.path.join(self.base_dir, values["path"]))
        problem = _disk_dir_problem(directory)
        if problem:
            self.error(_key(path, "path"), problem)
            return _INVALID
        real = os.path.realpath(directory)  # one directory under two names is one
        owner = taken.get(real)
        if owner is not None:
            self.error(_key(path, "path"), f"{directory!r} is already the disk of "
                                           f"[caches.{owner}]: one cache per directory")
            return _INVALID
        taken[real] = name
        size = values["size"]
        max_object = values["max_object"]
        if max_object is None:
            max_object = min(64 * 1024**2, size // 4)
        elif max_object > size:
            self.error(_key(path, "max_object"), f"must not exceed size ({size} bytes)")
            return _INVALID
        return DiskSpec(path=directory, size=size, max_object=max_object)

    def admin(self, raw: object) -> AdminSettings | None:
        table = self.table(raw, "admin", ' like { address = "127.0.0.1:9901" }')
        if table is None:
            return None
        self.known_keys(table, "admin", _ADMIN_KEYS)
        before = len(self.issues)
        address = self.convert("admin.address", _parse_listen_address,
                               table.get("address", "127.0.0.1:9901"))
        token = None
        if "token" in table and "token_file" in table:
            self.error("admin.token", "give token or token_file, not both")
        elif "token" in table:
            token = self.convert("admin.token", _admin_token, table["token"])
        elif "token_file" in table:
            token = self.convert("admin.token_file", self.token_from_file, table["token_file"])
        if len(self.issues) > before or address is _INVALID:
            return None
        host, port = address
        if token is None and not _loopback(host):
            self.error("admin.address", f"the admin API on {host} (not a loopback address) "
                                        "needs a token (admin.token or admin.token_file)")
            return None
        return AdminSettings(host=host, port=port, token=token)

    def token_from_file(self, value: object) -> str:
        path = os.path.join(self.base_dir, _string(value))
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(4096).strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        return _admin_token(text)

    def cache_redis(self, raw: object, path: str, name: str) -> Any:
        """`redis = "redis://..."` or `redis = { url, max_object, timeout, prefix }`:
        a RedisCacheSpec, or _INVALID."""
        table: Mapping[str, Any]
        if isinstance(raw, str):
            table = {"url": raw}
            url_key = path
        else:
            found = self.table(raw, path, ' like "redis://127.0.0.1:6379/0" or '
                                          '{ url = "redis://127.0.0.1:6379/0" }')
            url_key = _key(path, "url")
            if found is None:
                return _INVALID
            table = found
            self.known_keys(table, path, tuple(f.name for f in REDIS_CACHE_FIELDS))
            if "url" not in table:
                self.error(url_key, "missing required key")
                return _INVALID
        specs = [f for f in REDIS_CACHE_FIELDS if f.name != "prefix"]
        values = {f.name: self.field(table, path, f) for f in specs if f.name != "url"}
        values["url"] = self.convert(url_key, _store_url, table["url"])
        values["prefix"] = self.convert(_key(path, "prefix"), _redis_prefix, table["prefix"]) \
            if "prefix" in table else f"fastproxy:cache:{name}:"
        if _INVALID in values.values():
            return _INVALID
        return RedisCacheSpec(**values)

    def auto_ban(self, raw: object) -> AutoBan | None:
        table = self.table(raw, "auto_ban", " like { after = 20, window = \"1m\" }")
        if table is None:
            return None
        self.known_keys(table, "auto_ban", tuple(spec.name for spec in AUTO_BAN_FIELDS))
        values = self.fields(table, "auto_ban", AUTO_BAN_FIELDS)
        if _INVALID in values.values():
            return None
        return AutoBan(**values)

    def rate_limit(self, name: str, table: Mapping[str, Any]) -> RateLimitSpec | None:
        path = _key("limits", name)
        before = len(self.issues)
        if not _UPSTREAM_NAME_RE.fullmatch(name):
            self.error(path, "invalid rate-limit name: use only letters, digits, '_', '.', '-'")
        self.known_keys(table, path, _RATE_LIMIT_KEYS)
        key = self.convert(_key(path, "key"), _rate_key, table.get("key", "client_ip"))
        if "rate" not in table:
            self.error(_key(path, "rate"), 'missing required key (like "10/s" or "600/m")')
            rate: Any = _INVALID
        else:
            rate = self.convert(_key(path, "rate"), _rate, table["rate"])
        burst = self.convert(_key(path, "burst"), _integer(0, 1_000_000), table.get("burst", 0))
        delay = self.convert(_key(path, "delay"), _integer(0, 1_000_000), table.get("delay", -1)) \
            if "delay" in table else -1
        if len(self.issues) != before or _INVALID in (key, rate, burst, delay):
            return None
        if delay > burst:
            self.error(_key(path, "delay"),
                       f"must not exceed burst ({burst}): past burst requests are refused, "
                       "not held")
            return None
        if (burst + 1) / rate[0] > _LONGEST_RATE_WINDOW:
            self.error(_key(path, "burst"),
                       f"{burst + 1} requests at {rate[1]} take more than a year to refill; "
                       "use a smaller burst or a faster rate")
            return None
        store = None
        if "store" in table:
            store = self.convert(_key(path, "store"), _store_url, table["store"])
        on_error = self.convert(_key(path, "on_store_error"), _choice("allow", "deny"),
                                table.get("on_store_error", "allow"))
        timeout = self.convert(_key(path, "store_timeout"), _duration(),
                               table.get("store_timeout", "100ms"))
        if _INVALID in (store, on_error, timeout):
            return None
        for only in ("on_store_error", "store_timeout"):
            if only in table and store is None:
                self.warn(_key(path, only), "has no effect without store")
        return RateLimitSpec(name, key, rate[0], burst, rate[1], delay, store, on_error,
                             timeout)

    def upstream_tls(self, raw: object, path: str) -> UpstreamTls | None:
        table = self.table(raw, path, " like { verify = true, ca = \"ca.pem\" }")
        if table is None:
            return None
        errors_before = len(self.issues)
        self.known_keys(table, path, _UPSTREAM_TLS_KEYS)
        values = self.fields(table, path, UPSTREAM_TLS_FIELDS)
        for name in ("ca", "cert", "key"):
            if values[name] not in (None, _INVALID):
                values[name] = self.pem_file(_key(path, name), values[name],
                                             certificate=name != "key")
        for name, other in (("cert", "key"), ("key", "cert")):
            if name in table and other not in table:
                self.error(_key(path, other), f"missing: {name} and {other} go together"
                                              " (the client certificate and its key)")
        if values["verify"] is False:
            self.warn(_key(path, "verify"), "certificates of https:// servers are not verified:"
                                            " anyone on the path can impersonate them")
            if "ca" in table:
                self.warn(_key(path, "ca"), "has no effect with verify = false")
        if len(self.issues) != errors_before:
            return None
        return UpstreamTls(**values)

    def upstreams(self, raw: object) -> tuple[dict[str, Upstream], set[str] | None]:
        """The valid upstreams, and every name defined (None if the table is unusable)."""
        if raw is _MISSING:
            self.error("upstreams", "missing: at least one [upstreams.NAME] table is required")
            return {}, None
        table = self.table(raw, "upstreams", " of upstreams ([upstreams.NAME])")
        if table is None:
            return {}, None
        if not table:
            self.error("upstreams", "at least one upstream is required")
        result: dict[str, Upstream] = {}
        for name, value in table.items():
            path = _key("upstreams", name)
            if not isinstance(name, str) or not _UPSTREAM_NAME_RE.fullmatch(name):
                self.error(path, "invalid upstream name: use only letters, digits, '_', '.', '-'")
            # Check the body even under a bad name, so that all issues show at once.
            upstream = self.upstream(str(name), path, value)
            if upstream is not None:
                result[name] = upstream
        return result, {str(name) for name in table}

    def upstream(self, name: str, path: str, raw: object) -> Upstream | None:
        table = self.table(raw, path)
        if table is None:
            return None
        errors_before = len(self.issues)
        self.known_keys(table, path, _UPSTREAM_KEYS)
        servers = self.servers(table.get("servers", _MISSING), f"{path}.servers")
        servers_ok = len(self.issues) == errors_before
        values = self.fields(table, path, (*UPSTREAM_FIELDS, *BALANCE_FIELDS))
        hash_key = self.hash_key(table, path, values["balance"])
        sticky = self.sticky(table["sticky"], _key(path, "sticky")) if "sticky" in table else None
        health_check = (
            self.health_check(table["health_check"], _key(path, "health_check"))
            if "health_check" in table
            else None
        )
        eject = self.ejection(table.get("eject", {}), _key(path, "eject"))
        retry = self.retry_policy(table.get("retry", {}), _key(path, "retry"))
        tls: UpstreamTls | None = UpstreamTls()
        if "tls" in table:
            tls = self.upstream_tls(table["tls"], _key(path, "tls"))
            # With a bad server, whether any is https:// is not known: say nothing more.
            if servers_ok and not any(server.tls for server in servers):
                self.error(_key(path, "tls"), "only used with https:// servers"
                                              ' (write the addresses as "https://host:port")')
        if (health_check is not None and health_check.grpc_service is not None and servers_ok
                and values.get("protocol") != "h2" and not all(s.h2 for s in servers)):
            self.error(_key(_key(path, "health_check"), "grpc_service"),
                       'a gRPC health check needs HTTP/2 servers: h2c:// addresses or'
                       ' protocol = "h2"')
        if servers_ok and (values.get("protocol") == "h2" or any(s.h2 for s in servers)):
            # One HTTP/2 connection carries the streams of many clients: a PROXY header,
            # which names one client per connection, cannot go on it.
            if values.get("proxy_protocol", "off") != "off":
                self.error(_key(path, "proxy_protocol"), "not with HTTP/2 servers (one "
                           "connection carries many clients' requests; the header names one)")
            for i, server in enumerate(servers):
                if (server.h2 or values.get("protocol") == "h2") and \
                        server.proxy_protocol not in (None, "off"):
                    self.error(f"{path}.servers[{i}].proxy_protocol", "not with an HTTP/2 "
                               "server (one connection carries many clients' requests; the "
                               "header names one)")
        if len(self.issues) != errors_before or eject is None or retry is None or tls is None:
            return None
        self.upstream_warnings(table, path, values, servers)
        return Upstream(name=name, servers=tuple(servers), hash_key=hash_key, sticky=sticky,
                        health_check=health_check, eject=eject, retry=retry, tls=tls, **values)

    def hash_key(self, table: Mapping[str, Any], path: str, balance: object) -> Template | None:
        """The hash_key of ring and maglev (a default one if not given); None otherwise."""
        hashing = balance in HASH_ALGORITHMS
        hash_key: Template | None = None
        only_hashing = 'only used with balance = "ring" or "maglev"'
        if "hash_key" in table:
            key = _key(path, "hash_key")
            if not hashing:
                self.error(key, only_hashing)
            else:
                hash_key = self.convert(key, _hash_template, table["hash_key"])
        elif hashing:
            hash_key = parse_template("{client_ip}")
        if "balance_factor" in table and not hashing:
            self.error(_key(path, "balance_factor"), only_hashing)
        return hash_key

    def upstream_warnings(
        self, table: Mapping[str, Any], path: str, values: Mapping[str, Any],
        servers: Sequence[ServerAddress],
    ) -> None:
        """Keys that are valid but do nothing here."""
        balance = values["balance"]
        if balance in HASH_ALGORITHMS and values["slow_start"] > 0:
            self.warn(_key(path, "slow_start"),
                      f'has no effect with balance = "{balance}" '
                      "(a returning server gets its keys back at once)")
        if not any(server.max_conns for server in servers):
            for name in ("queue", "queue_timeout"):
                if name in table:
                    self.warn(_key(path, name), "has no effect: no server has a max_conns")

    def sticky(self, raw: object, path: str) -> StickyCookie | None:
        table = self.table(raw, path, ' like { cookie = "srv" }')
        if table is None:
            return None
        self.known_keys(table, path, _STICKY_KEYS)
        name = table.get("cookie", _MISSING)
        if name is _MISSING:
            self.error(_key(path, "cookie"), "missing required key")
            return None
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
            self.error(_key(path, "cookie"),
                       f"expected a cookie name (letters, digits and !#$%&'*+.^_`|~-), "
                       f"found {_describe(name)}")
            return None
        max_age = self.convert(_key(path, "max_age"), _duration(zero_ok=True),
                               table.get("max_age", 0))
        secure = self.convert(_key(path, "secure"), _boolean, table.get("secure", False))
        if max_age is _INVALID or secure is _INVALID:
            return None
        return StickyCookie(name, max_age, secure)

    def servers(self, raw: object, path: str) -> list[ServerAddress]:
        if raw is _MISSING:
            self.error(path, "missing required key")
            return []
        items = self.array(raw, path, ' of "host:port" strings or { address, weight } tables')
        if items is None:
            return []
        if not items:
            self.error(path, "at least one server is required")
        # An entry whose backup value is missing or wrong counts as a primary here,
        # so that a typo is reported once.
        elif all(isinstance(item, Mapping) and item.get("backup") is True for item in items):
            self.error(path, "every server is a backup: at least one must be a primary server"
                             " (without backup = true)")
        result: list[ServerAddress] = []
        # "https://h:1" and "h:1" are the same server: one host and port, two schemes.
        seen: dict[tuple[str, int], tuple[int, bool]] = {}
        for i, item in enumerate(items):
            key = f"{path}[{i}]"
            entry = item if isinstance(item, Mapping) else {}
            self.known_keys(entry, key, _SERVER_KEYS)
            options = self.fields(entry, key, SERVER_OPTION_FIELDS)
            if isinstance(item, Mapping):
                if "address" not in item:
                    self.error(f"{key}.address", "missing required key")
                    continue
                address_key, address = f"{key}.address", item["address"]
            elif isinstance(item, str):
                address_key, address = key, item
            else:
                self.error(
                    key,
                    'expected a string "host:port" or a table '
                    f"{{ address = ..., weight = ... }}, found {_describe(item)}",
                )
                continue
            parsed = self.convert(address_key, _parse_server_address, address)
            if not _valid(parsed, *options.values()):
                continue
            host, port, tls = parsed
            h2 = isinstance(address, str) and address[:6].lower() == "h2c://"
            if (host, port) in seen:
                first, first_tls = seen[(host, port)]
                hint = ("use weight instead" if tls == first_tls
                        else "the same host and port; a server is either https:// or not")
                self.error(address_key,
                           f"duplicate server {address!r} (already {path}[{first}]; {hint})")
                continue
            seen[(host, port)] = (i, tls)
            result.append(ServerAddress(host, port, tls=tls, h2=h2, **options))
        return result

    def health_check(self, raw: object, path: str) -> HealthCheck | None:
        table = self.table(raw, path, ' like { path = "/healthz" }')
        if table is None:
            return None
        self.known_keys(table, path, _HEALTH_CHECK_KEYS)
        values = self.fields(table, path, HEALTH_CHECK_FIELDS)
        if values["type"] == "tcp":
            for k in _HEALTH_HTTP_KEYS:
                if k in table:
                    self.error(_key(path, k), 'not with type = "tcp" (a connect that '
                               "succeeds passes; nothing is sent)")
                    return None
        interval, timeout = values["interval"], values["timeout"]
        if _valid(interval, timeout) and timeout > interval:
            self.error(_key(path, "timeout"),
                       f"must not exceed {_given(table, 'interval')} ({_seconds(interval)}), "
                       f"found {_seconds(timeout)}")
            return None
        return HealthCheck(**values) if _valid(*values.values()) else None

    def ejection(self, raw: object, path: str) -> Ejection | None:
        table = self.table(raw, path, ' like { failures = 5, time = "10s" }'
                                      " (failures = 0 turns ejection off)")
        if table is None:
            return None
        self.known_keys(table, path, _EJECT_KEYS)
        values = self.fields(table, path, EJECT_FIELDS)
        time, max_time = values["time"], values["max_time"]
        if _valid(time, max_time) and max_time < time:
            found = _seconds(max_time) + ("" if "max_time" in table else ", the default")
            self.error(_key(path, "max_time"),
                       f"must be at least {_given(table, 'time')} ({_seconds(time)}), "
                       f"found {found}")
            return None
        return Ejection(**values) if _valid(*values.values()) else None

    def retry_policy(self, raw: object, path: str) -> RetryPolicy | None:
        table = self.table(raw, path, " like { retries = 2 }")
        if table is None:
            return None
        self.known_keys(table, path, _RETRY_KEYS)
        values = self.fields(table, path, RETRY_FIELDS)
        if not _valid(*values.values()):
            return None
        return RetryPolicy(**{**values, "on": frozenset(values["on"])})

    def route_warnings(self, routes: Sequence[Route], upstreams: Iterable[str],
                       tcp_used: Iterable[str] = ()) -> None:
        for key, reason in route_warnings(routes):
            self.warn(key, reason)
        used = {route.upstream for route in routes} | set(tcp_used)
        for name in upstreams:
            if name not in used:
                self.warn(_key("upstreams", name), "not used by any route")


# --------------------------------------------------------------------------
# Entry points


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", *, base_dir: str | None = None
) -> Config:
    """Validate already-parsed TOML data and build the immutable Config.

    ``source`` names the file in messages; relative paths (the access log) are
    resolved against ``base_dir``, by default the directory of ``source`` or,
    for a pseudo-name like ``"<config>"``, the current directory.
    """
    if base_dir is None:
        base_dir = (
            os.getcwd() if source.startswith("<") else os.path.dirname(os.path.abspath(source))
        )
    ck = _Checker(source, os.path.abspath(base_dir))
    if not isinstance(data, Mapping):
        ck.error("(root)", f"expected a table, found {_describe(data)}")
        raise ConfigError(ck.issues)

    ck.known_keys(data, "", _TOP_LEVEL_KEYS)
    server = ck.section(data, "server")
    # [limits] holds the size limits and, as tables, the rate limits ([limits.NAME]).
    raw_limits = data.get("limits", {})
    rate_tables: dict[str, Any] = {}
    if isinstance(raw_limits, Mapping):
        rate_tables = {k: v for k, v in raw_limits.items() if isinstance(v, Mapping)}
        data = {**data, "limits": {k: v for k, v in raw_limits.items() if k not in rate_tables}}
    limits = ck.section(data, "limits")
    rate_limits = {name: spec for name, table in rate_tables.items()
                   if (spec := ck.rate_limit(name, table)) is not None}
    timeouts = ck.section(data, "timeouts")
    raw_log = data.get("log", {})
    raw_outputs: object = _MISSING
    if isinstance(raw_log, Mapping) and "access_outputs" in raw_log:
        raw_outputs = raw_log["access_outputs"]
        if "access" in raw_log:
            ck.error("log.access_outputs",
                     "give log.access or [[log.access_outputs]], not both")
        data = {**data, "log": {k: v for k, v in raw_log.items() if k != "access_outputs"}}
    log = ck.section(data, "log")
    log["access"] = ck.access_log(log["access"])
    if raw_outputs is not _MISSING:
        log["outputs"] = ck.access_outputs(raw_outputs, log["format"])
    tracing = ck.section(data, "tracing")
    routing = ck.section(data, "routing")
    metrics = ck.section(data, "metrics")

    line, head = limits["max_line_bytes"], limits["max_header_bytes"]
    if line is not _INVALID and head is not _INVALID and line > head:
        ck.error(
            "limits.max_line_bytes",
            f"must not exceed limits.max_header_bytes ({head} bytes), found {line} bytes",
        )

    waf = ck.waf(data["waf"]) if "waf" in data else None
    auto_ban = ck.auto_ban(data["auto_ban"]) if "auto_ban" in data else None
    caches = ck.caches(data["caches"]) if "caches" in data else {}
    admin = ck.admin(data["admin"]) if "admin" in data else None
    raw_upstreams = data.get("upstreams")
    listeners, listener_names = ck.listeners(
        data.get("listeners", _MISSING),
        set(raw_upstreams) if isinstance(raw_upstreams, Mapping) else None)
    raw_listeners = data.get("listeners")
    if line is not _INVALID and head is not _INVALID and isinstance(raw_listeners, list) \
            and len(raw_listeners) == len(listeners):  # else the indexes would be wrong
        for i, listener in enumerate(listeners):
            own_line = listener.sizes.get("max_line_bytes", line)
            own_head = listener.sizes.get("max_header_bytes", head)
            if own_line > own_head and listener.sizes:
                which = ("max_line_bytes" if "max_line_bytes" in listener.sizes
                         else "max_header_bytes")
                ck.error(f"listeners[{i}].{which}",
                         f"the listener's request line limit ({own_line} bytes) exceeds its "
                         f"header limit ({own_head} bytes)")
    upstreams, upstream_names = ck.upstreams(data.get("upstreams", _MISSING))
    tcp_used = ck.tcp_upstream_checks(listeners, upstreams)
    raw_routes = tcp_routes(ck, data, listeners)
    routes = [] if raw_routes is None else parse_routes(
        ck,
        raw_routes,
        # An invalid merge_slashes is already reported; normalize paths as by default.
        merge_slashes=routing["merge_slashes"] is not False,
        upstreams=upstream_names,
        listeners=listener_names,
        rate_limits=set(rate_tables),
        caches=set(data["caches"]) if isinstance(data.get("caches"), Mapping) else (),
    )

    if ck.issues:
        raise ConfigError(ck.issues)
    ck.route_warnings(routes, upstreams, tcp_used)
    return Config(
        source=source,
        server=ServerSettings(**server),
        limits=Limits(**limits),
        timeouts=Timeouts(**timeouts),
        log=LogSettings(**log),
        routing=RoutingSettings(**routing),
        metrics=MetricsSettings(**metrics),
        tracing=Tracing(**tracing),
        listeners=tuple(listeners),
        upstreams=MappingProxyType(dict(upstreams)),
        routes=tuple(routes),
        warnings=tuple(ck.warnings),
        rate_limits=MappingProxyType(rate_limits),
        waf=waf,
        auto_ban=auto_ban,
        caches=MappingProxyType(caches),
        admin=admin,
    )


def tcp_routes(ck: _Checker, data: Mapping[str, Any], listeners: Sequence[Listener]) -> Any:
    """The raw routes to parse, or None when there are none and need be none (every
    listener is a tcp one). Routes that name a tcp listener are refused."""
    tcp = {listener.name for listener in listeners if listener.mode == "tcp"}
    raw = data.get("routes", _MISSING)
    raw_listeners = data.get("listeners")
    if isinstance(raw_listeners, list) and raw_listeners and all(
            isinstance(item, Mapping) and item.get("mode") == "tcp" for item in raw_listeners):
        if raw is _MISSING:
            return None
        ck.warn("routes", 'every listener is mode = "tcp": routes apply to HTTP listeners '
                "only and are not used")
    if not tcp or not isinstance(raw, list):
        return raw
    for i, route in enumerate(raw):
        match = route.get("match") if isinstance(route, Mapping) else None
        named = match.get("listener") if isinstance(match, Mapping) else None
        for name in [named] if isinstance(named, str) else named or ():
            if name in tcp:
                ck.error(f"routes[{i}].match.listener",
                         f'{name!r} is a mode = "tcp" listener: routes apply to HTTP '
                         "listeners only (a tcp listener's connections go to its upstream)")
    return raw


def _sni_name(value: object) -> str:
    """A server name for SNI routing: a host name, or "*." and one (any depth)."""
    text = _string(value).strip().lower().rstrip(".")
    host = text[2:] if text.startswith("*.") else text
    if not host or not all(_SNI_LABEL_RE.fullmatch(label) for label in host.split(".")):
        raise ValueError(f'expected a host name like "a.example.com" or "*.example.com", '
                         f"found {_describe(value)}")
    return text


_SNI_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file; raise ConfigError listing every issue."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(source, "(file)", f"cannot read: {reason}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigIssue(source, "(toml)", f"not valid UTF-8 (invalid byte at offset {exc.start})")]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(source, "(toml)", str(exc))]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue(source, "(toml)", "nested too deeply")]) from None
    return parse_config(data, source, base_dir=os.path.dirname(os.path.abspath(source)))


# --------------------------------------------------------------------------
# The schema, for the reference and its check


def schema() -> dict[str, tuple[str, ...]]:
    """Every table of the config file, by path, with the keys it accepts.

    Built from the same tuples the checks above (``known_keys``) refuse unknown
    keys with, so it cannot lag behind them; ``docs/configuration.md`` is
    tested against it (tests/test_config_schema.py, which also checks that every
    ``known_keys`` call in the code is covered here). Paths use ``""`` for the
    top level, ``NAME`` for a name the user chooses (``upstreams.NAME``) and
    ``[]`` for an element of an array of tables (``routes[]``). A key here may
    hold a table of its own, which then has its own path (``listeners[].tls``),
    or a value such as an address or an array. Maps whose keys are the user's
    (header names in ``request_headers.set``, users in ``basic_auth.users``)
    are not listed.
    """
    from fastproxy import routeconf as rc
    from fastproxy import waf

    access = rc._ACCESS_KEYS
    tables: dict[str, tuple[str, ...]] = {"": _TOP_LEVEL_KEYS}
    for name, specs in _SECTIONS.items():
        tables[name] = tuple(spec.name for spec in specs)
    tables["log"] = (*tables["log"], "access_outputs")  # taken out before the section check
    tables.update({
        "log.access_outputs[]": _ACCESS_OUTPUT_KEYS,
        "limits.NAME": _RATE_LIMIT_KEYS,
        "listeners[]": _LISTENER_KEYS,
        "listeners[].tls": _LISTENER_TLS_KEYS,
        "listeners[].tls.certificates[]": _CERTIFICATE_KEYS,
        "listeners[].tls.client_cert_headers": CLIENT_CERT_FIELDS,
        "listeners[].access": access,
        "listeners[].sni[]": _SNI_RULE_KEYS,
        "upstreams.NAME": _UPSTREAM_KEYS,
        "upstreams.NAME.servers[]": _SERVER_KEYS,
        "upstreams.NAME.tls": _UPSTREAM_TLS_KEYS,
        "upstreams.NAME.sticky": _STICKY_KEYS,
        "upstreams.NAME.health_check": _HEALTH_CHECK_KEYS,
        "upstreams.NAME.eject": _EJECT_KEYS,
        "upstreams.NAME.retry": _RETRY_KEYS,
        "routes[]": rc._ROUTE_KEYS,
        "routes[].match": rc._MATCH_KEYS,
        "routes[].match.headers.NAME": rc.VALUE_TEST_KEYS,
        "routes[].match.query.NAME": rc.VALUE_TEST_KEYS,
        "routes[].match.client_cert": rc.CLIENT_CERT_FACTS,
        "routes[].match.client_cert.NAME": rc.VALUE_TEST_KEYS,
        "routes[].redirect": rc._REDIRECT_KEYS,
        "routes[].respond": rc._RESPOND_KEYS,
        "routes[].rewrite": rc._REWRITE_KEYS,
        "routes[].request_headers": rc._EDIT_KEYS,
        "routes[].response_headers": rc._EDIT_KEYS,
        "routes[].access": access,
        "routes[].basic_auth": rc.BASIC_AUTH_KEYS,
        "routes[].forward_auth": rc.FORWARD_AUTH_KEYS,
        "routes[].compress": rc._COMPRESS_KEYS,
        "waf": _WAF_KEYS,
        "waf.rules[]": waf._RULE_KEYS,
        "waf.rules[].match": waf._MATCH_KEYS,
        "auto_ban": tuple(spec.name for spec in AUTO_BAN_FIELDS),
        "caches.NAME": _CACHE_KEYS,
        "caches.NAME.disk": tuple(spec.name for spec in DISK_FIELDS),
        "caches.NAME.redis": tuple(spec.name for spec in REDIS_CACHE_FIELDS),
        "admin": _ADMIN_KEYS,
    })
    return tables
