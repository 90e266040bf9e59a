"""Build the compiled router from the config, and explain its decisions.

`build_router` turns the config's routes into `_router.Rule`s with their
`_actions` (the worker passes its upstream groups as proxy targets).
`explain` runs one request through the same compiled code the workers use —
parser, path normalization, host classes, rules, rewrites, header edits and
head serialization — and reports each step for `fastproxy route explain`.
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from email.utils import formatdate
from typing import Any

from fastproxy._actions import REDIRECT, RESPOND, LocalAction, ProxyAction
from fastproxy._compress import Policy as CompressPolicy
from fastproxy._http import HttpParseError, MessageHead, RequestParser
from fastproxy._rewrite import build_request_head
from fastproxy._router import RequestContext, Router, Rule, new_context
from fastproxy._url import IpSet, query_get
from fastproxy.auth import BasicAuth
from fastproxy.config import Config, Route
from fastproxy.forwardauth import ForwardAuth
from fastproxy.responses import reason_phrase
from fastproxy.routeconf import (
    AccessList,
    CompressSpec,
    ForwardAuthSpec,
    Redirect,
    RouteMatch,
    ValueTest,
    parse_template,
)
from fastproxy.waf import Waf

__all__ = ["ExplainError", "build_router", "explain"]

# Failed codes of _router.Rule.check (see _router.pxd).
(_F_HOST, _F_PATH, _F_LISTENER, _F_METHOD, _F_HEADER, _F_QUERY, _F_CLIENT, _F_REGEX, _F_TLS,
 _F_CERT) = range(1, 11)


def make_action(route: Route, targets: Mapping[str, Any], merge_slashes: bool) -> Any:
    """The compiled action of `route`; `targets` maps upstream names to proxy targets."""
    if route.upstream is not None:
        return ProxyAction(targets[route.upstream], route.rewrite, route.request_headers,
                           route.response_headers, merge_slashes)
    if route.redirect is not None:
        status = route.redirect.status
        return LocalAction(REDIRECT, status, reason_phrase(status), None,
                           (("Location", route.redirect.to),), route.response_headers)
    assert route.respond is not None
    status = route.respond.status
    return LocalAction(RESPOND, status, reason_phrase(status), route.respond.body,
                       route.respond.headers, route.response_headers)


def build_router(config: Config, targets: Mapping[str, Any],
                 limits: Mapping[str, Any] | None = None,
                 caches: Mapping[str, Any] | None = None) -> Router:
    """The compiled router of `config`; upstream routes proxy to `targets[name]`;
    routes check the rate limits `limits[name]` (_ratelimit.RateLimit) they name."""
    listener_ids = {listener.name: i for i, listener in enumerate(config.listeners)}
    merge = config.routing.merge_slashes
    routes = [*https_redirects(config), *config.routes]
    rules = [Rule(route, make_action(route, targets, merge), listener_ids)
             for route in routes]
    # One engine per worker for every route that keeps it (it caches header verdicts).
    engine = (Waf(config.waf.rule_sets, config.waf.rules, config.waf.exclusions,
                  config.waf.body_limit) if config.waf is not None else None)
    services: dict[ForwardAuthSpec, ForwardAuth] = {}
    policies: dict[CompressSpec, CompressPolicy] = {}
    for rule, route in zip(rules, routes, strict=True):
        if limits is not None:
            rule.limits = tuple(limits[name] for name in route.limits)
        rule.access = compile_access(route.access)
        if route.basic_auth is not None:
            rule.auth = BasicAuth(route.basic_auth.realm, dict(route.basic_auth.users))
        if engine is not None and route.waf:
            rule.waf = engine
        if route.max_body_bytes is not None:
            rule.max_body = route.max_body_bytes
        if route.forward_auth is not None:
            spec = route.forward_auth
            if spec not in services:  # one client (and connection pool) per service
                services[spec] = forward_auth(spec)
            rule.forward_auth = services[spec]
        if route.cache is not None and caches is not None:
            rule.cache = caches[route.cache]
        if route.compress is not None:
            comp = route.compress
            if comp not in policies:  # routes with the same settings share one
                policies[comp] = CompressPolicy(comp.algorithms, dict(comp.levels),
                                                comp.min_size, comp.types)
            rule.compress = policies[comp]
    defaults = [listener.default_host.encode() if listener.default_host else None
                for listener in config.listeners]
    return Router(rules, defaults)


def forward_auth(spec: ForwardAuthSpec) -> ForwardAuth:
    """The client of a route's auth service (made in the worker that uses it)."""
    context = ssl.create_default_context(cafile=spec.ca) if spec.ca else None
    return ForwardAuth(spec.url, timeout=spec.timeout, copy_headers=spec.copy_headers,
                       request_headers=spec.request_headers, max_body=spec.max_body,
                       ssl_context=context)


