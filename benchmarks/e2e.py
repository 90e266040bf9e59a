#!/usr/bin/env python3
"""End-to-end comparison: fastproxy vs nginx vs HAProxy as reverse proxies, same upstream.

    python benchmarks/e2e.py                 # 3 cases x 3 proxies x 3 rounds x 8 s, ~4.5 min
    python benchmarks/e2e.py --quick         # 1 round x 3 s, under 90 s
    python benchmarks/e2e.py --cases 1k --rounds 3 --duration 5
    python benchmarks/e2e.py --proxies fastproxy,nginx     # without HAProxy
    python benchmarks/e2e.py --cases scale   # only fastproxy with 1, 2, 4 workers (opt-in)
    python benchmarks/e2e.py --scaling       # the default cases + the scale case (run first)
    python benchmarks/e2e.py --cases 1k --profile /tmp/profile.txt   # + py-spy on the worker
    python benchmarks/e2e.py --tls --proxies fastproxy,nginx   # only the TLS cases (opt-in)
    python benchmarks/e2e.py --cases tls-handshake --tls-key rsa      # RSA-2048 instead of P-256
    python benchmarks/e2e.py --cases cache-hit   # hits from each proxy's cache (opt-in)
    python benchmarks/e2e.py --cases compress-20k --proxies fastproxy,nginx   # gzip on the fly
    python benchmarks/e2e.py --waf           # fastproxy with [waf] vs without, ~2 min (opt-in)
    python benchmarks/e2e.py --cases waf-browser --profile /tmp/w.txt --profile-case waf-browser
    python benchmarks/e2e.py --metrics       # fastproxy counting metrics vs not, ~2 min (opt-in)

Everything listens on 127.0.0.1 only. The script starts, in a temporary
directory, one upstream nginx (static 1 KiB and 64 KiB files, keep-alive on),
and in front of it the proxies chosen with --proxies (default all three):
one nginx reverse proxy, one HAProxy (if installed; skipped with a note if
not) and one fastproxy, each with 1 worker (HAProxy: 1 process, `nbthread 1`)
and up to 128 idle upstream keep-alive connections (--upstream-keepalive).
It checks with curl that each proxy returns the upstream's files byte for
byte, then runs wrk against each proxy in turn (fastproxy, nginx, haproxy,
fastproxy, ...) and reports medians over the rounds: requests/s, p50 and p99
latency, requests per CPU-second of the proxy (utime+stime of the master and
its workers, from /proc/PID/stat, before and after each run), the CPU share of
the upstream and of wrk, how many new connections the proxy opened to the
upstream (the upstream's stub_status) and the upstream reuse derived from it,
100 * (1 - new upstream connections / requests). Ratios: fastproxy / nginx and
fastproxy / haproxy.

With taskset and at least 2 CPUs, the proxy under test runs on CPU 0 and wrk
and the upstream nginx share CPU 1. The default run length went from 10 s to
8 s per run when HAProxy was added, to stay under 5 minutes.

The `scale` case (opt-in: `--cases scale` or `--scaling`; it runs before the
others) starts fastproxy afresh with 1, 2 and 4 workers in turn (1 2 4 1 2 4
...), 1 KiB keep-alive, wrk -t2 -c100, an upstream nginx with 2 workers, and
pins nothing. On a 2-CPU machine wrk and the upstream compete with the
proxy's workers for the same cores: it shows whether adding workers helps or
hurts when everything shares the machine, not clean scaling.

The TLS cases (opt-in: `--cases tls-keepalive,tls-handshake,tls-resume` or
`--tls`, which selects all three) give each proxy a second listener that
terminates TLS with the same self-signed certificate (made with `openssl req`
in the temporary directory: ECDSA P-256, or RSA-2048 with --tls-key rsa) and
an equivalent policy: TLS 1.2 and 1.3, fastproxy's default TLS 1.2 suites
(`fastproxy.tls.DEFAULT_CIPHERS`) in server order, session tickets on, no
server-side session cache (nginx's default; `--tls-session-cache` gives nginx
`ssl_session_cache shared:SSL:10m` and HAProxy its default cache). Behind it,
the same upstream as the plain cases. The checks: curl fetches both files over
https verifying the certificate, and `openssl s_client` shows that every proxy
negotiates the same protocol, suite, key exchange group and signature, with
TLS 1.3 and with TLS 1.2.

- `tls-keepalive`: wrk over https with the plain 1k case's keep-alive
  connections (one handshake per connection, then requests).
- `tls-handshake`: full handshakes, a new connection each and no request:
  `--tls-clients` (default 8) `openssl s_time -new` processes in parallel on
  the load CPU. s_time prints `*` for a full and `r` for a resumed handshake;
  a run with any `r` fails. wrk is no use here: it keeps each connection's
  SSL object across reconnects, so with `Connection: close` it resumes
  sessions, and its handshake loop burns CPU.
- `tls-resume`: resumed handshakes (TLS 1.3 session ticket), a new
  connection each with one HTTP/1.0 request for 1 KiB: `openssl s_time -reuse
  -www /1k.bin` (the request is needed: a TLS 1.3 client only gets its ticket
  after the handshake). A run with more than 1 % full handshakes fails.

In the s_time cases "req/s" is connections (handshakes) per second, and the
clients' CPU is in the wrk column. The TLS cases run the proxies in
alternating order (fastproxy, nginx, then nginx, fastproxy, ...).

The WAF cases (opt-in: `--cases waf-browser,waf-plain` or `--waf`, which
selects both; alone, only them) measure what the built-in WAF costs end to
end: two fastproxy instances side by side, pinned like the others, in front of
the same upstream, the same except that one has a `[waf]` table with no keys
(the default rule sets, on the one route), with the 1k case's wrk settings
(keep-alive, 1 KiB). `--proxies` does not apply. Checks: an SQL injection in the
query gets 403 from the `[waf]` one and 200 from the other, and the browser-like
request gets 200 from both.

- `waf-browser`: `GET /1k.bin?q=red+shoes&page=2` with the header fields a
  Chrome navigation sends (`BROWSER_HEADERS`: User-Agent, Accept,
  Accept-Language, Accept-Encoding, a Cookie with a session id and analytics
  cookies, a Referer), as wrk `-H` options. Every request repeats the same
  values, so after the first one the WAF knows the Cookie, Referer and
  User-Agent as clean (its steady state for one browser; see waf.py).
- `waf-plain`: wrk's own request (`GET /1k.bin`, Host only).

The rounds alternate the order (without, with; then with, without; ...).
Reported: each variant's medians, the ratio with [waf] / without of the
medians and the median of the rounds' ratios. Compare req per proxy CPU-s:
at -c50 the proxy is not saturated, and the instance that idles more (the
cheaper one) loses time to wake-ups, so req/s can even favour the WAF.

The metrics cases (opt-in: `--cases metrics-plain,metrics-routes` or
`--metrics`, which selects both; alone, only them) measure what counting
Prometheus metrics costs, the same way as the WAF cases (the same machinery,
`Comparison` below): two fastproxy instances, one with an `[admin]` table on a
port of its own (its workers count for /metrics; no `[metrics]` table, so the
default: on), one without (nothing counted). Both have 8 more named routes
(`r1` .. `r8` on /r1 .. /r8, which the upstream serves as /) before the
catch-all one. Checks: both serve /r1/1k.bin .. /r8/1k.bin; the one with
`[admin]` listens on its proxy and admin ports, the other on its proxy port
only; after each warm-up, `fastproxy_http_requests_total` on the admin API's
/metrics has grown by at least the requests wrk counted (in metrics-routes:
on every one of the 8 routes).

- `metrics-plain`: wrk's own request (`GET /1k.bin`, Host only; the catch-all
  route).
- `metrics-routes`: each connection asks for /r1/1k.bin .. /r8/1k.bin in turn
  (a wrk Lua script): route matching and counting over 8 series.

Every run is bounded by its duration; every process started here is stopped by
its PID at exit, also on errors and signals. A run with socket errors or
non-2xx responses fails the whole benchmark.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import gzip
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
FILES = {"/1k.bin": 1024, "/64k.bin": 65536}
# case -> (path, send "Connection: close", what it measures)
CASES = {
    "1k": ("/1k.bin", False, "keep-alive, 1 KiB response"),
    "64k": ("/64k.bin", False, "keep-alive, 64 KiB response"),
    "close": ("/1k.bin", True, "new connection per request (Connection: close), 1 KiB"),
    # Opt-in (--cases cache-hit): every proxy caches /cached/ (the upstream sends
    # max-age=3600 there), so after the warm-up each request is a hit.
    "cache-hit": ("/cached/1k.bin", False,
                  "keep-alive, 1 KiB served from each proxy's cache (nginx proxy_cache, "
                  "HAProxy cache, fastproxy [caches])"),
    # Opt-in (--cases compress-20k): a 20 KiB HTML page gzip'd on the fly by the proxy
    # for a client that sends Accept-Encoding: gzip, at the same level everywhere
    # (--gzip-level): nginx `gzip on; gzip_comp_level N`, fastproxy `compress = {
    # algorithms = ["gzip"], level = { gzip = N } }`, HAProxy `compression algo gzip`
    # (its build's library and level: with libslz it has no levels).
    "compress-20k": ("/gz/20k.html", False,
                     "keep-alive, 20 KiB HTML compressed on the fly with gzip "
                     "(Accept-Encoding: gzip)"),
}
COMPRESS_CASE = "compress-20k"
COMPRESS_FILE = "/20k.html"
COMPRESS_HEADERS = ("Accept-Encoding: gzip",)
GZIP_LEVEL = 5  # --gzip-level

# TLS cases (opt-in): case -> (path or None, client, what it measures)
TLS_CASES = {
    "tls-keepalive": ("/1k.bin", "wrk",
                      "keep-alive over TLS, 1 KiB response (wrk https: one handshake per "
                      "connection)"),
    "tls-handshake": (None, "s_time -new",
                      "full TLS handshakes, a new connection each, no request (openssl "
                      "s_time -new)"),
    "tls-resume": ("/1k.bin", "s_time -reuse",
                   "resumed TLS handshakes (session ticket), a new connection each with one "
                   "HTTP/1.0 request, 1 KiB (openssl s_time -reuse -www)"),
}
TLS_KEYS = {  # --tls-key -> (openssl req -newkey arguments, description)
    "ecdsa": (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "ECDSA P-256"),
    "rsa": (["-newkey", "rsa:2048"], "RSA-2048"),
}
TLS_CLIENTS = 8  # default parallel openssl s_time processes
# s_time without the system CA store: with it, OpenSSL 3 re-reads the CA directory
# for every connection (most of the client's CPU in a perf profile).
S_TIME_NO_CA = ["-no-CApath", "-no-CAfile", "-no-CAstore"]
PROXIES = ("fastproxy", "nginx", "haproxy")  # also the order within a round
WARMUP_SECONDS = 2
RUN_OVERHEAD_S = 0.6  # per measured run beyond --duration (pause, wrk start, /proc reads)
PROXY_CPU = "0"
LOAD_CPU = "1"  # wrk and the upstream nginx
KEEPALIVE_REQUESTS = 1_000_000  # nginx's default of 1000 would make wrk reconnect
# The opt-in worker scaling case: fastproxy only, nothing pinned.
SCALE = "scale"
SCALE_PATH = "/1k.bin"
SCALE_WHAT = ("fastproxy with 1, 2 and 4 workers, keep-alive, 1 KiB response, "
              "nothing pinned")
SCALE_WORKERS = (1, 2, 4)
SCALE_THREADS, SCALE_CONNECTIONS = 2, 100  # wrk -t2 -c100
SCALE_UPSTREAM_WORKERS = 2
SCALE_START_S = 2.0  # per fresh fastproxy: start, readiness, verify, stop
# The opt-in WAF cases: fastproxy with `[waf]` (default rule sets) against without.
# Header fields of a Chrome 124 navigation from a search page (wrk -H).
BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    "Accept-Language: en-US,en;q=0.9,de;q=0.8",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Cookie: session_id=8f3c2a1e9b7d4c6fa0e5b2d18c7f9a31; _ga=GA1.1.1234567890.1714000000; "
    "_gid=GA1.1.987654321.1714000000; _ga_Q2W3E4R5T6=GS1.1.1714000000.3.1.1714000300.0.0.0",
    "Referer: https://shop.example.com/search?q=shoes&page=1",
)
# case -> (path with query, wrk -H header fields, what it measures)
CaseSpec = tuple[str, tuple[str, ...], str]
WAF_CASES: dict[str, CaseSpec] = {
    "waf-browser": ("/1k.bin?q=red+shoes&page=2", BROWSER_HEADERS,
                    "keep-alive, 1 KiB, a browser-like GET (query, Chrome header fields, "
                    "cookies, Referer)"),
    "waf-plain": ("/1k.bin", (), "keep-alive, 1 KiB, wrk's own request (Host only)"),
}
WAF_VARIANTS = ("fastproxy", "fastproxy+waf")  # without [waf], with it
WAF_ATTACK = "/1k.bin?id=1%27%20OR%20%271%27%3D%271"  # the check: 403 with [waf], else 200
# The opt-in metrics cases: fastproxy with `[admin]` (so its workers count for /metrics)
# against without. Both have METRICS_ROUTES more named routes (`r1`, `r2`, ...: path
# prefixes /r1, /r2, ... that the upstream serves as /), before the catch-all one.
METRICS_ROUTES = 8
METRICS_CASES: dict[str, CaseSpec] = {
    "metrics-plain": ("/1k.bin", (), "keep-alive, 1 KiB, wrk's own request (Host only)"),
    "metrics-routes": ("/r1/1k.bin", (),
                       f"keep-alive, 1 KiB, each connection's requests go to the "
                       f"{METRICS_ROUTES} named routes in turn (a wrk Lua script)"),
}
METRICS_VARIANTS = ("fastproxy", "fastproxy+metrics")  # without [admin], with it
# case -> the paths each wrk connection asks for in turn (by a Lua script)
ROTATING = {"metrics-routes": tuple(f"/r{i}/1k.bin" for i in range(1, METRICS_ROUTES + 1))}
WRK_SCRIPTS: dict[str, Path] = {}  # case -> its Lua script (write_wrk_script)
ALL_CASES = (*CASES, *TLS_CASES, *WAF_CASES, *METRICS_CASES, SCALE)


class BenchError(RuntimeError):
    """Something that makes the measurement meaningless: stop and say why."""


# -- processes ----------------------------------------------------------------------


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    stop_signal: int
    log_path: Path
    extra_pids: tuple[int, ...] = ()  # workers seen while it ran, stopped if orphaned


class Processes:
    """Every process this script starts, stopped by PID (also from atexit)."""

    def __init__(self) -> None:
        self.started: list[Started] = []

    def start(self, name: str, argv: list[str], log_path: Path, stop_signal: int) -> Started:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        item = Started(name, proc, stop_signal, log_path)
        self.started.append(item)
        return item

    def stop(self, item: Started, timeout: float = 10.0) -> None:
        proc = item.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, item.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # A worker outlives its master only if the master was killed: stop it too,
        # after checking that the PID still names a process of ours (ppid 1 now).
        for pid in item.extra_pids:
            st = _stat(pid)
            if st is not None and st[1] in (1, proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if item in self.started:
            self.started.remove(item)

    def stop_all(self) -> None:
        for item in reversed(list(self.started)):
            try:
                self.stop(item)
            except Exception as e:  # keep stopping the others
                print(f"warning: could not stop {item.name} ({item.proc.pid}): {e}",
                      file=sys.stderr)


PROCS = Processes()
atexit.register(PROCS.stop_all)


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through finally blocks, then atexit


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, utime ticks, stime ticks) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return fields[0].decode(), int(fields[1]), int(fields[11]), int(fields[12])


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pid:
                out.append(int(entry))
    return sorted(out)


def process_tree(pid: int) -> list[int]:
    return [pid, *children(pid)]


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by `pids`, together."""
    user = system = 0
    for pid in pids:
        st = _stat(pid)
        if st is None:
            raise BenchError(f"process {pid} disappeared during the run")
        user += st[2]
        system += st[3]
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_times(pids))


