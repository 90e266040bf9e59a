"""``fastproxy cache explain CONFIG URL``: what the cache does with one URL.

It routes the request as the proxy would (the compiled router), names the
route's cache, renders the primary key, reads the request's directives, then
looks at a response and explains, with `cachepolicy`, whether it is stored,
for how long and why (which directive decided), and what its Vary makes of
this request. The response is, by choice:

* ``--proxy HOST:PORT`` (default: the config's first listener): what a running
  proxy has stored, asked with ``HEAD`` and ``Cache-Control: only-if-cached``
  so that the upstream is never asked (a 504 means nothing is stored, in the
  worker that answered: the memory tier is per worker);
* ``--upstream``: a fresh ``GET`` to the route's first server, as a fill would
  send it (the client's conditionals and Range left out), over TLS to an
  ``https://`` server and after a PROXY header (v2 LOCAL or v1 UNKNOWN, as the
  health checks send) to one with ``proxy_protocol``. HTTP/2 servers are not
  asked (the question is HTTP/1.1).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Sequence

import redis

from fastproxy import cachepolicy
from fastproxy._actions import ProxyAction, Template
from fastproxy._cache import cache_key
from fastproxy._router import new_context
from fastproxy.config import Config, RedisCacheSpec, ServerAddress, Upstream
from fastproxy.diskcache import entry_path
from fastproxy.health import check_proxy_header
from fastproxy.redislink import check_url
from fastproxy.routing import ExplainError, _parse, _request_bytes, build_router

_SHOWN = (b"cache-control", b"expires", b"date", b"age", b"last-modified", b"etag", b"vary",
          b"set-cookie", b"content-length", b"cache-status", b"pragma")
_NOT_SENT = {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since",
             b"range", b"if-range", b"host", b"connection"}


class _ServerConnection(http.client.HTTPConnection):
    """HTTP/1.1 to an upstream server as the proxy reaches it: `first` (a PROXY
    header) before anything else, then TLS when `tls` (context, server name)."""

    def __init__(self, host: str, port: int, timeout: float, first: bytes,
                 tls: tuple[ssl.SSLContext, str] | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self.first = first
        self.tls = tls

    def connect(self) -> None:
        super().connect()
        sock: socket.socket = self.sock
        if self.first:
            sock.sendall(self.first)
        if self.tls is not None:
            self.sock = self.tls[0].wrap_socket(sock, server_hostname=self.tls[1])


def _server_connection(upstream: Upstream, server: ServerAddress, timeout: float
                       ) -> tuple[_ServerConnection, str]:
    """A connection to `server` as the proxy makes them, and how (for the output)."""
    how = []
    first = check_proxy_header(upstream.server_proxy_protocol(server))
    if first:
        how.append("PROXY " + ("v2 LOCAL" if upstream.server_proxy_protocol(server) == "v2"
                               else "v1 UNKNOWN") + " header first")
    tls = None
    if server.tls:
        from fastproxy.tls import client_context

        try:
            context = client_context(upstream.tls)
        except (ValueError, OSError) as exc:
            raise ExplainError(f"upstreams.{upstream.name}.tls: {exc}") from None
        tls = (context, upstream.tls.sni or server.host)
        how.append(f"TLS, server name {tls[1]}")
    conn = _ServerConnection(server.host, server.port, timeout, first, tls)
    return conn, f" ({'; '.join(how)})" if how else ""


def _fetch(address: tuple[str, int] | http.client.HTTPConnection, method: str, target: bytes,
           host: bytes, headers: Sequence[tuple[bytes, bytes]], timeout: float
           ) -> tuple[int, list[tuple[bytes, bytes]], float, float]:
    conn = address if isinstance(address, http.client.HTTPConnection) else \
        http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    sent = time.time()
    try:
        conn.putrequest(method, target.decode("latin-1"), skip_host=True,
                        skip_accept_encoding=True)
        conn.putheader("Host", host.decode("latin-1"))
        for name, value in headers:
            conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.getheaders()]
        return resp.status, fields, sent, time.time()
    finally:
        conn.close()


def _in_redis(spec: RedisCacheSpec, primary: int, timeout: float) -> str:
    """The Redis key of a primary key and whether Redis holds it (asked now)."""
    base = f"{spec.prefix}{primary:016x}"
    try:
        client = redis.Redis.from_url(spec.url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        try:
            left = client.pttl(base)
            variants = client.hlen(base + ":v") if left >= 0 else 0
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return f"{base} (cannot ask Redis: {type(exc).__name__}: {exc})"
    if left < 0:
        return f"{base} (not in Redis)"
    held = f"a Vary record and {variants} variant(s)" if variants else "stored"
    return f"{base} ({held}, expires in {left / 1000:.0f} s)"


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ExplainError(f"expected HOST:PORT, found {text!r}")
    return host.strip("[]"), int(port)


def cache_explain(config: Config, url: str, headers: Sequence[str] = (),
                  proxy: str | None = None, upstream: bool = False,
                  timeout: float = 5.0) -> list[str]:
    """Lines explaining the cache's view of GET `url` (see the module docstring)."""
    names = [listener.name for listener in config.listeners]
    head = _parse(_request_bytes("GET", url, headers), config)
    router = build_router(config, dict(config.upstreams))
    ctx = new_context(head, config.routing.merge_slashes, b"127.0.0.1", b"http", 0,
                      names[0].encode())
    if ctx.path is None:
        raise ExplainError("the URL's path or authority is invalid (the proxy answers 400)")
    steps, _ = router.explain(ctx, ctx.host_header)
    rule = next((rule for rule, code in steps if code == 0), None)
    if rule is None:
        return ["route:     none matches (the proxy answers 404; nothing is cached)"]
    route = rule.route
    out = [f"route:     {route.label}"]
    if route.cache is None:
        out.append("cache:     none: the route has no `cache`, its responses are not stored")
        return out
    spec = config.caches[route.cache]
    key = Template(spec.key).render_for(ctx, ctx.captures)
    tiers = f"memory {spec.memory} bytes per worker"
    if spec.disk is not None:
        tiers += f"; disk {spec.disk.path}, {spec.disk.size} bytes"
    if spec.redis is not None:
        tiers += f"; redis {check_url(spec.redis.url)}"
    out += [f"cache:     [caches.{spec.name}] ({tiers})",
            f"key:       {key.decode('latin-1')}  (xxh3 {cache_key(key):016x}; "
            f"template {spec.key.source})"]
    if spec.disk is not None:
        out.append(f"file:      {entry_path(spec.disk.path, cache_key(key))}")
    if spec.redis is not None:
        out.append("redis:     " + _in_redis(spec.redis, cache_key(key), timeout))
    request = cachepolicy.RequestDirectives.from_headers(head.headers())
    asked = [name for name in ("no_cache", "no_store", "only_if_cached") if getattr(request,
                                                                               name)]
    asked += [f"{name}={getattr(request, name)}" for name in ("max_age", "max_stale",
                                                               "min_fresh")
              if getattr(request, name) is not None]
    out.append("request:   " + (", ".join(asked) if asked else "no cache directives"))
    policy = cachepolicy.Policy(
        heuristic_fraction=spec.heuristic_fraction, heuristic_max=spec.heuristic_max,
        default_ttl_by_status=dict(spec.valid), store_set_cookie=spec.store_set_cookie,
        ignore_no_cache_request=spec.ignore_client_no_cache, max_object_size=spec.store_limit,
        stale_while_revalidate=spec.stale_while_revalidate,
        stale_if_error=spec.stale_if_error)
    sent = [(name, value) for name, value in head.headers() if name.lower() not in _NOT_SENT]
    host = ctx.host_header or b"localhost"
    try:
        if upstream:
            action = rule.action
            assert isinstance(action, ProxyAction)
            target = (action.target_for(ctx) if action.rewrites else ctx.target) or b"/"
            group = config.upstreams[route.upstream or ""]
            server = group.servers[0]
            if server.h2 or group.protocol == "h2":
                raise ExplainError(f"the route's first server, {server.address}, speaks "
                                   "HTTP/2: --upstream asks HTTP/1.1 servers only")
            conn, how = _server_connection(group, server, timeout)
            out.append(f"asked:     the upstream, {server.address}: GET "
                       f"{target.decode('latin-1')}{how}")
            status, fields, request_time, response_time = _fetch(
                conn, "GET", target, host, sent, timeout)
        else:
            where = _address(proxy) if proxy else (config.listeners[0].host.replace(
                "0.0.0.0", "127.0.0.1").replace("::", "::1"), config.listeners[0].port)
            out.append(f"asked:     the proxy at {where[0]}:{where[1]} (HEAD, only-if-cached)")
            status, fields, request_time, response_time = _fetch(
                where, "HEAD", ctx.target or b"/", host,
                [*sent, (b"Cache-Control", b"only-if-cached")], timeout)
            if status == 504:
                out.append("stored:    no (504 to only-if-cached: not in the worker that "
                           "answered)")
                return out
    except (OSError, http.client.HTTPException) as exc:
        raise ExplainError(f"cannot ask: {type(exc).__name__}: {exc}") from None
    out.append(f"response:  {status}")
    out += [f"  {name.decode('latin-1')}: {value.decode('latin-1')}"
            for name, value in fields if name.lower() in _SHOWN]
    ok, reason = cachepolicy.storable(b"GET", status, head.headers(), fields, policy)
    out.append(f"storable:  {'yes' if ok else 'no'} ({reason})")
    if not ok and upstream:
        return out
    fresh = cachepolicy.freshness(fields, status, request_time, response_time, policy)
    out.append(f"freshness: {fresh.lifetime:g} s from {fresh.source}")
    out += ["  " + line for line in fresh.describe(response_time, response_time)]
    decision = cachepolicy.serve(fresh, response_time, response_time, request, policy)
    out.append(f"verdict:   {decision.verdict.value} ({decision.reason})")
    names_vary = cachepolicy.vary_names(fields)
    if names_vary:
        variant = cachepolicy.secondary_key(names_vary, head.headers())
        out.append(f"vary:      {', '.join(n.decode() for n in names_vary)} -> this request's "
                   f"variant: {variant.decode('latin-1')}")
    elif names_vary is None:
        out.append("vary:      * (never matches: not stored)")
    return out