def compile_access(access: AccessList | None) -> tuple[IpSet | None, IpSet | None] | None:
    """The compiled form of an access list: (allow or None, deny or None)."""
    if access is None:
        return None
    return (IpSet(access.allow) if access.allow is not None else None,
            IpSet(access.deny) if access.deny else None)


def https_redirects(config: Config) -> list[Route]:
    """A route ahead of the others for each listener with `https_redirect`: every
    request on it gets a 308 to the same URL over https."""
    result = []
    for listener in config.listeners:
        if listener.https_redirect is None:
            continue
        port = "" if listener.https_redirect == 443 else f":{listener.https_redirect}"
        match = RouteMatch(hosts=None, paths=(), path_prefixes=(), whole_segments=False,
                           path_regex=None, methods=None, headers=(), query=(),
                           client_ips=None, listeners=(listener.name,))
        target = parse_template(f"https://{{host}}{port}{{request_uri}}")
        result.append(Route(index=-1, name=f"https_redirect of {listener.name}", match=match,
                            upstream=None, redirect=Redirect(target, 308), respond=None,
                            rewrite=None, request_headers=None, response_headers=None))
    return result


# --------------------------------------------------------------------------
# explain


class ExplainError(Exception):
    """The request given to `explain` cannot be built (bad URL, header or option)."""


class _Head:
    """Parser handler that keeps the one request head."""

    def __init__(self) -> None:
        self.head: MessageHead | None = None

    def on_head(self, head: MessageHead) -> None:
        self.head = head

    def on_body(self, data: bytes | memoryview) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


def _request_bytes(method: str, url: str, headers: Sequence[str]) -> bytes:
    """An HTTP/1.1 request head for `method url` with `headers` ("Name: value")."""
    parsed = urllib.parse.urlsplit(url)
    names = {h.partition(":")[0].strip().lower() for h in headers}
    lines = []
    if parsed.scheme or parsed.netloc:
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ExplainError(f"URL must be http://host/path or /path, found {url!r}")
        target = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
        if "host" not in names:
            lines.append(f"Host: {parsed.netloc}")
    else:
        if not url.startswith("/") and url != "*":
            raise ExplainError(f"URL must be http://host/path or /path, found {url!r}")
        target = url
        if "host" not in names:
            lines.append("Host: localhost")
    for header in headers:
        name, sep, _value = header.partition(":")
        if not sep or not name.strip():
            raise ExplainError(f"header must be 'Name: value', found {header!r}")
        lines.append(header)
    text = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n"
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        # A browser percent-encodes the path; headers must be ASCII.
        raise ExplainError("the request line and headers must be ASCII "
                           "(percent-encode the path)") from None


def _parse(data: bytes, config: Config) -> MessageHead:
    sink = _Head()
    limits = config.limits
    parser = RequestParser(sink, max_line_bytes=limits.max_line_bytes,
                           max_header_bytes=limits.max_header_bytes,
                           max_header_count=limits.max_header_count)
    try:
        parser.feed(data)
    except HttpParseError as exc:
        raise ExplainError(f"the proxy would answer {exc.status}: {exc.reason}") from None
    if sink.head is None:
        raise ExplainError("incomplete request")
    return sink.head


def _q(value: bytes | str | None) -> str:
    if value is None:
        value = "(none)"
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return '"' + text + '"'


