"""The live dashboard in a real browser: a proxy with [admin] (and a token) gets a
known mix of traffic; headless Chromium (Debian's, driven by Playwright) opens
/dashboard, is asked for the token, and must show numbers equal to that traffic
and draw every chart with data. A screenshot is left in the test's tmp dir.

Without Chromium or Playwright the test skips, except in CI (CI set), where it
fails: ci/test.sh installs both."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from servers import Origin, ProxyProcess, RawClient, Received, Reply, free_port

TOKEN = "s3cret-dashboard-token"


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def need_browser() -> tuple[Any, str]:
    in_ci = bool(os.environ.get("CI"))
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if in_ci:
            pytest.fail("playwright is not installed (ci/test.sh installs the test extras)")
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if path is None:
        if in_ci:
            pytest.fail("chromium is not installed (ci/test.sh installs Debian's chromium)")
        pytest.skip("no chromium found (apt-get install chromium)")
    return sync_playwright, path


def site(req: Received) -> Reply:
    path = req.target.split("?", 1)[0]
    if path.startswith("/missing"):
        return Reply(404, [("Content-Type", "text/plain")], b"no")
    if path == "/cached":
        return Reply(200, [("Cache-Control", "max-age=600")], b"c" * 50)
    return Reply(200, [("Content-Type", "text/plain")], b"x" * 100)


def start(tmp_path: Path, origin: Origin) -> tuple[ProxyProcess, int]:
    port, admin = free_port(), free_port()
    text = (f'[server]\nworkers = 2\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[admin]\naddress = "127.0.0.1:{admin}"\ntoken = "{TOKEN}"\n'
            '[caches.c]\nmemory = "1m"\n'
            '[limits.tight]\nrate = "1/m"\nburst = 0\nkey = "{header.x-who}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n'
            '[[routes]]\nname = "cached"\nmatch = { path = "/cached" }\nupstream = "app"\n'
            'cache = "c"\n'
            '[[routes]]\nname = "limited"\nmatch = { path = "/limited" }\nupstream = "app"\n'
            'limits = ["tight"]\n'
            '[[routes]]\nname = "api"\nmatch = { path_prefix = "/api" }\nupstream = "app"\n'
            '[[routes]]\nname = "other"\nmatch = { path_prefix = "/" }\nupstream = "app"\n')
    return ProxyProcess(text, tmp_path, port).start(), admin


def send(client: RawClient, path: str, headers: str = "") -> int:
    client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: dash-test/1\r\n{headers}\r\n"
                .encode())
    return client.read_response().status


def api(admin: int, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        body = resp.read()
        kind = resp.getheader("Content-Type", "")
        return resp.status, json.loads(body) if kind.startswith("application/json") else body
    finally:
        conn.close()


def wait_for_sampler(admin: int) -> None:
    """Until the admin process's sampler has taken its starting point and a first
    second after it. Its first reading of the counters is only a starting point:
    requests counted before it are never in a window, so traffic sent before it
    would be missing from the dashboard (a run once saw 188 of 200)."""
    deadline = time.monotonic() + 60
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, doc = api(admin, "/api/stats?window=300")
        assert status == 200, doc
        if doc["covered"] > 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the sampler never started: {doc}")


def wait_for_requests(admin: int, total: int) -> dict[str, Any]:
    """/api/stats once the sampler has seen `total` requests (it samples each second)."""
    deadline = time.monotonic() + 60
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, doc = api(admin, "/api/stats?window=300")
        assert status == 200, doc
        clients = doc["top"]["clients"]
        if doc["totals"]["requests"] >= total and clients and clients[0]["count"] >= total:
            return doc
        time.sleep(0.25)
    raise AssertionError(f"the sampler never saw {total} requests: {doc.get('totals')}")


def test_dashboard_shows_the_traffic_in_chromium(make_origin: Callable[..., Origin],
                                                  tmp_path: Path) -> None:
    sync_playwright, chromium = need_browser()
    origin = make_origin(site, name="app")
    proxy, admin = start(tmp_path, origin)
    try:
        wait_for_sampler(admin)
        statuses: dict[int, int] = {}
        with RawClient(proxy.port) as client:  # keep-alive: one connection
            for i in range(120):
                s = send(client, f"/api/items/{i % 3}")
                statuses[s] = statuses.get(s, 0) + 1
            for i in range(30):
                s = send(client, f"/missing/{i}")
                statuses[s] = statuses.get(s, 0) + 1
            for _ in range(30):
                s = send(client, "/cached")
                statuses[s] = statuses.get(s, 0) + 1
        for _ in range(20):  # a 429 closes nothing, but keep them apart anyway
            with RawClient(proxy.port) as client:
                s = send(client, "/limited", "X-Who: me\r\n")
                statuses[s] = statuses.get(s, 0) + 1
        assert statuses == {200: 151, 404: 30, 429: 19}, statuses

        # The JSON API, as a script uses it.
        status, refused = api(admin, "/api/stats?window=300", token=None)
        assert status == 401, refused
        status, bad = api(admin, "/api/stats?window=abc")
        assert status == 400 and "window" in bad["error"], bad
        doc = wait_for_requests(admin, 200)
        tot = doc["totals"]
        assert tot["requests"] == 200, tot
        assert tot["by_class"] == {"1xx": 0, "2xx": 151, "3xx": 0, "4xx": 49, "5xx": 0}, tot
        assert tot["rate_limited"] == 19
        assert tot["cache"]["hit"] + tot["cache"]["miss"] == 30, tot["cache"]
        assert tot["cache"]["hit"] >= 28, tot["cache"]  # one miss per worker at most
        assert tot["bytes_out"] >= 120 * 100 + 30 * 50, tot
        assert all(v is not None and v > 0 for v in tot["latency_ms"].values()), tot
        assert doc["routes"][0] == {"route": "api", "requests": 120,
                                    "by_class": {"1xx": 0, "2xx": 120, "3xx": 0, "4xx": 0,
                                                 "5xx": 0}}
        assert {r["route"]: r["requests"] for r in doc["routes"]} == {
            "api": 120, "other": 30, "cached": 30, "limited": 20}
        assert sum(sum(v) for v in doc["series"]["requests_per_second"].values()) > 0
        # The top lists (each worker's heavy hitters, summed): exact at this size.
        top = doc["top"]
        assert top["available"] is True
        assert top["clients"] == [{"key": "127.0.0.1", "count": 200}], top
        assert top["user_agents"] == [{"key": "dash-test/1", "count": 200}], top
        paths = {e["key"]: e["count"] for e in top["paths"]}
        assert len(top["paths"]) == 10 and [e["count"] for e in top["paths"][:5]] == \
            [40, 40, 40, 30, 20], top["paths"]
        assert paths["/api/items/0"] == 40 and paths["/cached"] == 30 and \
            paths["/limited"] == 20, paths
        [upstream] = doc["upstreams"]
        assert upstream["name"] == "app" and upstream["servers"][0]["health"] == "up"
        assert 150 <= upstream["servers"][0]["requests"] <= 152  # 120+30+1+cache misses

        # The page itself is served without the token (it holds no data).
        status, html = api(admin, "/dashboard", token=None)
        assert status == 200 and b"<canvas" in html and b"src=" not in html

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                outside: list[str] = []
                page.on("request", lambda r: None if r.url.startswith(
                    f"http://127.0.0.1:{admin}/") else outside.append(r.url))
                page.goto(f"http://127.0.0.1:{admin}/dashboard")
                page.wait_for_selector("#login", state="visible", timeout=60000)
                page.fill("#token", TOKEN)
                page.click("#login button")
                page.wait_for_function(
                    "document.getElementById('total-requests').dataset.value === '200'",
                    timeout=60000)
                values = page.evaluate("""() => {
                    const v = (id) => document.getElementById(id).dataset;
                    const canvases = {};
                    for (const c of document.querySelectorAll('canvas')) {
                      // Coloured pixels below the legend: the data's lines and
                      // dots (the grid and the labels are grey).
                      const g = c.getContext('2d');
                      const top = Math.ceil(20 * (window.devicePixelRatio || 1));
                      const px = g.getImageData(0, top, c.width, c.height - top).data;
                      let ink = 0;
                      for (let i = 0; i < px.length; i += 4) {
                        const hi = Math.max(px[i], px[i + 1], px[i + 2]);
                        const lo = Math.min(px[i], px[i + 1], px[i + 2]);
                        if (px[i + 3] > 128 && hi - lo > 60) ink++;
                      }
                      canvases[c.id] = {points: +c.dataset.points,
                                        nonzero: +c.dataset.nonzero, ink: ink,
                                        width: c.width};
                    }
                    const cells = (id) => [...document.querySelectorAll('#' + id + ' tr')]
                      .slice(1).map((r) => [...r.cells].map((c) => c.textContent));
                    return {total: v('total-requests').value, c2: v('class-2xx').value,
                            c4: v('class-4xx').value, c5: v('class-5xx').value,
                            limited: v('rate-limited').value,
                            hits: v('cache-ratio').hits, lookups: v('cache-ratio').lookups,
                            ratio: document.getElementById('cache-ratio').textContent,
                            latency: document.getElementById('latency').textContent,
                            routes: cells('top-routes'), upstreams: cells('upstreams'),
                            paths: cells('top-paths'), clients: cells('top-clients'),
                            agents: cells('top-agents'),
                            canvases: canvases,
                            token: sessionStorage.getItem('fastproxy-admin-token')};
                }""")
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            finally:
                browser.close()
        assert errors == [], errors
        assert outside == [], f"the page loaded something from elsewhere: {outside}"
        assert values["token"] == TOKEN
        assert (values["total"], values["c2"], values["c4"], values["c5"]) == \
            ("200", "151", "49", "0"), values
        assert values["limited"] == "19"
        assert values["lookups"] == "30" and int(values["hits"]) >= 28, values
        assert values["ratio"].endswith("%") and float(values["ratio"][:-1]) >= 93.0, values
        assert values["latency"].endswith(" ms") and "-" not in values["latency"], values
        assert values["routes"][0][:3] == ["api", "120", "120"], values["routes"]
        assert [r[0] for r in values["routes"]][1:] and \
            {r[0] for r in values["routes"]} == {"api", "other", "cached", "limited"}
        assert values["paths"][:5] == [["/api/items/0", "40"], ["/api/items/1", "40"],
                                       ["/api/items/2", "40"], ["/cached", "30"],
                                       ["/limited", "20"]], values["paths"]
        assert values["clients"] == [["127.0.0.1", "200"]], values["clients"]
        assert values["agents"] == [["dash-test/1", "200"]], values["agents"]
        assert values["upstreams"][0][:3] == ["app", origin.address, "up"], values["upstreams"]
        charts = values["canvases"]
        assert set(charts) == {"chart-requests", "chart-latency", "chart-bytes",
                               "chart-cache", "chart-blocked"}, charts
        for name, c in charts.items():
            assert c["width"] > 0 and c["ink"] > 12, (name, c)  # one dot is ~28
            assert c["points"] > 0 and c["nonzero"] > 0, (name, c)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    finally:
        proxy.stop()