def busy_cpu_seconds() -> float:
    """CPU time the machine's processes (and the hypervisor, as steal) used so far.

    From /proc/stat: user + nice + system + steal. irq/softirq time is left out,
    as it belongs to no process (loopback TCP work lands there too)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (sum(fields[:3]) + fields[7]) / CLK_TCK


def affinity(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# -- servers ------------------------------------------------------------------------


def _nginx_common(prefix: Path, name: str, workers: int = 1) -> str:
    temp = "\n".join(f"    {kind}_temp_path {prefix}/tmp_{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"worker_processes {workers};\npid {prefix}/{name}.pid;\n"
            f"error_log {prefix}/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n    access_log off;\n"
            f"    keepalive_requests {KEEPALIVE_REQUESTS};\n{temp}\n")


def upstream_conf(prefix: Path, port: int, workers: int = 1, routes: int = 0) -> str:
    """The upstream nginx; with `routes`, it also serves the files under /r1/ .. /rN/
    (the metrics-routes case's paths)."""
    aliases = "".join(f"        location /r{i}/ {{ alias {prefix}/www/; }}\n"
                      for i in range(1, routes + 1))
    return _nginx_common(prefix, "upstream", workers) + f"""\
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/www;
        location / {{ }}
        location /cached/ {{
            alias {prefix}/www/;
            add_header Cache-Control "max-age=3600";
        }}
        location /gz/ {{
            alias {prefix}/www/;
            types {{ text/html html; }}
        }}
        location = /status {{ stub_status; }}  # counts the connections the proxies open
{aliases}    }}
}}
"""


@dataclass
class TlsFiles:
    """The certificate every proxy serves on its TLS listener (the TLS cases)."""
    cert: Path
    key: Path
    combined: Path  # cert + key in one file, for HAProxy's `crt`
    key_type: str  # a TLS_KEYS description
    session_cache: bool  # --tls-session-cache
    engine: str = "openssl"  # --tls-engine: fastproxy's [listeners.tls] engine


def tls_ciphers() -> str:
    """fastproxy's default TLS 1.2 suites, given to nginx and HAProxy too."""
    from fastproxy.tls import DEFAULT_CIPHERS

    return DEFAULT_CIPHERS


def nginx_proxy_conf(prefix: Path, port: int, upstream_port: int, keepalive: int,
                     tls: TlsFiles | None = None, tls_port: int = 0) -> str:
    location = """\
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /gz/ {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            gzip on;
            gzip_comp_level %d;
            gzip_proxied any;
            gzip_vary on;
            gzip_min_length 256;
        }
""" % GZIP_LEVEL + """\
        location /cached/ {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hits;
        }
"""
    tls_server = ""
    if tls is not None:
        # nginx's default `ssl_session_cache none` stores no session (it only pretends
        # to): like fastproxy, whose OpenSSL stores no TLS 1.3 session with tickets on.
        cache = ("ssl_session_cache shared:SSL:10m;" if tls.session_cache
                 else "# no ssl_session_cache: the default, none")
        tls_server = f"""\
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {tls_ciphers()};
        ssl_prefer_server_ciphers on;  # as Python's ssl (OP_CIPHER_SERVER_PREFERENCE)
        ssl_session_tickets on;
        {cache}
{location}    }}
"""
    return _nginx_common(prefix, "proxy") + f"""\
    proxy_cache_path {prefix}/proxy_cache levels=1:2 keys_zone=hits:10m max_size=64m
                     inactive=60m use_temp_path=off;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive {keepalive};
        keepalive_requests {KEEPALIVE_REQUESTS};
    }}
    server {{
        listen 127.0.0.1:{port};
{location}    }}
{tls_server}}}
"""


def haproxy_conf(port: int, upstream_port: int, keepalive: int, tls: TlsFiles | None = None,
                 tls_port: int = 0) -> str:
    """HAProxy set up like the nginx proxy: 1 thread, no logging, pooled upstream keep-alive.

    `http-reuse always` is the closest match to nginx's `keepalive N`: nginx hands
    any idle cached upstream connection to any request, the first one of a client
    connection included, and so does `always`. With `safe` (HAProxy's default)
    the first request of every client connection goes over a connection of its
    own, so the `close` case (one request per client connection) would open one
    upstream connection per request. `pool-max-conn N` caps the idle connections
    kept, like nginx's `keepalive N`. No `log` line: nothing is logged.

    With `tls`, a second frontend terminates TLS (TLS 1.2 and 1.3, fastproxy's
    TLS 1.2 suites, tickets on, which is HAProxy's default); its session cache is
    off (`tune.ssl.cachesize 0`) unless --tls-session-cache."""
    tls_global = tls_frontend = ""
    if tls is not None:
        if not tls.session_cache:
            tls_global = "    tune.ssl.cachesize 0\n"
        bind = (f"bind 127.0.0.1:{tls_port} ssl crt {tls.combined} ssl-min-ver TLSv1.2 "
                f"ciphers {tls_ciphers()} alpn http/1.1")
        tls_frontend = f"""
frontend fe_tls
    {bind}
    default_backend be
"""
    return f"""\
global
    nbthread 1
    maxconn 4096
{tls_global}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn 4096
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s
    timeout http-request 10s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be
{tls_frontend}
cache hits
    total-max-size 64
    max-age 3600

backend be
    compression algo gzip
    compression type text/html
    http-request cache-use hits if {{ path_beg /cached/ }}
    http-response cache-store hits
    server s1 127.0.0.1:{upstream_port} pool-max-conn {keepalive}
"""


def fastproxy_conf(port: int, upstream_port: int, keepalive: int, workers: int = 1,
                   tls: TlsFiles | None = None, tls_port: int = 0, waf: bool = False,
                   admin_port: int = 0, routes: int = 0) -> str:
    """fastproxy in front of the upstream. `waf`: a `[waf]` table with no keys;
    `admin_port`: an `[admin]` table there (and so the workers count metrics);
    `routes`: that many more named routes, r1 .. rN on the path prefixes /r1 .. /rN,
    before the catch-all route."""
    tls_listener = ""
    if tls is not None:  # the defaults: TLS 1.2 + 1.3, DEFAULT_CIPHERS, tickets on
        tls_listener = f"""
[[listeners]]
address = "127.0.0.1:{tls_port}"

[listeners.tls]
certificates = [ {{ cert = "{tls.cert}", key = "{tls.key}" }} ]
engine = "{tls.engine}"
"""
    # No keys: the default rule sets (waf.DEFAULT_RULE_SETS) on every route.
    waf_table = "\n[waf]\n" if waf else ""
    admin_table = f'\n[admin]\naddress = "127.0.0.1:{admin_port}"\n' if admin_port else ""
    named = "".join(f"""
[[routes]]
name = "r{i}"
match = {{ path_prefix = "/r{i}", whole_segments = true }}
upstream = "backend"
""" for i in range(1, routes + 1))
    return f"""\
[server]
workers = {workers}
shutdown_timeout = "2s"

[log]
access = "off"
level = "warning"
{waf_table}{admin_table}
[[listeners]]
address = "127.0.0.1:{port}"
{tls_listener}
[upstreams.backend]
servers = ["127.0.0.1:{upstream_port}"]
keepalive = {keepalive}

[caches.hits]
memory = "64m"

[[routes]]
match = {{ path_prefix = "/cached", whole_segments = true }}
upstream = "backend"
cache = "hits"

[[routes]]
match = {{ path_prefix = "/gz", whole_segments = true }}
upstream = "backend"
compress = {{ algorithms = ["gzip"], level = {{ gzip = {GZIP_LEVEL} }} }}
{named}
[[routes]]
upstream = "backend"
"""


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def start_nginx(name: str, prefix: Path, conf: str, cpu: str | None) -> Started:
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    argv = pinned(cpu, ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
                        "-c", str(conf_path), "-g", "daemon off;"])
    return PROCS.start(name, argv, prefix / "stdout.log", signal.SIGTERM)


def find_haproxy() -> str | None:
    """The haproxy binary: on PATH, or in an sbin directory a non-root PATH may lack."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def start_haproxy(binary: str, prefix: Path, conf: str, cpu: str | None) -> Started:
    conf_path = prefix / "haproxy.cfg"
    conf_path.write_text(conf)
    check = subprocess.run([binary, "-c", "-q", "-f", str(conf_path)], capture_output=True,
                           text=True, timeout=15, check=False)
    if check.returncode != 0:
        raise BenchError(f"haproxy rejects its configuration:\n{check.stdout}{check.stderr}")
    # -db: foreground, one process (no master-worker), stopped by SIGTERM.
    argv = pinned(cpu, [binary, "-f", str(conf_path), "-db"])
    return PROCS.start("haproxy", argv, prefix / "haproxy.log", signal.SIGTERM)


def start_fastproxy(prefix: Path, conf: str, cpu: str | None) -> Started:
    conf_path = prefix / "fastproxy.toml"
    conf_path.write_text(conf)
    argv = pinned(cpu, [sys.executable, "-m", "fastproxy", "serve", str(conf_path)])
    return PROCS.start("fastproxy", argv, prefix / "fastproxy.log", signal.SIGTERM)


def http_get(port: int, path: str, out: Path, extra: tuple[str, ...] = (),
             cacert: Path | None = None) -> tuple[int, int]:
    """One request with curl: (status, body bytes); the body goes to `out`. With
    `cacert`, over https, verifying the proxy's certificate against it."""
    url = (f"https://127.0.0.1:{port}{path}" if cacert is not None
           else f"http://127.0.0.1:{port}{path}")
    tls = ("--cacert", str(cacert)) if cacert is not None else ()
    res = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "-o", str(out), "-w", "%{http_code} %{size_download}",
         *tls, *extra, url],
        capture_output=True, text=True, timeout=15, check=False)
    if res.returncode != 0:
        return 0, 0
    code, size = res.stdout.split()
    return int(code), int(float(size))