def _describe_match(route: Route) -> str:
    m = route.match
    parts = []
    if m.hosts is not None:
        parts.append("host " + " | ".join(m.hosts))
    if m.paths:
        parts.append("path = " + " | ".join(m.paths))
    if m.path_prefixes:
        seg = " (whole segments)" if m.whole_segments else ""
        parts.append("path prefix " + " | ".join(m.path_prefixes) + seg)
    if m.path_regex is not None:
        parts.append(f"path ~ {m.path_regex!r}")
    if m.methods is not None:
        parts.append("method " + " | ".join(m.methods))
    for t in m.headers:
        parts.append(f"header {t.name} {t.kind}" + (f" {t.value!r}" if t.value else ""))
    for t in m.query:
        parts.append(f"query {t.name} {t.kind}" + (f" {t.value!r}" if t.value else ""))
    if m.client_ips is not None:
        parts.append("client " + " | ".join(str(n) for n in m.client_ips))
    if m.listeners is not None:
        parts.append("listener " + " | ".join(m.listeners))
    return ", ".join(parts) if parts else "every request"


def _test_found(values: list[bytes]) -> str:
    if not values:
        return "absent"
    return ", ".join(_q(v) for v in values)


def _wanted(test: ValueTest) -> str:
    if test.kind in ("present", "absent"):
        return test.kind
    return _q(test.value or "") if test.kind == "equals" else f"~ {test.value!r}"


def _why(route: Route, code: int, ctx: RequestContext, head: MessageHead,
         listener_names: Sequence[str]) -> str:
    m = route.match
    what, index = code % 16, code // 16
    if what == _F_HOST:
        assert m.hosts is not None
        return f"host {_q(ctx.route_host or b'(none)')} is not {' | '.join(m.hosts)}"
    if what == _F_PATH:
        if m.paths:
            return f"path {_q(ctx.path)} is not {' | '.join(m.paths)}"
        seg = " as whole segments" if m.whole_segments else ""
        return f"path {_q(ctx.path)} does not start with {' | '.join(m.path_prefixes)}{seg}"
    if what == _F_LISTENER:
        assert m.listeners is not None
        return f"listener {_q(listener_names[ctx.listener])} is not {' | '.join(m.listeners)}"
    if what == _F_METHOD:
        assert m.methods is not None
        return f"method {head.method.decode()} is not {' | '.join(m.methods)}"
    if what == _F_HEADER:
        t = m.headers[index]
        found = _test_found(head.get_all(t.name.encode()))
        return f"header {t.name}: wanted {_wanted(t)}, found {found}"
    if what == _F_QUERY:
        t = m.query[index]
        first = query_get(ctx.query, t.name.encode()) if ctx.has_query else None
        values = [first] if first is not None else []  # the rule reads the first only
        return f"query {t.name}: wanted {_wanted(t)}, found {_test_found(values)}"
    if what == _F_CLIENT:
        assert m.client_ips is not None
        nets = " | ".join(str(n) for n in m.client_ips)
        return f"client {ctx.client_ip.decode()} is not in {nets}"
    if what == _F_REGEX:
        return f"path {_q(ctx.path)} does not match {m.path_regex!r}"
    if what == _F_TLS:
        return "the request came over TLS" if m.tls is False else "the request is not over TLS"
    if what == _F_CERT:
        t = m.client_cert[index]
        fact = (ctx.tls or {}).get(t.name)
        return (f"client certificate {t.name}: wanted {_wanted(t)}, found "
                f"{_q(fact) if fact is not None else '(none)'}")
    return f"condition {code}"


def _indent(head: bytes) -> list[str]:
    return ["  " + line for line in head.decode("latin-1").split("\r\n") if line]