def upstream_accepts(port: int) -> int:
    """Connections the upstream nginx has accepted so far (stub_status), this one included."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^\s*(\d+)\s+\d+\s+\d+\s*$", text, re.M)
    if not m:
        raise BenchError(f"cannot read the upstream's stub_status:\n{text}")
    return int(m.group(1))


def wait_ready(item: Started, port: int, scratch: Path, timeout: float = 15.0) -> None:
    """Ready when a real request through it succeeds (listening alone is not enough:
    fastproxy's master opens the socket before its worker accepts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if item.proc.poll() is not None:
            raise BenchError(f"{item.name} exited with {item.proc.returncode}:\n"
                             f"{tail(item.log_path)}")
        if http_get(port, "/1k.bin", scratch)[0] == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{item.name} did not answer on 127.0.0.1:{port} within {timeout:.0f}s:\n"
                     f"{tail(item.log_path)}")


def verify(name: str, port: int, www: Path, scratch: Path, quiet: bool = False,
           cacert: Path | None = None) -> None:
    for path, size in FILES.items():
        for extra in ((), ("-H", "Connection: close")):
            code, got = http_get(port, path, scratch, extra, cacert)
            if code != 200 or got != size or scratch.read_bytes() != (www / path[1:]).read_bytes():
                raise BenchError(f"{name}: GET {path} {' '.join(extra)} "
                                 f"{'over TLS ' if cacert else ''}gave status {code}, "
                                 f"{got} bytes (expected 200 with the {size}-byte file)")
    if not quiet:
        how = "over https, certificate verified" if cacert else "keep-alive and Connection: close"
        print(f"  verified: {name} serves /1k.bin and /64k.bin from the upstream byte for "
              f"byte ({how})")


# -- TLS ----------------------------------------------------------------------------


def make_certificate(directory: Path, key_type: str, session_cache: bool) -> TlsFiles:
    """A self-signed certificate for localhost and 127.0.0.1, valid for 2 days."""
    newkey, description = TLS_KEYS[key_type]
    cert, key, combined = (directory / "site.pem", directory / "site.key",
                           directory / "site-combined.pem")
    res = subprocess.run(
        ["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise BenchError(f"openssl req failed ({res.returncode}):\n{res.stderr}")
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    for f in (cert, key, combined):
        os.chmod(f, 0o644)  # a throw-away key, readable by nginx's unprivileged workers
    return TlsFiles(cert, key, combined, description, session_cache)


_FACTS = {"Protocol version": "protocol", "Ciphersuite": "cipher",
          "Signature type": "signature", "Peer Temp Key": "group", "Server Temp Key": "group"}


def tls_facts(port: int) -> dict[str, dict[str, str]]:
    """What a client negotiates with the TLS listener (`openssl s_client -brief`),
    with the defaults (TLS 1.3) and with TLS 1.2 forced."""
    out: dict[str, dict[str, str]] = {}
    for label, extra in (("default", []), ("tls1_2", ["-tls1_2"])):
        res = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief", *extra,
             *S_TIME_NO_CA], input="", capture_output=True, text=True, timeout=15, check=False)
        facts = {}
        for line in (res.stdout + res.stderr).splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in _FACTS:
                facts[_FACTS[key.strip()]] = value.strip()
        if "protocol" not in facts:
            raise BenchError(f"openssl s_client could not connect to 127.0.0.1:{port}:\n"
                             f"{res.stdout}{res.stderr}")
        out[label] = facts
    return out


_S_TIME_DONE = re.compile(r"(\d+) connections in ([\d.]+)s; [\d.]+ connections/user sec, "
                          r"bytes read (\d+)")


def run_s_time(port: int, reuse: bool, seconds: int, clients: int, cpu: str | None,
               ) -> tuple[WrkResult, str, float, dict[str, int]]:
    """`clients` openssl s_time processes in parallel, each making connections one
    after the other for about `seconds` s: -new (a full handshake each, no request)
    or -reuse -www /1k.bin (the session resumed each time, one HTTP/1.0 request).

    s_time stops at the first whole second after its deadline (it reads time()), so
    the processes are started just after a second boundary, all together, and the
    rate is counted over the wall time from the first start to the last exit.
    Returns the result (no latencies: NaN), the outputs, the clients' CPU seconds
    and the counts of full (`*`) and resumed (`r`) handshakes s_time printed."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-time", str(seconds),
            *S_TIME_NO_CA]
    argv += ["-reuse", "-www", "/1k.bin"] if reuse else ["-new"]
    time.sleep(1.02 - time.time() % 1.0)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    procs = [subprocess.Popen(pinned(cpu, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True) for _ in range(clients)]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 30)
            outs.append((proc.returncode, out, err))
    finally:
        for proc in procs:  # only on an error above: these are ours, stop them by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    raw = "\n".join(f"[s_time {i}, exit {rc}]\n{out[-600:]}{err[-600:]}"
                    for i, (rc, out, err) in enumerate(outs))
    conns = bytes_read = 0
    marks = {"full": 0, "resumed": 0}
    for rc, out, err in outs:
        m = None
        if rc == 0:  # the measured part ends at the first summary line
            m = _S_TIME_DONE.search(out)
        if m is None:
            raise BenchError(f"openssl s_time failed (exit {rc}):\n{out[-2000:]}\n{err[-2000:]}")
        # One mark per timed connection, on a line of its own ("starting" and the
        # -reuse mode's first, full, connection print none).
        progress = "".join(re.findall(r"(?m)^[*rt3]+$", out[:m.start()]))
        marks["full"] += len(progress) - progress.count("r")
        marks["resumed"] += progress.count("r")
        conns += int(m.group(1))
        bytes_read += int(m.group(3))
    nan = float("nan")
    result = WrkResult(requests=conns, seconds=round(wall, 3), rps=conns / wall, p50_ms=nan,
                       p75_ms=nan, p90_ms=nan, p99_ms=nan, bytes_read=bytes_read,
                       socket_errors={}, non_2xx=0)
    return result, raw, client_cpu, marks


def wait_workers(item: Started, count: int, timeout: float = 15.0) -> list[int]:
    """The PIDs of the `count` worker processes of `item`, once they are all forked."""
    deadline = time.monotonic() + timeout
    while True:
        workers = children(item.proc.pid)
        if len(workers) == count:
            return workers
        if item.proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{item.name}: expected {count} worker(s), found {workers}:\n"
                             f"{tail(item.log_path)}")
        time.sleep(0.05)


def stop_and_wait(item: Started, timeout: float = 10.0) -> None:
    """Stop `item` by its PID (SIGTERM, then SIGKILL after 10 s) and wait until none
    of its workers is left, so that the next instance starts on an idle machine."""
    PROCS.stop(item)
    master = item.proc.pid
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in item.extra_pids
                if (st := _stat(pid)) is not None and st[1] in (1, master)]
        if not left:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{item.name}: worker(s) {left} still running after the stop")
        time.sleep(0.05)


# -- wrk ----------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    bytes_read: float
    socket_errors: dict[str, int]
    non_2xx: int


def parse_wrk(out: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out)
        if not m:
            raise BenchError(f"cannot read wrk output (no match for {pattern!r}):\n{out}")
        return m

    pct = {}
    for p in (50, 75, 90, 99):
        m = re.search(rf"(?m)^\s+{p}%\s+(\S+)", out)
        if m:
            pct[p] = _ms(m.group(1))
    if len(pct) != 4:
        raise BenchError(f"wrk printed no latency distribution (--latency):\n{out}")
    done = find(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)([KMGT]?B) read")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = dict(zip(errors, map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1000,
        rps=float(find(r"Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=pct[50], p75_ms=pct[75], p90_ms=pct[90], p99_ms=pct[99],
        bytes_read=float(done.group(4)) * _SIZE[done.group(5)],
        socket_errors=errors,
        non_2xx=int(m.group(1)) if m else 0,
    )


def run_wrk(port: int, path: str, close: bool, seconds: int, args: argparse.Namespace,
            cpu: str | None, https: bool = False, headers: tuple[str, ...] = (),
            script: Path | None = None) -> tuple[WrkResult, str, float]:
    """One wrk run: the parsed result, wrk's output and wrk's own CPU seconds. With
    `script`, wrk runs that Lua script (which makes the requests)."""
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
            "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    if close:
        argv += ["-H", "Connection: close"]
    for header in headers:
        argv += ["-H", header]
    argv.append(f"{'https' if https else 'http'}://127.0.0.1:{port}{path}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(pinned(cpu, argv), capture_output=True, text=True,
                         timeout=seconds + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise BenchError(f"wrk failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return parse_wrk(res.stdout), res.stdout, wrk_cpu


def check_run(label: str, result: WrkResult, raw: str, body_size: int) -> None:
    problems = []
    if result.non_2xx:
        problems.append(f"{result.non_2xx} non-2xx responses")
    if any(result.socket_errors.values()):
        problems.append(f"socket errors {result.socket_errors}")
    if result.requests == 0:
        problems.append("no requests completed")
    # wrk's byte count is rounded to 2 decimals of its unit: allow 1 % slack.
    elif result.bytes_read < 0.99 * result.requests * body_size:
        problems.append(f"only {result.bytes_read / result.requests:.0f} bytes per response "
                        f"(the body alone is {body_size})")
    if problems:
        raise BenchError(f"{label}: " + "; ".join(problems) + f"\nwrk output:\n{raw}")


def case_path(case: str) -> str | None:
    """The file a case fetches (None: tls-handshake sends no request)."""
    if case == SCALE:
        return SCALE_PATH
    if case in COMPARED_CASES:
        return COMPARED_CASES[case].cases[case][0]
    return TLS_CASES[case][0] if case in TLS_CASES else CASES[case][0]


def body_size(case: str) -> int:
    """The size of the file a wrk case fetches (its path without the query); for the
    compression case, what the smallest gzip of it can be (zlib level 9, less 10 %)."""
    path = case_path(case)
    assert path is not None
    path = path.partition("?")[0]
    if case == COMPRESS_CASE:
        return int(len(zlib.compress(compress_page(), 9)) * 0.9)
    return FILES["/" + path.rpartition("/")[2]]  # /cached/1k.bin and /r1/1k.bin: /1k.bin


def compress_page() -> bytes:
    """The 20 KiB HTML page of the compression case (the same bytes every run)."""
    rng = random.Random(1)
    words = ["proxy", "cache", "request", "upstream", "header", "server", "client", "latency",
             "connection", "worker", "the", "a", "of", "and", "to", "with", "for", "on"]
    rows = []
    while sum(map(len, rows)) < 20 * 1024 - 200:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
        rows.append(f'<li class="item-{rng.randint(1, 40)}"><a href="/p/{rng.randint(1, 9999)}">'
                    f"{text}</a> <span>{rng.randint(1, 10**6)}</span></li>\n")
    page = ("<!doctype html><html><head><title>bench</title></head><body><ul>\n"
            + "".join(rows) + "</ul></body></html>\n").encode()
    return page[:20 * 1024 - 15] + b"</body></html>\n"


def run_load(case: str, port: int, seconds: int, args: argparse.Namespace, cpu: str | None,
             ) -> tuple[WrkResult, str, float, dict[str, int] | None]:
    """The case's load for `seconds` s: (result, output, the client's CPU seconds,
    s_time's full / resumed handshake counts or None for wrk)."""
    if case in ("tls-handshake", "tls-resume"):
        return run_s_time(port, case == "tls-resume", seconds, args.tls_clients, cpu)
    close = case in CASES and CASES[case][1]
    path = case_path(case)
    assert path is not None
    headers = COMPARED_CASES[case].cases[case][1] if case in COMPARED_CASES else ()
    if case == COMPRESS_CASE:
        headers = COMPRESS_HEADERS
    result, raw, client_cpu = run_wrk(port, path, close, seconds, args, cpu,
                                      https=case in TLS_CASES, headers=headers,
                                      script=WRK_SCRIPTS.get(case))
    return result, raw, client_cpu, None


def check_load(label: str, case: str, result: WrkResult, raw: str,
               marks: dict[str, int] | None) -> None:
    """check_run for wrk; for s_time: connections made, handshakes of the right kind
    (full for tls-handshake, resumed for tls-resume), whole responses."""
    if marks is None:
        check_run(label, result, raw, body_size(case))
        return
    problems = []
    if result.requests == 0:
        problems.append("no connection completed")
    if case == "tls-handshake" and marks["resumed"]:
        problems.append(f"{marks['resumed']} of the handshakes were resumed (expected full "
                        "handshakes only)")
    if case == "tls-resume":
        if marks["full"] > 0.01 * max(result.requests, 1):
            problems.append(f"{marks['full']} of {result.requests} handshakes were full ones "
                            "(the session was not resumed)")
        if result.bytes_read < result.requests * FILES["/1k.bin"]:
            problems.append(f"only {result.bytes_read / max(result.requests, 1):.0f} bytes "
                            f"per connection (the body alone is {FILES['/1k.bin']})")
    if problems:
        raise BenchError(f"{label}: " + "; ".join(problems) + f"\ns_time output:\n{raw}")


# -- measurement --------------------------------------------------------------------


@dataclass
class Run:
    case: str
    proxy: str
    round: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    seconds: float
    proxy_cpu_s: float
    proxy_cpu_pct: float
    proxy_kernel_pct: float  # share of the proxy's CPU time spent in the kernel (stime)
    req_per_cpu_s: float
    upstream_cpu_pct: float
    wrk_cpu_pct: float
    upstream_conns: int
    upstream_conns_per_1k_req: float
    upstream_reuse_pct: float  # 100 * (1 - new upstream connections / requests)
    other_cpu_pct: float  # process CPU on the machine not spent by proxy, upstream or wrk
    workers: int = 1  # proxy worker processes (nginx, fastproxy) or threads (haproxy)
    # s_time cases: connections with a full (`*`) and with a resumed (`r`) handshake.
    # wrk_cpu_pct is then the s_time processes' CPU, and rps connections per second.
    full_handshakes: int | None = None
    resumed_handshakes: int | None = None


def is_cache_helper(pid: int) -> bool:
    """nginx's cache loader (it exits about a minute after the start) or cache manager:
    idle in these cases, and left out of the proxy's processes (a run that spans the
    loader's exit would otherwise fail: "process ... disappeared")."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"nginx: cache ")
    except OSError:
        return False


def proxy_processes(pid: int) -> list[int]:
    """The proxy's master and workers (process_tree without nginx's cache helpers)."""
    return [p for p in process_tree(pid) if not is_cache_helper(p)]


def measure(case: str, proxy: str, rnd: int, port: int, proxy_pid: int, upstream_pid: int,
            upstream_port: int, args: argparse.Namespace,
            cpus: tuple[str | None, str | None], workers: int = 1) -> Run:
    pids = proxy_processes(proxy_pid)
    up_pids = process_tree(upstream_pid)
    accepts0 = upstream_accepts(upstream_port)
    busy0 = busy_cpu_seconds()
    (user0, sys0), up0, t0 = cpu_times(pids), cpu_seconds(up_pids), time.monotonic()
    result, raw, wrk_cpu, marks = run_load(case, port, args.duration, args, cpus[1])
    (user1, sys1), up1, t1 = cpu_times(pids), cpu_seconds(up_pids), time.monotonic()
    busy1 = busy_cpu_seconds()
    conns = upstream_accepts(upstream_port) - accepts0 - 1  # minus the status request's own
    if proxy_processes(proxy_pid) != pids:
        raise BenchError(f"{proxy}: its worker processes changed during the run "
                         f"({pids} -> {proxy_processes(proxy_pid)}): a worker died?")
    check_load(f"{case}/{proxy} round {rnd}", case, result, raw, marks)
    cpu = (user1 + sys1) - (user0 + sys0)
    wall = t1 - t0
    forwarded = case != "tls-handshake"  # requests that went on to the upstream
    return Run(case=case, proxy=proxy, round=rnd, rps=result.rps, p50_ms=result.p50_ms,
               p75_ms=result.p75_ms, p90_ms=result.p90_ms, p99_ms=result.p99_ms,
               requests=result.requests, seconds=result.seconds, proxy_cpu_s=round(cpu, 3),
               proxy_cpu_pct=round(100 * cpu / wall, 1),
               proxy_kernel_pct=round(100 * (sys1 - sys0) / cpu, 1) if cpu > 0 else float("nan"),
               req_per_cpu_s=round(result.requests / cpu, 1) if cpu > 0 else float("nan"),
               upstream_cpu_pct=round(100 * (up1 - up0) / wall, 1),
               wrk_cpu_pct=round(100 * wrk_cpu / wall, 1), upstream_conns=conns,
               upstream_conns_per_1k_req=round(1000 * conns / max(result.requests, 1), 2),
               upstream_reuse_pct=(round(100 * (1 - conns / max(result.requests, 1)), 2)
                                   if forwarded else float("nan")),
               other_cpu_pct=round(100 * max(0.0, (busy1 - busy0) - cpu - (up1 - up0) - wrk_cpu)
                                   / wall, 1),
               workers=workers,
               full_handshakes=marks["full"] if marks else None,
               resumed_handshakes=marks["resumed"] if marks else None)


METRICS = ("rps", "p50_ms", "p99_ms", "req_per_cpu_s", "proxy_cpu_pct", "proxy_kernel_pct",
           "upstream_cpu_pct",
           "wrk_cpu_pct", "upstream_conns_per_1k_req", "upstream_reuse_pct", "other_cpu_pct")


def medians(runs: list[Run]) -> dict[str, float]:
    return {m: round(statistics.median(getattr(r, m) for r in runs), 3) for m in METRICS}


def ratios(num: dict[str, float], den: dict[str, float]) -> dict[str, float | None]:
    """num / den for every metric (None where den is 0)."""
    return {m: round(num[m] / den[m], 3) if den[m] else None for m in METRICS}


# -- report -------------------------------------------------------------------------


def versions(haproxy: str | None) -> dict[str, str]:
    import uvloop

    import fastproxy

    def first_line(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError as e:
            return f"unavailable ({e})"
        return (res.stdout + res.stderr).strip().splitlines()[0]

    root = str(HERE.parent)
    commit = first_line(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD", "--", "src", "ext"],
                          capture_output=True, timeout=10, check=False).returncode == 1:
            commit += " + uncommitted changes in src/ or ext/"
    imported = Path(fastproxy.__file__).resolve().parent
    if imported != (HERE.parent / "src" / "fastproxy").resolve():
        # e.g. PYTHONPATH=/tmp/snapshot: a copy taken while others edit the checkout
        commit = (f"not this checkout's (its HEAD: {commit}): fastproxy imported from "
                  f"{imported}")
    return {
        "commit": commit,
        "python": platform.python_version(),
        "uvloop": uvloop.__version__,
        "fastproxy": fastproxy.__version__,
        "fastproxy_imported_from": str(imported),
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line([haproxy, "-v"]) if haproxy else "not installed",
        "wrk": first_line(["wrk", "-v"]),
        "kernel": platform.release(),
    }


def machine() -> dict[str, object]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu_model": model}


def fmt(x: float, digits: int = 2) -> str:
    if x != x:  # NaN
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}"


def table(summary: dict[str, dict[str, object]], proxies: list[str]) -> str:
    lines = [
        "| case | proxy | req/s | p50 ms | p99 ms | req per proxy CPU-s "
        "| proxy CPU % (kernel share) | upstream + wrk CPU % | new upstream conns per 1k req "
        "| upstream reuse % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, data in summary.items():
        med: dict[str, dict[str, float]] = data["median"]  # type: ignore[assignment]
        for proxy in proxies:
            m = med[proxy]
            lines.append(f"| {case} | {proxy} | {fmt(m['rps'])} | {fmt(m['p50_ms'])} | "
                         f"{fmt(m['p99_ms'])} | {fmt(m['req_per_cpu_s'])} | "
                         f"{fmt(m['proxy_cpu_pct'], 0)} ({fmt(m['proxy_kernel_pct'], 0)}) | "
                         f"{fmt(m['upstream_cpu_pct'], 0)} + {fmt(m['wrk_cpu_pct'], 0)} | "
                         f"{fmt(m['upstream_conns_per_1k_req'], 1)} | "
                         f"{fmt(m['upstream_reuse_pct'])} |")
        for key, other in (("ratio", "nginx"), ("ratio_haproxy", "haproxy")):
            if data.get(key) is None:
                continue
            r = {k: _ratio(v) for k, v in data[key].items()}  # type: ignore[attr-defined]
            lines.append(f"| {case} | **fastproxy / {other}** | **{r['rps']}** | {r['p50_ms']} "
                         f"| {r['p99_ms']} | **{r['req_per_cpu_s']}** | | | | |")
    return "\n".join(lines)


def scaling_table(scaling: dict[str, object]) -> str:
    lines = [
        "| fastproxy workers | req/s | p50 ms | p99 ms | proxy CPU % (master + workers) "
        "| req per proxy CPU-s | upstream + wrk CPU % | other CPU % | upstream reuse % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    med: dict[str, dict[str, float]] = scaling["median"]  # type: ignore[assignment]
    for n, m in med.items():
        lines.append(f"| {n} | {fmt(m['rps'])} | {fmt(m['p50_ms'])} | {fmt(m['p99_ms'])} | "
                     f"{fmt(m['proxy_cpu_pct'], 0)} | {fmt(m['req_per_cpu_s'])} | "
                     f"{fmt(m['upstream_cpu_pct'], 0)} + {fmt(m['wrk_cpu_pct'], 0)} | "
                     f"{fmt(m['other_cpu_pct'], 0)} | {fmt(m['upstream_reuse_pct'])} |")
    for label, ratio in scaling["ratio"].items():  # type: ignore[attr-defined]
        r = {k: _ratio(v) for k, v in ratio.items()}
        lines.append(f"| **{label.replace('/', ' / ')}** | **{r['rps']}** | {r['p50_ms']} | "
                     f"{r['p99_ms']} | **{r['proxy_cpu_pct']}** | {r['req_per_cpu_s']} | | | |")
    return "\n".join(lines)


def scaling_note(ncpu: int | None) -> str:
    return (f"Nothing is pinned: on this {ncpu}-CPU machine wrk (-t{SCALE_THREADS} "
            f"-c{SCALE_CONNECTIONS}) and the upstream nginx ({SCALE_UPSTREAM_WORKERS} workers) "
            "compete with fastproxy's workers for the same cores, so this measures whether "
            f"adding workers helps or hurts when everything shares {ncpu} cores, not clean "
            "scaling.")


def _no_nan(value: object) -> object:
    """NaN (a measurement that could not be made) as JSON null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


# -- profile ------------------------------------------------------------------------


_LINE = re.compile(r":\d+\)$")


def _ours(frame: str) -> bool:
    return "(fastproxy/" in frame or "(_http.pyx" in frame or "(_rewrite.pyx" in frame


def summarize_profile(path: Path, top: int = 12) -> str:
    """Top frames of a py-spy `--format raw` file (collapsed stacks, `a;b;c COUNT`).

    Line numbers are dropped so that a function is one entry. Three views: the
    leaf frame (where the CPU was when sampled: a syscall, the interpreter, C
    code); the innermost fastproxy frame (its own code plus everything it called
    that is not ours: what each of our functions costs in all); and inclusive
    time of our functions. Plus the syscalls (a libc leaf) by the function of ours
    that made them.
    """
    own: Counter[str] = Counter()
    by_ours: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    syscalls: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        # The worker was forked from the master's serve(): skip the frames above its loop.
        if "Worker.run (fastproxy/worker.py)" in frames:
            frames = frames[frames.index("Worker.run (fastproxy/worker.py)") + 1:]
        total += n
        own[frames[-1] if frames else "?"] += n
        inner = [f for f in frames if _ours(f)]
        owner = inner[-1] if inner else "(event loop, no fastproxy frame)"
        by_ours[owner] += n
        if frames and "(libc.so" in frames[-1]:
            syscalls[f"{frames[-1].split(' ')[0]}() <- {owner}"] += n
        for frame in set(inner):
            inclusive[frame] += n
    if not total:
        return "(no samples)"

    def block(title: str, counts: Counter[str]) -> list[str]:
        return ["", title, *(f"  {100 * n / total:5.1f}%  {frame}"
                             for frame, n in counts.most_common(top))]

    in_libc = sum(syscalls.values())
    return "\n".join([f"{total} samples (active only; idle waits are not sampled); "
                      f"{100 * in_libc / total:.1f}% with a libc call (a syscall) as the leaf",
                      *block("self, by leaf frame:", own),
                      *block("syscalls, by innermost fastproxy frame:", syscalls),
                      *block("by innermost fastproxy frame (own code + what it calls):",
                             by_ours),
                      *block("inclusive, fastproxy frames:", inclusive)])


# Where a TLS connection's time goes: each sample counts for the first kind its stack
# matches (uvloop's SSLProtocol drives Python's ssl.SSLObject over memory BIOs).
_TLS_KINDS = (
    ("SNI callback (tls.py select)", r"_servername_callback|select \(fastproxy/tls\.py"),
    ("describe_peer_cert (tls.py)", r"describe_peer_cert"),
    ("SSLWantReadError objects (_ssl PySSL_SetError)", r"PySSL_SetError|fill_and_set_sslerror"),
    ("OpenSSL: SSL_do_handshake", r"_ssl__SSLSocket_do_handshake_impl"),
    ("OpenSSL: SSL_read", r"_ssl__SSLSocket_read_impl"),
    ("OpenSSL: SSL_write", r"_ssl__SSLSocket_write_impl"),
    ("ssl.py: SSLContext.wrap_bio, SSLObject._create", r"wrap_bio|SSLObject\._create"),
    ("uvloop: transport registry (weakref.py)", r"weakref\.py"),
    ("uvloop: socket writes", r"UVStream__try_write|UVStream_write"),
    ("fastproxy: requests (parser, exchange, upstream)", r"HttpParser_feed|data_received \(_proxy"),
    ("fastproxy: connection_made, tls_made", r"connection_made \(_proxy|tls_made"),
    ("uvloop: accept, new transport and SSLProtocol", r"UVStreamServer__on_listen"),
    ("uvloop: handshake timeout timer, futures",
     r"call_later|TimerHandle|_asyncio_Future|new_future"),
    ("uvloop: connection close, deallocation", r"call_connection_lost|_dealloc|UVHandle__close"),
    ("uvloop: other SSLProtocol code (BIOs, state)", r"SSLProtocol"),
    ("event loop: epoll, socket reads, accept4", r"epoll|uv__io_poll"),
)