def explain(config: Config, method: str, url: str, headers: Sequence[str] = (),
            client_ip: str = "127.0.0.1", listener: str | None = None) -> list[str]:
    """Lines saying how the proxy would route this request and what it would send."""
    try:
        ip = str(ipaddress.ip_address(client_ip))
    except ValueError:
        raise ExplainError(f"invalid client address {client_ip!r}") from None
    names = [lst.name for lst in config.listeners]
    if listener is None:
        index = 0
    elif listener in names:
        index = names.index(listener)
    else:
        raise ExplainError(f"unknown listener {listener!r} (defined: {', '.join(names)})")
    head = _parse(_request_bytes(method, url, headers), config)
    router = build_router(config, {name: up for name, up in config.upstreams.items()})
    ctx = new_context(head, config.routing.merge_slashes, ip.encode(), b"http", index,
                      names[index].encode())
    out = [f"request:   {method} {head.target.decode('latin-1')} "
           f"(Host {_q(head.host or b'(none)')}, client {ip}, listener {_q(names[index])})"]
    if ctx.path is None:
        out.append("answer:    400 Bad Request (the target's authority or path is invalid: "
                   "a bad %-escape, or '..' above the root)")
        return out
    steps, fast = router.explain(ctx, ctx.host_header)
    host_note = ""
    if ctx.route_host is None:  # no route has a host condition
        ctx.route_host = ctx.host
    elif ctx.route_host != ctx.host or (ctx.route_host and not head.host):
        host_note = (f" (the listener's default_host: no route names "
                     f"{_q(ctx.host_header or b'(none)')})")
    out.append(f"routed as: host {_q(ctx.route_host or b'(none)')}{host_note}, "
               f"path {_q(ctx.path)}" + (f", query {_q(ctx.query)}" if ctx.has_query else ""))
    out.append("")
    winner = None
    for rule, code in steps:
        route = rule.route
        if code == 0:
            winner = rule
            out.append(f"{route.label}: MATCH ({_describe_match(route)})")
        else:
            out.append(f"{route.label}: no — {_why(route, code, ctx, head, names)}")
    if (fast is None) != (winner is None) or (fast is not None and fast is not winner):
        out.append("warning: the compiled matcher chose "
                   f"{fast.route.label if fast is not None else 'no route'}; please report this")
    out.append("")
    if winner is None:
        out.append("answer:    404 Not Found (no route matches)")
        return out
    out.extend(_action_lines(config, winner, ctx, head))
    return out


def _response_edit_lines(route: Route, action: Any, ctx: RequestContext) -> list[str]:
    edits = route.response_headers
    if edits is None:
        return []
    rendered = _indent(action.response_edits.render_for(ctx))
    n_set = len(edits.set)
    return ["response header edits:",
            *(f"  remove {name}" for name in edits.remove),
            *("  set " + line.strip() for line in rendered[:n_set]),
            *("  add " + line.strip() for line in rendered[n_set:])]


def _action_lines(config: Config, rule: Rule, ctx: RequestContext,
                  head: MessageHead) -> list[str]:
    route: Route = rule.route
    action = rule.action
    if isinstance(action, LocalAction):
        date = formatdate(usegmt=True).encode()
        answer = action.answer_for(ctx, date, True, head.is_head_request)
        kind = "redirect" if route.redirect is not None else "respond"
        head_part, _, body = answer.partition(b"\r\n\r\n")
        lines = [f"action:    {kind} (answered by the proxy)", "response:", *_indent(head_part)]
        if body:
            lines.append("  ")
            lines.extend("  " + line for line in body.decode("utf-8", "replace").splitlines())
        return lines
    assert isinstance(action, ProxyAction)
    upstream = config.upstreams[route.upstream or ""]
    servers = ", ".join(s.address for s in upstream.servers)
    lines = [f"action:    proxy to upstream {_q(upstream.name)} ({servers})"]
    target = action.target_for(ctx) if action.rewrites and ctx.target != b"*" else ctx.target
    if target is None:
        return [*lines, "answer:    400 Bad Request (the rewritten path climbs above the root)"]
    client_host = ctx.host_header or upstream.servers[0].address.encode()
    host = action.upstream_host_for(ctx, client_host) if action.rewrites else client_host
    edits = action.request_edits
    drop, extra = (edits.drop, edits.render_for(ctx)) if edits is not None else ((), b"")
    via = b"1.1 fastproxy" if config.server.via else b""
    out = build_request_head(head, target, host or client_host, ctx.client_ip, ctx.scheme, via,
                             drop, extra, client_host)
    lines.append("upstream request:")
    lines.extend(_indent(out))
    lines.extend(_response_edit_lines(route, action, ctx))
    return lines