def summarize_tls_profile(path: Path) -> str:
    """A py-spy raw profile of a TLS case, by kind of work (_TLS_KINDS)."""
    kinds: Counter[str] = Counter()
    total = 0
    patterns = [(label, re.compile(rx)) for label, rx in _TLS_KINDS]
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        label = next((label for label, rx in patterns if rx.search(stack)), "other")
        kinds[label] += int(count)
    if not total:
        return "(no samples)"
    return "\n".join(["by kind of work (first match in the stack):",
                      *(f"  {100 * n / total:5.1f}%  {label}" for label, n in kinds.most_common())])


def profile_worker(worker_pid: int, port: int, out: Path, args: argparse.Namespace,
                   cpus: tuple[str | None, str | None]) -> None:
    spy = shutil.which("py-spy")
    if spy is None:
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    seconds = args.duration
    case = args.profile_case
    print(f"\nprofiling fastproxy worker {worker_pid} with py-spy for {seconds}s during a "
          f"{case} run")
    argv = pinned(cpus[1], [spy, "record", "--native", "--rate", "250", "--format", "raw",
                            "-o", str(out), "--pid", str(worker_pid), "-d", str(seconds)])
    log = out.with_suffix(out.suffix + ".log")
    item = PROCS.start("py-spy", argv, log, signal.SIGINT)
    try:
        time.sleep(0.5)  # let py-spy attach
        result, raw, _, marks = run_load(case, port, seconds, args, cpus[1])
        check_load("profile run", case, result, raw, marks)
        item.proc.wait(seconds + 30)
    finally:
        PROCS.stop(item)
    if item.proc.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({item.proc.returncode}):\n{tail(log)}")
    print(f"  (rate under the profiler: {result.rps:,.0f} "
          f"{'conns' if marks is not None else 'req'}/s; not part of the table)")
    print(f"  raw profile: {out}\n")
    print(summarize_tls_profile(out) if case in TLS_CASES else summarize_profile(out))


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    global GZIP_LEVEL
    usage = __doc__.split("\n\n")[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=f"examples:\n{usage}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 round of 3 s runs (under 90 s with the default cases and proxies)")
    p.add_argument("--rounds", type=int,
                   help="rounds per case; a round runs each proxy (scale: each worker count) "
                        "once, in turn (default 3; --quick: 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 8; --quick: 3)")
    p.add_argument("--cases", default="1k,64k,close",
                   help=f"comma-separated, from: {', '.join(ALL_CASES)} "
                        f"(default 1k,64k,close; cache-hit, {COMPRESS_CASE} and {SCALE} are "
                        f"opt-in; {SCALE}: fastproxy only, with "
                        f"{', '.join(map(str, SCALE_WORKERS))} workers, nothing pinned, wrk "
                        f"-t{SCALE_THREADS} -c{SCALE_CONNECTIONS}; the tls-*, waf-* and "
                        "metrics-* cases are opt-in too, see --tls, --waf and --metrics)")
    p.add_argument("--gzip-level", type=int, default=GZIP_LEVEL, choices=range(1, 10),
                   metavar="N", help=f"{COMPRESS_CASE}: the gzip level of nginx and fastproxy "
                                     f"(default {GZIP_LEVEL})")
    p.add_argument("--tls", action="store_true",
                   help=f"add the TLS cases ({', '.join(TLS_CASES)}) to --cases; alone (no "
                        "--cases), only them")
    p.add_argument("--tls-key", choices=sorted(TLS_KEYS), default="ecdsa",
                   help="the certificate's key: ecdsa (P-256, the default) or rsa (2048 bits)")
    p.add_argument("--tls-clients", type=int, default=TLS_CLIENTS, metavar="N",
                   help=f"openssl s_time processes run in parallel in tls-handshake and "
                        f"tls-resume (default {TLS_CLIENTS})")
    p.add_argument("--tls-session-cache", action="store_true",
                   help="give nginx `ssl_session_cache shared:SSL:10m` and HAProxy its default "
                        "session cache (default: none, like fastproxy with TLS 1.3 tickets)")
    p.add_argument("--tls-engine", choices=("openssl", "python"), default="openssl",
                   help="fastproxy's TLS engine ([listeners.tls] engine): OpenSSL driven from "
                        "C (the default) or uvloop's SSL transport over Python's ssl module")
    p.add_argument("--waf", action="store_true",
                   help=f"add the WAF cases ({', '.join(WAF_CASES)}: fastproxy with [waf] "
                        "and the default rule sets against fastproxy without) to --cases; "
                        "alone (no --cases), only them")
    p.add_argument("--metrics", action="store_true",
                   help=f"add the metrics cases ({', '.join(METRICS_CASES)}: fastproxy with "
                        "[admin], so counting for /metrics, against fastproxy without, both "
                        f"with {METRICS_ROUTES} more named routes) to --cases; alone (no "
                        "--cases), only them")
    p.add_argument("--scaling", action="store_true",
                   help=f"add the {SCALE} case to --cases (it runs before the others)")
    p.add_argument("--proxies", default=",".join(PROXIES),
                   help=f"comma-separated, from: {', '.join(PROXIES)} (default all; within a "
                        "round they run in that order). haproxy is skipped with a note when "
                        "it is not installed (apt-get install -y haproxy)")
    p.add_argument("--connections", type=int, default=50,
                   help=f"wrk -c (default 50; the {SCALE} case uses {SCALE_CONNECTIONS})")
    p.add_argument("--threads", type=int, default=1,
                   help=f"wrk -t (default 1; the {SCALE} case uses {SCALE_THREADS})")
    p.add_argument("--upstream-keepalive", type=int, default=128, metavar="N",
                   help="idle upstream connections each proxy keeps (nginx `keepalive N`, "
                        "haproxy `pool-max-conn N`, fastproxy `keepalive = N` per worker; "
                        "default 128, fastproxy's default: nginx's usual 32 is below wrk's 50 "
                        "connections and makes the proxies reopen upstream connections)")
    p.add_argument("--json", type=Path, help="where to write the results "
                   "(default benchmarks/results/e2e-<date>.json)")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument("--install", action="store_true",
                   help="install missing nginx, wrk, curl and haproxy with apt-get (root)")
    p.add_argument("--profile", type=Path, metavar="PATH",
                   help="after measuring, run py-spy (raw format) on the fastproxy worker "
                        "during one extra run of --profile-case and print the top frames")
    p.add_argument("--profile-case", default="1k", metavar="CASE",
                   help="the case run under --profile (default 1k, or the first case when "
                        "only waf-* or metrics-* cases run; a tls-*, waf-* or metrics-* case "
                        "needs it in --cases; a waf-* or metrics-* case profiles the worker "
                        "of the fastproxy with [waf] or with metrics)")
    explicit_cases = any(a == "--cases" or a.startswith("--cases=")
                         for a in (argv if argv is not None else sys.argv[1:]))
    args = p.parse_args(argv)
    if (args.tls or args.waf or args.metrics) and not explicit_cases:
        args.cases = ""
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 8)
    GZIP_LEVEL = args.gzip_level
    args.cases = list(dict.fromkeys(c.strip() for c in args.cases.split(",") if c.strip()))
    if args.tls:
        args.cases += [c for c in TLS_CASES if c not in args.cases]
    if args.waf:
        args.cases += [c for c in WAF_CASES if c not in args.cases]
    if args.metrics:
        args.cases += [c for c in METRICS_CASES if c not in args.cases]
    if args.scaling and SCALE not in args.cases:
        args.cases.append(SCALE)
    bad = [c for c in args.cases if c not in ALL_CASES]
    if bad or not args.cases:
        p.error(f"unknown case(s) {', '.join(bad) or '(none)'}; "
                f"choose from {', '.join(ALL_CASES)}")
    chosen = {x.strip() for x in args.proxies.split(",") if x.strip()}
    bad = sorted(chosen - set(PROXIES))
    if bad or not chosen:
        p.error(f"unknown proxy(ies) {', '.join(bad) or '(none)'}; "
                f"choose from {', '.join(PROXIES)}")
    args.proxies = [x for x in PROXIES if x in chosen]
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be at least 1")
    compared_only = all(c in COMPARED_CASES for c in args.cases)
    if args.profile and not compared_only and (
            "fastproxy" not in args.proxies or args.cases == [SCALE]):
        p.error(f"--profile needs fastproxy in --proxies and a case other than {SCALE}")
    if args.profile and compared_only and args.profile_case == "1k":
        args.profile_case = args.cases[0]  # the default case is not run: profile another
    if args.profile_case not in CASES and args.profile_case not in TLS_CASES \
            and args.profile_case not in COMPARED_CASES:
        p.error(f"--profile-case: choose from {', '.join([*CASES, *TLS_CASES, *COMPARED_CASES])}")
    if args.profile and args.profile_case in (*TLS_CASES, *COMPARED_CASES) \
            and args.profile_case not in args.cases:
        p.error(f"--profile-case {args.profile_case} needs {args.profile_case} in --cases")
    if args.profile and args.profile_case not in COMPARED_CASES and compared_only:
        p.error("--profile with only waf-* or metrics-* cases: --profile-case is one of them")
    if args.tls_clients < 1:
        p.error("--tls-clients must be at least 1")
    return args


def install_missing(proxies: list[str]) -> None:
    """--install: the Debian packages of the tools and peers that are missing."""
    wanted = {"nginx": "nginx", "wrk": "wrk", "curl": "curl", "openssl": "openssl"}
    if "haproxy" in proxies:
        wanted["haproxy"] = "haproxy"
    missing = sorted(pkg for tool, pkg in wanted.items()
                     if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None)
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print(f"note: cannot install {', '.join(missing)} (needs root and apt-get)")
        return
    print(f"installing {', '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env,
                             check=False)
        if res.returncode != 0:
            print(f"note: {' '.join(argv)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
            return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    if args.install:
        install_missing(args.proxies)
    tools = ("nginx", "wrk", "curl", "openssl") if any(c in TLS_CASES for c in args.cases) \
        else ("nginx", "wrk", "curl")
    for tool in tools:
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            print(f"error: {tool} is not installed (apt-get install -y wrk nginx curl openssl, "
                  "or run with --install)", file=sys.stderr)
            return 2
    haproxy = find_haproxy()
    regular = [c for c in args.cases if c != SCALE and c not in COMPARED_CASES]
    if "haproxy" in args.proxies and haproxy is None:
        args.proxies.remove("haproxy")
        if regular:
            print("note: haproxy is not installed (apt-get install -y haproxy): skipping it")
    if regular and not args.proxies:
        print("error: no proxy left to measure (--proxies)", file=sys.stderr)
        return 2
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    cpus: tuple[str | None, str | None] = (PROXY_CPU, LOAD_CPU) if pin else (None, None)
    pinning = ("proxy under test on CPU 0; wrk and the upstream nginx on CPU 1 (taskset)"
               if pin else "not pinned (no taskset, fewer than 2 CPUs, or --no-pin)")
    budget = 0.0
    if SCALE in args.cases:
        budget += 2 + args.rounds * len(SCALE_WORKERS) * (
            args.duration + RUN_OVERHEAD_S + WARMUP_SECONDS + SCALE_START_S)
        print(f"{SCALE}: fastproxy with {', '.join(map(str, SCALE_WORKERS))} workers, "
              f"{args.rounds} round(s) x {args.duration}s each, wrk -t{SCALE_THREADS} "
              f"-c{SCALE_CONNECTIONS}, nothing pinned")
    if regular:
        budget += 5 + len(regular) * len(args.proxies) * (
            args.rounds * (args.duration + RUN_OVERHEAD_S) + WARMUP_SECONDS + 0.3)
        # s_time runs to the first whole second after its time, started on a boundary
        s_time_cases = sum(c in ("tls-handshake", "tls-resume") for c in regular)
        budget += s_time_cases * len(args.proxies) * (args.rounds + 1) * 1.5
        print(f"{' vs '.join(args.proxies)}, cases {','.join(regular)}: {args.rounds} round(s) "
              f"x {args.duration}s per proxy, wrk -t{args.threads} -c{args.connections}")
        print(f"pinning: {pinning}")
    compared = False
    for cmp in COMPARISONS.values():
        cmp_cases = [c for c in args.cases if c in cmp.cases]
        if not cmp_cases:
            continue
        budget += 5 + len(cmp_cases) * len(cmp.variants) * (
            args.rounds * (args.duration + RUN_OVERHEAD_S + 0.5) + WARMUP_SECONDS + 0.3)
        print(f"{' vs '.join(cmp.variants)}, cases {','.join(cmp_cases)}: {args.rounds} "
              f"round(s) x {args.duration}s each, wrk -t{args.threads} -c{args.connections}")
        if not regular and not compared:
            print(f"pinning: {pinning}")
        compared = True
    print(f"about {budget:.0f}s in all")

    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-e2e-"))
    try:
        return _bench(args, tmp, cpus, pinning, haproxy)
    except BenchError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    finally:
        PROCS.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Bench:
    """What side-by-side scripts (tls_sockets.py, instructions.py) share: a directory per
    proxy, an ECDSA certificate, ports, and the upstream nginx, started and ready."""

    dirs: dict[str, Path]
    scratch: Path
    tls: TlsFiles
    up_port: int
    ports: dict[str, int]
    tls_ports: dict[str, int]


def bench_setup(tmp: Path, names: list[str] | tuple[str, ...]) -> Bench:
    os.chmod(tmp, 0o755)
    up_dir, www = tmp / "upstream", tmp / "upstream" / "www"
    dirs = {name: tmp / name for name in names}
    make_dirs(up_dir, www, *dirs.values())
    write_files(www)
    bench = Bench(dirs=dirs, scratch=tmp / "check.bin",
                  tls=make_certificate(tmp, "ecdsa", False), up_port=free_port(),
                  ports={name: free_port() for name in names},
                  tls_ports={name: free_port() for name in names})
    upstream = start_nginx("upstream nginx", up_dir, upstream_conf(up_dir, bench.up_port),
                           LOAD_CPU)
    wait_ready(upstream, bench.up_port, bench.scratch)
    return bench


def make_dirs(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)  # nginx workers may run as an unprivileged user


def write_files(www: Path) -> None:
    rng = random.Random(0)
    for path, size in FILES.items():
        f = www / path[1:]
        f.write_bytes(rng.randbytes(size))
        os.chmod(f, 0o644)
    f = www / COMPRESS_FILE[1:]
    f.write_bytes(compress_page())
    os.chmod(f, 0o644)


def verify_compressed(name: str, port: int, www: Path, scratch: Path) -> None:
    """The compression case: a gzip body that decodes to the page, and identity for a
    client that does not ask for it."""
    page = (www / COMPRESS_FILE[1:]).read_bytes()
    code, _ = http_get(port, "/gz" + COMPRESS_FILE, scratch,
                       ("-H", "Accept-Encoding: gzip", "-D", str(scratch) + ".head"))
    head = Path(str(scratch) + ".head").read_text(errors="replace").lower()
    try:
        body = gzip.decompress(scratch.read_bytes())
    except (OSError, EOFError) as e:
        raise BenchError(f"{name}: GET /gz{COMPRESS_FILE} with Accept-Encoding: gzip: the "
                         f"body is not gzip ({e}); head:\n{head}") from None
    if code != 200 or "content-encoding: gzip" not in head or body != page:
        raise BenchError(f"{name}: GET /gz{COMPRESS_FILE} with Accept-Encoding: gzip gave "
                         f"{code}, head:\n{head}")
    code, got = http_get(port, "/gz" + COMPRESS_FILE, scratch)
    if code != 200 or scratch.read_bytes() != page:
        raise BenchError(f"{name}: GET /gz{COMPRESS_FILE} without Accept-Encoding gave {code}, "
                         f"{got} bytes (expected the page as it is)")
    print(f"  verified: {name} gzips /gz{COMPRESS_FILE} ({len(page)} bytes) for a client that "
          "asks, and sends it as it is otherwise")


def note_logs(name: str, paths: tuple[Path, ...]) -> None:
    for path in paths:
        if path.exists() and path.stat().st_size:
            print(f"note: {name} log {path} is not empty:\n{tail(path, 5)}")


def _regular(args: argparse.Namespace, cases: list[str], tmp: Path, scratch: Path,
             cpus: tuple[str | None, str | None], haproxy: str | None,
             ) -> tuple[dict[str, dict[str, object]], list[Run], dict[str, str], dict[str, int],
                        int, dict[str, object] | None]:
    """The pinned cases: (summary, runs, configs, fastproxy's ports {"plain", "tls"},
    fastproxy worker PID, the TLS set-up for the report or None)."""
    proxies = args.proxies
    up_dir = tmp / "upstream"
    www = up_dir / "www"
    dirs = {name: tmp / name for name in proxies}
    make_dirs(up_dir, www, *dirs.values())
    write_files(www)
    tls: TlsFiles | None = None
    tls_ports: dict[str, int] = {}
    if any(case in TLS_CASES for case in cases):
        tls = make_certificate(tmp, args.tls_key, args.tls_session_cache)
        tls.engine = args.tls_engine
        tls_ports = {name: free_port() for name in proxies}

    up_port = free_port()
    ports = {name: free_port() for name in proxies}
    upstream = start_nginx("upstream nginx", up_dir, upstream_conf(up_dir, up_port), cpus[1])
    wait_ready(upstream, up_port, scratch)
    verify("upstream nginx", up_port, www, scratch)
    keep = args.upstream_keepalive
    configs = {"upstream_nginx": upstream_conf(Path("TMP/upstream"), up_port)}
    servers: dict[str, Started] = {}
    for name in proxies:
        tls_port = tls_ports.get(name, 0)
        if name == "nginx":
            servers[name] = start_nginx(
                "nginx", dirs[name],
                nginx_proxy_conf(dirs[name], ports[name], up_port, keep, tls, tls_port), cpus[0])
            configs[name] = nginx_proxy_conf(Path("TMP/nginx"), ports[name], up_port, keep, tls,
                                             tls_port)
        elif name == "haproxy":
            assert haproxy is not None
            configs[name] = haproxy_conf(ports[name], up_port, keep, tls, tls_port)
            servers[name] = start_haproxy(haproxy, dirs[name], configs[name], cpus[0])
        else:
            configs[name] = fastproxy_conf(ports[name], up_port, keep, tls=tls, tls_port=tls_port)
            servers[name] = start_fastproxy(dirs[name], configs[name], cpus[0])
    negotiated: dict[str, dict[str, dict[str, str]]] = {}
    for name in proxies:
        wait_ready(servers[name], ports[name], scratch)
        verify(name, ports[name], www, scratch)
        if COMPRESS_CASE in cases:
            verify_compressed(name, ports[name], www, scratch)
        if tls is not None:
            verify(f"{name} (TLS)", tls_ports[name], www, scratch, cacert=tls.cert)
            negotiated[name] = tls_facts(tls_ports[name])
        tree = process_tree(servers[name].proc.pid)
        servers[name].extra_pids = tuple(tree[1:])
        workers = f"workers {tree[1:]}" if tree[1:] else "single process"
        print(f"  {name}: master {tree[0]}, {workers}, CPUs {affinity(tree[-1])}")
    upstream.extra_pids = tuple(children(upstream.proc.pid))
    tls_report = None
    if tls is not None:
        print(f"  TLS: {tls.key_type} self-signed certificate; session cache "
              f"{'on (nginx shared:SSL:10m, HAProxy default)' if tls.session_cache else 'off'}"
              "; negotiated (openssl s_client, default / -tls1_2):")
        for name, facts in negotiated.items():
            print(f"    {name:9s} " + " / ".join(", ".join(f.values()) for f in facts.values()))
        if len({json.dumps(f, sort_keys=True) for f in negotiated.values()}) > 1:
            print("  warning: the proxies do not negotiate the same TLS parameters (above)")
        tls_report = {
            "key_type": tls.key_type,
            "certificate": "self-signed, CN=localhost, subjectAltName DNS:localhost, "
                           "IP:127.0.0.1 (openssl req -x509)",
            "session_cache": ("nginx ssl_session_cache shared:SSL:10m, HAProxy default cache"
                              if tls.session_cache else
                              "none (nginx default; HAProxy tune.ssl.cachesize 0)"),
            "session_tickets": "on (all)",
            "tls12_ciphers": tls_ciphers(),
            "s_time_clients": args.tls_clients,
            "negotiated": negotiated,
            "order": "alternating: the proxies in order in odd rounds, reversed in even ones",
        }

    runs: list[Run] = []
    summary: dict[str, dict[str, object]] = {}
    for case in cases:
        is_tls = case in TLS_CASES
        path = case_path(case)
        what = TLS_CASES[case][2] if is_tls else CASES[case][2]
        case_ports = tls_ports if is_tls else ports
        print(f"\n[{case}] {what}" + (f": GET {path}" if path else ""))
        for name in proxies:  # warm-up, not recorded
            result, raw, _, marks = run_load(case, case_ports[name], WARMUP_SECONDS, args,
                                             cpus[1])
            check_load(f"{case}/{name} warm-up", case, result, raw, marks)
        case_runs: list[Run] = []
        for rnd in range(1, args.rounds + 1):
            # TLS cases alternate the order (A B, B A, ...); the plain ones keep it.
            order = proxies[::-1] if is_tls and rnd % 2 == 0 else proxies
            for name in order:
                time.sleep(0.5)
                r = measure(case, name, rnd, case_ports[name], servers[name].proc.pid,
                            upstream.proc.pid, up_port, args, cpus)
                case_runs.append(r)
                if r.full_handshakes is not None:
                    print(f"  round {rnd} {name:9s} {r.rps:8,.0f} conns/s  "
                          f"{r.req_per_cpu_s:7,.0f} per proxy CPU-s  CPU: proxy "
                          f"{r.proxy_cpu_pct:.0f}% (sys {r.proxy_kernel_pct:.0f}%), upstream "
                          f"{r.upstream_cpu_pct:.0f}%, s_time x{args.tls_clients} "
                          f"{r.wrk_cpu_pct:.0f}%, other {r.other_cpu_pct:.0f}%  handshakes: "
                          f"{r.full_handshakes} full, {r.resumed_handshakes} resumed")
                    continue
                print(f"  round {rnd} {name:9s} {r.rps:8,.0f} req/s  p50 {r.p50_ms:5.2f} ms  "
                      f"p99 {r.p99_ms:6.2f} ms  {r.req_per_cpu_s:7,.0f} req/CPU-s  "
                      f"CPU: proxy {r.proxy_cpu_pct:.0f}% (sys {r.proxy_kernel_pct:.0f}%), "
                      f"upstream {r.upstream_cpu_pct:.0f}%, wrk {r.wrk_cpu_pct:.0f}%, "
                      f"other {r.other_cpu_pct:.0f}%  new upstream conns {r.upstream_conns} "
                      f"(reuse {r.upstream_reuse_pct:.2f}%)")
        runs += case_runs
        med = {name: medians([r for r in case_runs if r.proxy == name]) for name in proxies}
        both = "fastproxy" in med
        summary[case] = {
            "description": what, "path": path, "median": med,
            "ratio": ratios(med["fastproxy"], med["nginx"]) if both and "nginx" in med else None,
            "ratio_haproxy": (ratios(med["fastproxy"], med["haproxy"])
                              if both and "haproxy" in med else None),
        }
        if is_tls:
            summary[case]["client"] = (
                f"wrk -t{args.threads} -c{args.connections} https" if TLS_CASES[case][1] == "wrk"
                else f"{args.tls_clients} x openssl s_time {TLS_CASES[case][1].split()[1]}"
                     f"{' -www /1k.bin' if case == 'tls-resume' else ''}, in parallel")
    print()
    for name in proxies:
        note_logs(name, (dirs[name] / "error.log", servers[name].log_path))
    fastproxy = servers.get("fastproxy")
    worker = fastproxy.extra_pids[-1] if fastproxy is not None and fastproxy.extra_pids else 0
    fp_ports = {"plain": ports.get("fastproxy", 0), "tls": tls_ports.get("fastproxy", 0)}
    return summary, runs, configs, fp_ports, worker, tls_report


def _scaling(args: argparse.Namespace, tmp: Path, scratch: Path) -> dict[str, object]:
    """The opt-in scale case: fastproxy with 1, 2, 4 workers, each started afresh."""
    up_dir = tmp / "upstream-scale"
    www = up_dir / "www"
    make_dirs(up_dir, www)
    write_files(www)
    print(f"\n[{SCALE}] {SCALE_WHAT}: GET {SCALE_PATH}, wrk -t{SCALE_THREADS} "
          f"-c{SCALE_CONNECTIONS}, upstream nginx with {SCALE_UPSTREAM_WORKERS} workers")
    print(f"  {scaling_note(os.cpu_count())}")
    up_port = free_port()
    keep = args.upstream_keepalive
    configs = {"upstream_nginx": upstream_conf(Path("TMP/upstream-scale"), up_port,
                                               SCALE_UPSTREAM_WORKERS)}
    sargs = argparse.Namespace(**{**vars(args), "threads": SCALE_THREADS,
                                  "connections": SCALE_CONNECTIONS})
    runs: list[Run] = []
    upstream = start_nginx("upstream nginx (scale)", up_dir,
                           upstream_conf(up_dir, up_port, SCALE_UPSTREAM_WORKERS), None)
    try:
        wait_ready(upstream, up_port, scratch)
        upstream.extra_pids = tuple(wait_workers(upstream, SCALE_UPSTREAM_WORKERS))
        verify("upstream nginx (scale)", up_port, www, scratch)
        for rnd in range(1, args.rounds + 1):
            for n in SCALE_WORKERS:
                fp_dir = tmp / f"fastproxy-{n}w"
                make_dirs(fp_dir)
                port = free_port()
                conf = fastproxy_conf(port, up_port, keep, n)
                configs[f"fastproxy_{n}w"] = conf
                item = start_fastproxy(fp_dir, conf, None)
                item.name = f"fastproxy ({n} worker{'s' if n > 1 else ''})"
                try:
                    wait_ready(item, port, scratch)
                    item.extra_pids = tuple(wait_workers(item, n))
                    verify(item.name, port, www, scratch, quiet=rnd > 1)
                    result, raw, _ = run_wrk(port, SCALE_PATH, False, WARMUP_SECONDS, sargs,
                                             None)
                    check_run(f"{SCALE}/{n}w round {rnd} warm-up", result, raw,
                              FILES[SCALE_PATH])
                    time.sleep(0.5)
                    r = measure(SCALE, "fastproxy", rnd, port, item.proc.pid, upstream.proc.pid,
                                up_port, sargs, (None, None), workers=n)
                finally:
                    stop_and_wait(item)  # before the next one starts
                runs.append(r)
                print(f"  round {rnd} {n} worker(s) {r.rps:8,.0f} req/s  p50 {r.p50_ms:5.2f} ms  "
                      f"p99 {r.p99_ms:6.2f} ms  {r.req_per_cpu_s:7,.0f} req/CPU-s  CPU: proxy "
                      f"{r.proxy_cpu_pct:.0f}% (master + workers), upstream "
                      f"{r.upstream_cpu_pct:.0f}%, wrk {r.wrk_cpu_pct:.0f}%, other "
                      f"{r.other_cpu_pct:.0f}%  upstream reuse {r.upstream_reuse_pct:.2f}%")
    finally:
        stop_and_wait(upstream)
    for n in SCALE_WORKERS:
        note_logs(f"fastproxy ({n}w)", (tmp / f"fastproxy-{n}w" / "fastproxy.log",))
    note_logs("upstream nginx (scale)", (up_dir / "error.log", up_dir / "stdout.log"))
    med = {str(n): medians([r for r in runs if r.workers == n]) for n in SCALE_WORKERS}
    base = str(SCALE_WORKERS[0])
    return {
        "description": SCALE_WHAT, "path": SCALE_PATH,
        "note": scaling_note(os.cpu_count()),
        "pinning": "none (proxy, wrk and upstream all unpinned)",
        "wrk": f"-t{SCALE_THREADS} -c{SCALE_CONNECTIONS} --latency --timeout 5s",
        "upstream_workers": SCALE_UPSTREAM_WORKERS,
        "workers": list(SCALE_WORKERS),
        "order": f"{', '.join(map(str, SCALE_WORKERS))} workers in turn each round, "
                 f"each a fresh fastproxy with a {WARMUP_SECONDS}s warm-up",
        "rounds": args.rounds, "duration_s": args.duration,
        "configs": configs,
        "max_other_cpu_pct": max(r.other_cpu_pct for r in runs),
        "median": med,
        "ratio": {f"{n}w/{base}w": ratios(med[str(n)], med[base]) for n in SCALE_WORKERS[1:]},
        "runs": [asdict(r) for r in runs],
    }


# -- opt-in comparisons: fastproxy with a feature against the same without it ------


@dataclass
class Instance:
    """One of the two fastproxy instances of a comparison."""
    name: str
    on: bool  # the one with the feature
    port: int
    admin_port: int  # 0: no [admin] table
    server: Started
    worker: int = 0


@dataclass(frozen=True)
class Comparison:
    """An opt-in comparison (--waf, --metrics): two fastproxy instances side by side,
    the same but for one feature, pinned like the other cases, in front of one upstream
    nginx, the rounds alternating the order (without, with; with, without; ...)."""
    key: str  # the option (--KEY), the report's JSON key, the name of its upstream
    cases: dict[str, CaseSpec]
    variants: tuple[str, str]  # (without the feature, with it)
    labels: tuple[str, str]  # the variants in the table
    ratio: str  # the ratio's name in the table: "with / without"
    ratio_line: str  # ... in the per-round lines
    title: str  # the report section's heading
    note: str  # what the report section says of the set-up
    adds: str  # the ratio line's µs per request is what {adds} adds
    described: Callable[[], tuple[str, str]]  # the variants, for the JSON report
    conf: Callable[[bool, int], dict[str, Any]]  # fastproxy_conf's extra arguments
    # Before the warm-up, on each instance (after `verify`): what it checked.
    check: Callable[[Instance, Path, Path], str]
    admin: bool = False  # the one with the feature has an [admin] table
    routes: int = 0  # upstream_conf's `routes`
    # Around each case's warm-up, on each instance: before(case, instance) -> state;
    # after(case, instance, state, requests wrk counted) -> what it checked, or None.
    before_warmup: Callable[[str, Instance], Any] | None = None
    after_warmup: Callable[[str, Instance, Any, int], str | None] | None = None
    expected_log: str | None = None  # a log line with this in it is expected


def listening_ports(pid: int) -> set[int]:
    """The TCP ports `pid` has a listening socket on (its fds against /proc/net/tcp*)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)  # the header
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def _waf_check(inst: Instance, www: Path, scratch: Path) -> str:
    # The rules are on in one and off in the other; the browser request passes both.
    expect = 403 if inst.on else 200
    code, _ = http_get(inst.port, WAF_ATTACK, scratch)
    if code != expect:
        raise BenchError(f"{inst.name}: GET {WAF_ATTACK} gave status {code}, expected {expect}")
    browser = tuple(arg for header in BROWSER_HEADERS for arg in ("-H", header))
    code, got = http_get(inst.port, WAF_CASES["waf-browser"][0], scratch, browser)
    if code != 200 or got != FILES["/1k.bin"]:
        raise BenchError(f"{inst.name}: the browser-like GET gave status {code}, {got} bytes "
                         "(expected 200 with the 1 KiB file)")
    return f"GET {WAF_ATTACK} -> {expect}, the browser-like GET -> 200"


def scrape_requests(inst: Instance) -> dict[str, float]:
    """fastproxy_http_requests_total from the instance's admin API, summed per route."""
    url = f"http://127.0.0.1:{inst.admin_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status, text = resp.status, resp.read().decode()
    except OSError as e:
        raise BenchError(f"{inst.name}: GET {url} failed: {e}") from None
    if status != 200:
        raise BenchError(f"{inst.name}: GET {url} gave status {status}")
    counts: dict[str, float] = {}
    for m in re.finditer(r"^fastproxy_http_requests_total\{([^}]*)\}\s+(\S+)$", text, re.M):
        route = re.search(r'route="([^"]*)"', m.group(1))
        label = route.group(1) if route else "?"
        counts[label] = counts.get(label, 0.0) + float(m.group(2))
    return counts


def _metrics_check(inst: Instance, www: Path, scratch: Path) -> str:
    for path in ROTATING["metrics-routes"]:
        code, got = http_get(inst.port, path, scratch)
        if code != 200 or scratch.read_bytes() != (www / "1k.bin").read_bytes():
            raise BenchError(f"{inst.name}: GET {path} gave status {code}, {got} bytes "
                             "(expected 200 with the 1 KiB file)")
    # Only the one with [admin] listens on a second port (its admin process).
    tree = process_tree(inst.server.proc.pid)
    ports = set().union(*(listening_ports(pid) for pid in tree))
    expect = {inst.port, inst.admin_port} if inst.on else {inst.port}
    if ports != expect:
        raise BenchError(f"{inst.name}: its processes {tree} listen on the ports "
                         f"{sorted(ports)}, expected {sorted(expect)}")
    routes = f"GET /r1/1k.bin .. /r{METRICS_ROUTES}/1k.bin -> 200"
    if not inst.on:
        return f"{routes}; no admin port (listens on {inst.port} only)"
    if not sum(scrape_requests(inst).values()):
        raise BenchError(f"{inst.name}: /metrics counts no request after the checks")
    return f"{routes}; admin API on {inst.admin_port} answers /metrics"


def _metrics_before(case: str, inst: Instance) -> dict[str, float] | None:
    return scrape_requests(inst) if inst.on else None


def _metrics_after(case: str, inst: Instance, before: dict[str, float] | None,
                   requests: int) -> str | None:
    """The one with [admin] counted at least the requests wrk saw complete (it also
    counts those it answered that wrk did not wait for); for metrics-routes, on each
    of the routes."""
    if before is None:
        return None
    after = scrape_requests(inst)
    grew = {route: n - before.get(route, 0.0) for route, n in after.items()}
    total, added = sum(after.values()), sum(grew.values())
    if total <= 0 or added < requests:
        raise BenchError(f"{inst.name}: fastproxy_http_requests_total went from "
                         f"{sum(before.values()):.0f} to {total:.0f} over a warm-up of "
                         f"{requests} requests")
    routes = [f"r{i}" for i in range(1, METRICS_ROUTES + 1)] if case in ROTATING else []
    idle = [r for r in routes if grew.get(r, 0.0) < requests / len(routes) / 2]
    if idle:
        raise BenchError(f"{inst.name}: the routes {', '.join(idle)} counted fewer requests "
                         f"than expected over the warm-up: {grew}")
    spread = (f" ({len(routes)} routes, each +{min(grew[r] for r in routes):,.0f} or more)"
              if routes else "")
    return (f"  {inst.name}: fastproxy_http_requests_total {total:,.0f} "
            f"(+{added:,.0f} over the warm-up's {requests:,} requests{spread})")


def _waf_described() -> tuple[str, str]:
    return ("no [waf] table",
            "[waf] with no keys: the default rule sets (" + ", ".join(_default_rule_sets())
            + ")")


WAF = Comparison(
    key="waf", cases=WAF_CASES, variants=WAF_VARIANTS,
    labels=("without [waf]", "with [waf]"), ratio="with / without",
    ratio_line="with / without [waf]", title="fastproxy with [waf] vs without",
    note="[waf] with no keys: the default rule sets.", adds="the WAF",
    described=_waf_described, conf=lambda on, _admin: {"waf": on}, check=_waf_check,
    expected_log="fastproxy.waf: waf blocked ")
METRICS_CMP = Comparison(
    key="metrics", cases=METRICS_CASES, variants=METRICS_VARIANTS,
    labels=("metrics off (no [admin])", "metrics on ([admin])"), ratio="on / off",
    ratio_line="metrics on / off", title="fastproxy with metrics ([admin]) vs without",
    note=f"Metrics on: an [admin] table on a port of its own (no [metrics] table: counting "
         f"on, the default buckets); off: no [admin]. Both have {METRICS_ROUTES} more named "
         "routes before the catch-all one.",
    adds="counting",
    described=lambda: (
        f"no [admin] table (nothing counted); {METRICS_ROUTES} more named routes",
        f"[admin] address = 127.0.0.1:PORT, no [metrics] table (counting on); "
        f"{METRICS_ROUTES} more named routes"),
    conf=lambda on, admin: {"admin_port": admin if on else 0, "routes": METRICS_ROUTES},
    check=_metrics_check, admin=True, routes=METRICS_ROUTES,
    before_warmup=_metrics_before, after_warmup=_metrics_after)
COMPARISONS = {c.key: c for c in (WAF, METRICS_CMP)}
COMPARED_CASES = {case: c for c in COMPARISONS.values() for case in c.cases}


def write_wrk_script(case: str, directory: Path) -> None:
    """The Lua script of a ROTATING case: each connection asks for its paths in turn."""
    paths = ", ".join(json.dumps(path) for path in ROTATING[case])
    script = directory / f"{case}.lua"
    script.write_text(f"""\
-- {case}: the requests go to these paths in turn
local paths = {{ {paths} }}
local requests = {{}}
local i = 0
init = function(args)
  for k, path in ipairs(paths) do requests[k] = wrk.format(nil, path) end
end
request = function()
  i = i % #requests + 1
  return requests[i]
end
""")
    WRK_SCRIPTS[case] = script


def _compare(cmp: Comparison, args: argparse.Namespace, cases: list[str], tmp: Path,
             scratch: Path, cpus: tuple[str | None, str | None],
             ) -> tuple[dict[str, object], int, int]:
    """One comparison's cases: fastproxy with the feature against fastproxy without,
    side by side behind one upstream. Returns (the report, the port and the worker PID
    of the one with it, for --profile)."""
    base, with_it = cmp.variants
    up_name = f"upstream nginx ({cmp.key})"
    up_dir = tmp / f"upstream-{cmp.key}"
    www = up_dir / "www"
    dirs = {name: tmp / name.replace("+", "-") for name in cmp.variants}
    make_dirs(up_dir, www, *dirs.values())
    write_files(www)
    for case in cases:
        if case in ROTATING:
            write_wrk_script(case, tmp)
    up_port = free_port()
    ports = {name: free_port() for name in cmp.variants}
    admin_port = free_port() if cmp.admin else 0
    keep = args.upstream_keepalive
    upstream = start_nginx(up_name, up_dir, upstream_conf(up_dir, up_port, routes=cmp.routes),
                           cpus[1])
    wait_ready(upstream, up_port, scratch)
    verify(up_name, up_port, www, scratch)
    configs = {"upstream_nginx": upstream_conf(Path(f"TMP/upstream-{cmp.key}"), up_port,
                                               routes=cmp.routes)}
    insts: dict[str, Instance] = {}
    for name in cmp.variants:
        on = name == with_it
        configs[name] = fastproxy_conf(ports[name], up_port, keep,
                                       **cmp.conf(on, admin_port if on else 0))
        server = start_fastproxy(dirs[name], configs[name], cpus[0])
        server.name = name
        insts[name] = Instance(name, on, ports[name], admin_port if on else 0, server)
    for name, inst in insts.items():
        wait_ready(inst.server, inst.port, scratch)
        verify(name, inst.port, www, scratch)
        checked = cmp.check(inst, www, scratch)
        tree = process_tree(inst.server.proc.pid)
        inst.server.extra_pids = tuple(tree[1:])
        # The workers hold the proxy's listening socket (an admin process does not).
        workers = [pid for pid in tree[1:] if inst.port in listening_ports(pid)]
        if not workers:
            raise BenchError(f"{name}: no child of {tree[0]} listens on {inst.port}")
        inst.worker = workers[-1]
        others = [pid for pid in tree[1:] if pid not in workers]
        print(f"  {name}: master {tree[0]}, workers {workers}"
              + (f", other children {others}" if others else "")
              + f", CPUs {affinity(inst.worker)}; {checked}")
    upstream.extra_pids = tuple(children(upstream.proc.pid))

    width = max(map(len, cmp.variants))
    runs: list[Run] = []
    summary: dict[str, dict[str, object]] = {}
    for case in cases:
        path, headers, what = cmp.cases[case]
        target = ", ".join(ROTATING[case]) if case in ROTATING else path
        print(f"\n[{case}] {what}: GET {target}"
              + (f" with {len(headers)} -H header fields" if headers else ""))
        for name, inst in insts.items():  # warm-up, not recorded
            state = cmp.before_warmup(case, inst) if cmp.before_warmup else None
            result, raw, _, marks = run_load(case, inst.port, WARMUP_SECONDS, args, cpus[1])
            check_load(f"{case}/{name} warm-up", case, result, raw, marks)
            counted = (cmp.after_warmup(case, inst, state, result.requests)
                       if cmp.after_warmup else None)
            if counted:
                print(counted)
        case_runs: list[Run] = []
        for rnd in range(1, args.rounds + 1):
            order = cmp.variants if rnd % 2 else cmp.variants[::-1]
            for name in order:
                time.sleep(0.5)
                r = measure(case, name, rnd, ports[name], insts[name].server.proc.pid,
                            upstream.proc.pid, up_port, args, cpus)
                case_runs.append(r)
                print(f"  round {rnd} {name:{width}s} {r.rps:8,.0f} req/s  p50 {r.p50_ms:5.2f} "
                      f"ms  p99 {r.p99_ms:6.2f} ms  {r.req_per_cpu_s:7,.0f} req/CPU-s "
                      f"({1e6 / r.req_per_cpu_s:5.1f} µs/req)  CPU: proxy "
                      f"{r.proxy_cpu_pct:.0f}% (sys {r.proxy_kernel_pct:.0f}%), upstream "
                      f"{r.upstream_cpu_pct:.0f}%, wrk {r.wrk_cpu_pct:.0f}%, other "
                      f"{r.other_cpu_pct:.0f}%")
        runs += case_runs
        med = {name: medians([r for r in case_runs if r.proxy == name]) for name in cmp.variants}
        by_round = {(r.round, r.proxy): r for r in case_runs}
        per_round = [{m: round(getattr(by_round[rnd, with_it], m)
                               / getattr(by_round[rnd, base], m), 3)
                      for m in ("rps", "req_per_cpu_s")}
                     for rnd in range(1, args.rounds + 1)]
        round_median = {m: round(statistics.median(x[m] for x in per_round), 3)
                        for m in ("rps", "req_per_cpu_s")}
        print(f"  {cmp.ratio_line}, each round: req/s "
              + " ".join(f"{x['rps']:.3f}" for x in per_round) + "; req per CPU-s "
              + " ".join(f"{x['req_per_cpu_s']:.3f}" for x in per_round)
              + f" (medians {round_median['rps']:.3f}, {round_median['req_per_cpu_s']:.3f})")
        summary[case] = {
            "description": what, "path": path, "headers": list(headers), "median": med,
            "ratio": ratios(med[with_it], med[base]),
            "ratio_by_round": per_round,
            "ratio_by_round_median": round_median,
            f"{cmp.key}_cpu_us_per_request": round(1e6 / med[with_it]["req_per_cpu_s"]
                                                   - 1e6 / med[base]["req_per_cpu_s"], 2),
        }
        if case in ROTATING:
            summary[case]["paths"] = list(ROTATING[case])
    print()
    for name, inst in insts.items():
        log = inst.server.log_path
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if cmp.expected_log is None or cmp.expected_log not in line] \
            if log.exists() else []
        if lines:
            print(f"note: {name} log {log} is not empty:\n" + "\n".join(lines[-5:]))
    note_logs(up_name, (up_dir / "error.log", up_dir / "stdout.log"))
    print()
    described = cmp.described()
    report = {
        "variants": {base: described[0], with_it: described[1]},
        "wrk": f"-t{args.threads} -c{args.connections} --latency --timeout 5s",
        "order": "alternating: without, with in odd rounds; with, without in even ones",
        "rounds": args.rounds, "duration_s": args.duration,
        "configs": configs,
        "max_other_cpu_pct": max(r.other_cpu_pct for r in runs),
        "cases": summary,
        "runs": [asdict(r) for r in runs],
    }
    return report, ports[with_it], insts[with_it].worker


def _default_rule_sets() -> tuple[str, ...]:
    from fastproxy.waf import DEFAULT_RULE_SETS

    return DEFAULT_RULE_SETS


def comparison_table(cmp: Comparison, report: dict[str, object]) -> str:
    lines = [
        "| case | fastproxy | req/s | p50 ms | p99 ms | req per proxy CPU-s "
        "| proxy CPU µs per req | proxy CPU % (kernel share) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cases: dict[str, dict[str, Any]] = report["cases"]  # type: ignore[assignment]
    for case, data in cases.items():
        med = data["median"]
        for name, label in zip(cmp.variants, cmp.labels, strict=True):
            m = med[name]
            lines.append(f"| {case} | {label} | {fmt(m['rps'])} | {fmt(m['p50_ms'])} | "
                         f"{fmt(m['p99_ms'])} | {fmt(m['req_per_cpu_s'])} | "
                         f"{fmt(1e6 / m['req_per_cpu_s'], 1)} | "
                         f"{fmt(m['proxy_cpu_pct'], 0)} ({fmt(m['proxy_kernel_pct'], 0)}) |")
        r = {k: _ratio(v) for k, v in data["ratio"].items()}
        lines.append(f"| {case} | **{cmp.ratio}** | **{r['rps']}** | {r['p50_ms']} | "
                     f"{r['p99_ms']} | **{r['req_per_cpu_s']}** | "
                     f"{data[f'{cmp.key}_cpu_us_per_request']:+.1f} | |")
        by_round = data["ratio_by_round"]
        lo, hi = (f(x["req_per_cpu_s"] for x in by_round) for f in (min, max))
        rm = data["ratio_by_round_median"]
        lines.append(f"| {case} | {cmp.ratio}, each round: median (min-max) | "
                     f"{_ratio(rm['rps'])} | | | {_ratio(rm['req_per_cpu_s'])} "
                     f"({_ratio(lo)}-{_ratio(hi)}) | | |")
    return "\n".join(lines)


def _bench(args: argparse.Namespace, tmp: Path, cpus: tuple[str | None, str | None],
           pinning: str, haproxy: str | None) -> int:
    os.chmod(tmp, 0o755)  # nginx workers may run as an unprivileged user
    scratch = tmp / "check.bin"
    regular = [c for c in args.cases if c != SCALE and c not in COMPARED_CASES]
    scaling = _scaling(args, tmp, scratch) if SCALE in args.cases else None
    summary: dict[str, dict[str, object]] = {}
    runs: list[Run] = []
    configs: dict[str, str] = {}
    fp_ports: dict[str, int] = {}
    fp_worker = 0
    compared_workers: dict[str, int] = {}
    tls_report = None
    if regular:
        summary, runs, configs, fp_ports, fp_worker, tls_report = _regular(
            args, regular, tmp, scratch, cpus, haproxy)
    compared: dict[str, dict[str, object]] = {}
    for key, cmp in COMPARISONS.items():
        cmp_cases = [c for c in args.cases if c in cmp.cases]
        if cmp_cases:
            compared[key], fp_ports[key], compared_workers[key] = _compare(
                cmp, args, cmp_cases, tmp, scratch, cpus)

    stamp = dt.datetime.now().astimezone()
    report: dict[str, object] = {
        "date": stamp.isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(haproxy),
        "pinning": pinning,
        "settings": {
            "rounds": args.rounds, "duration_s": args.duration,
            "warmup_s": WARMUP_SECONDS, "wrk": f"-t{args.threads} -c{args.connections} "
            f"--latency --timeout 5s", "proxies": args.proxies,
            "order": f"{', '.join(args.proxies)} alternating each round",
            "statistic": "median over rounds",
            "nginx_keepalive_requests": KEEPALIVE_REQUESTS,
            "upstream_keepalive": args.upstream_keepalive,
            "haproxy_http_reuse": "always",
            "fastproxy_tls_engine": args.tls_engine,
        },
        "configs": configs,
        "tls": tls_report,
        "max_other_cpu_pct": max((r.other_cpu_pct for r in runs), default=None),
        "cases": summary,
        "runs": [asdict(r) for r in runs],
    }
    if scaling is not None:
        report["scaling"] = scaling
    report.update(compared)
    if regular:
        print(f"## {' vs '.join(args.proxies)} ({stamp:%Y-%m-%d %H:%M}, medians of "
              f"{args.rounds} round(s) x {args.duration}s, wrk -t{args.threads} "
              f"-c{args.connections})\n")
        others = [x for x in ("nginx", "haproxy") if x in args.proxies]
        ratio_text = (f"Ratios: {' and '.join(f'fastproxy / {x}' for x in others)} (req/s and "
                      "req per CPU-s: higher is better for fastproxy; latency: lower is "
                      "better). " if "fastproxy" in args.proxies and others else "")
        print(f"Pinning: {pinning}. {ratio_text}Upstream reuse % = 100 * (1 - new upstream "
              "conns / requests).\n")
        print(table(summary, args.proxies))
        if tls_report is not None:
            print(f"\nTLS: {tls_report['key_type']} certificate, session cache "
                  f"{tls_report['session_cache']}. tls-handshake: req/s = full handshakes per "
                  "second (no request), tls-resume: resumed handshakes per second (one request "
                  f"each); their 'wrk' CPU is the {args.tls_clients} openssl s_time clients'.")
        busiest = max(r.other_cpu_pct for r in runs)
        if busiest > 20:
            print(f"\nwarning: other processes used up to {busiest:.0f}% of a CPU during a run "
                  "(see other_cpu_pct in the JSON): absolute figures are unreliable, the "
                  "ratios and req per CPU-s less so")
    if scaling is not None:
        print(f"\n## fastproxy worker scaling ({stamp:%Y-%m-%d %H:%M}, medians of "
              f"{args.rounds} round(s) x {args.duration}s, wrk -t{SCALE_THREADS} "
              f"-c{SCALE_CONNECTIONS}, upstream nginx with {SCALE_UPSTREAM_WORKERS} workers)\n")
        print(f"{scaling['note']} Each worker count is a fresh fastproxy; proxy CPU is the "
              "master plus all its workers, in % of one CPU.\n")
        print(scaling_table(scaling))
    for key, cmp_report in compared.items():
        cmp = COMPARISONS[key]
        print(f"\n## {cmp.title} ({stamp:%Y-%m-%d %H:%M}, medians of "
              f"{args.rounds} round(s) x {args.duration}s, wrk -t{args.threads} "
              f"-c{args.connections})\n")
        print(f"Pinning: {pinning}. {cmp.note} Ratio: {cmp.ratio} (higher is better; req per "
              "proxy CPU-s is the figure that holds on a busy machine). Proxy CPU µs per req "
              f"= 1e6 / req per proxy CPU-s; on the ratio line, what {cmp.adds} adds.\n")
        print(comparison_table(cmp, cmp_report))
        busiest = float(cmp_report["max_other_cpu_pct"])  # type: ignore[arg-type]
        if busiest > 20:
            print(f"\nwarning: other processes used up to {busiest:.0f}% of a CPU during a run "
                  "(see other_cpu_pct in the JSON): absolute figures are unreliable, the "
                  "ratios and req per CPU-s less so")
    json_path = args.json or HERE / "results" / f"e2e-{stamp:%Y-%m-%d-%H%M%S}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_no_nan(report), indent=2, allow_nan=False) + "\n")
    print(f"\nresults written to {json_path}")

    if args.profile:
        if args.profile_case in COMPARED_CASES:
            key = COMPARED_CASES[args.profile_case].key
            profile_worker(compared_workers[key], fp_ports[key], args.profile, args, cpus)
        else:
            kind = "tls" if args.profile_case in TLS_CASES else "plain"
            profile_worker(fp_worker, fp_ports[kind], args.profile, args, cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
