"""fastproxy.waf: built-in rule sets against their corpora, custom rules, exclusions,
decoding, and the regex safety check (refused patterns, bounded running time)."""

from __future__ import annotations

import json
import re
import re._constants as sre
import re._parser as sre_parse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy import waf
from fastproxy.waf import (
    DEFAULT_RULE_SETS,
    RULE_SETS,
    Condition,
    Rule,
    Verdict,
    Waf,
    check_regex,
    parse_rule,
)

CORPUS = Path(__file__).parent / "waf_corpus"

# A current desktop Chrome navigation.
DEFAULT_HEADERS = [
    ("Host", "www.example.com"),
    ("User-Agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                   "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
               "image/webp,image/apng,*/*;q=0.8"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Sec-Ch-Ua", '"Not_A Brand";v="8", "Chromium";v="120", "Google Chrome";v="120"'),
    ("Sec-Ch-Ua-Platform", '"Windows"'),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Connection", "keep-alive"),
    ("Cookie", "_ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000"),
]
TYPES = {
    "form": "application/x-www-form-urlencoded",
    "json": "application/json",
    "xml": "application/xml",
    "text": "text/plain; charset=utf-8",
    "multipart": "multipart/form-data; boundary=----x",
}


@dataclass(frozen=True)
class Case:
    where: str  # file:line
    method: bytes
    path: bytes
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    rule: str | None

    def inspect(self, guard: Waf) -> Verdict | None:
        return guard.inspect(self.method, self.path, self.query, self.headers, self.body)


def _case(where: str, entry: dict[str, Any]) -> Case:
    headers = [tuple(h) for h in entry.get("headers", DEFAULT_HEADERS)]
    for name, value in entry.get("add_headers", ()):
        for i, (have, _) in enumerate(headers):
            if have.lower() == name.lower():
                headers[i] = (name, value)
                break
        else:
            headers.append((name, value))
    headers.extend(tuple(h) for h in entry.get("extra_headers", ()))
    body = entry.get("body", "")
    kind = entry.get("type")
    if "json" in entry:
        body = json.dumps(entry["json"], ensure_ascii=False)
        kind = kind or "json"
    if kind is not None:
        headers.append(("Content-Type", TYPES.get(kind, kind)))
    return Case(where, entry.get("method", "GET").encode(), entry.get("path", "/").encode(),
                entry.get("query", "").encode(),
                tuple((n.encode(), v.encode()) for n, v in headers), body.encode(),
                entry.get("rule"))


def load(name: str) -> list[Case]:
    cases = []
    for number, line in enumerate((CORPUS / name).read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            cases.append(_case(f"{name}:{number}", json.loads(line)))
    return cases


ATTACKS = [(rule_set, case) for rule_set in RULE_SETS for case in load(f"{rule_set}-attacks.jsonl")]
BENIGN = [case for path in sorted(CORPUS.glob("*-benign.jsonl")) for case in load(path.name)]
ALL_WAF = Waf()


# --------------------------------------------------------------------------
# Corpora


def test_every_set_has_both_corpora_and_a_scope() -> None:
    assert set(DEFAULT_RULE_SETS) == set(RULE_SETS)
    for name, scope in RULE_SETS.items():
        assert scope and "\n" not in scope
        assert (CORPUS / f"{name}-attacks.jsonl").read_text().startswith("#")
        assert (CORPUS / f"{name}-benign.jsonl").read_text().startswith("#")
        assert sum(1 for s, _ in ATTACKS if s == name) >= 15
    assert len(BENIGN) >= 150


@pytest.mark.parametrize(("rule_set", "case"), ATTACKS, ids=[c.where for _, c in ATTACKS])
def test_attack_blocked_by_its_set(rule_set: str, case: Case) -> None:
    verdict = case.inspect(Waf([rule_set]))
    assert verdict is not None, f"{case.where} passed"
    assert (verdict.action, verdict.rule_set) == ("block", rule_set)
    if case.rule is not None:
        assert verdict.rule_id == case.rule, verdict
    assert len(verdict.excerpt) <= 80 and verdict.excerpt.isprintable()
    assert verdict.target.isprintable() and verdict.excerpt.isascii()


@pytest.mark.parametrize(("rule_set", "case"), ATTACKS, ids=[c.where for _, c in ATTACKS])
def test_attack_blocked_by_default_sets(rule_set: str, case: Case) -> None:
    verdict = case.inspect(ALL_WAF)
    assert verdict is not None and verdict.action == "block", case.where


@pytest.mark.parametrize("case", BENIGN, ids=[c.where for c in BENIGN])
def test_benign_passes_every_set(case: Case) -> None:
    guard = Waf()
    assert case.inspect(guard) is None
    assert guard.last_logs == []
    assert case.inspect(guard) is None  # again, with its clean values remembered


# --------------------------------------------------------------------------
# What a verdict says


def test_verdict_names_rule_target_and_excerpt() -> None:
    verdict = Waf().inspect(b"GET", b"/item", b"a=1&id=1%27%20or%20%271%27%3D%271", [])
    assert verdict == Verdict("block", "sqli-tautology", "sqli", "query:id", "1' or '1'='1")


def test_excerpt_is_short_and_escaped() -> None:
    query = b"x=" + b"A" * 300 + b"%3Cscript%3E%01" + b"B" * 300
    verdict = Waf(["xss"]).inspect(b"GET", b"/", query, [])
    assert verdict is not None
    assert len(verdict.excerpt) <= 80 and "<script>" in verdict.excerpt
    assert "\\x01" in verdict.excerpt
    name = "n%0D%0A" + "%3Cscript%3E"
    verdict = Waf(["xss"]).inspect(b"GET", b"/", name.encode() + b"=1", [])
    assert verdict is not None and verdict.target == "query:n\\x0d\\x0a<script>"


def test_rule_order_first_set_wins() -> None:
    query = b"f=../../etc/passwd%3Bcat%20/etc/shadow"
    assert Waf(["traversal", "injection"]).inspect(b"GET", b"/", query, []).rule_set == (
        "traversal")
    assert Waf(["injection", "traversal"]).inspect(b"GET", b"/", query, []).rule_set == (
        "injection")


def test_log_mode_collects_and_goes_on() -> None:
    guard = Waf(["sqli:log", "xss"])
    query = b"a=1%27%20or%20%271%27%3D%271&b=%3Cscript%3E"
    verdict = guard.inspect(b"GET", b"/", query, [])
    assert verdict is not None and verdict.rule_set == "xss"
    assert [v.rule_id for v in guard.last_logs] == ["sqli-tautology"]
    assert guard.last_logs[0].action == "log"
    assert guard.inspect(b"GET", b"/", b"a=%27%20or%201%3D1--", []) is None
    assert [v.action for v in guard.last_logs] == ["log"]
    assert guard.inspect(b"GET", b"/", b"a=1", []) is None and guard.last_logs == []


def test_body_limit() -> None:
    body = b"a=" + b"x" * 100 + b"&b=%3Cscript%3E"
    headers = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    assert Waf().inspect(b"POST", b"/", b"", headers, body) is not None
    assert Waf(body_limit=100).inspect(b"POST", b"/", b"", headers, body) is None
    assert Waf(body_limit=0).inspect(b"POST", b"/", b"", headers, body) is None


def test_truncated_json_is_read_as_text() -> None:
    body = b'{"a": "ok", "b": "\\u003cscript\\u003ealert(1)", "c": "' + b"x" * 9000
    headers = [(b"Content-Type", b"application/json")]
    verdict = Waf().inspect(b"POST", b"/", b"", headers, body)
    assert verdict is not None and verdict.rule_id == "xss-script"
    assert verdict.target == "body"


def test_json_values_named_by_key() -> None:
    body = json.dumps({"user": {"profile": {"bio": "<script>x</script>"}}}).encode()
    verdict = Waf().inspect(b"POST", b"/", b"", [(b"Content-Type", b"application/json")], body)
    assert verdict is not None and verdict.target == "body:bio"


def test_binary_bodies_are_not_read() -> None:
    body = b"<script>alert(1)</script>\x00"
    assert Waf().inspect(b"POST", b"/", b"", [(b"Content-Type", b"image/png")], body) is None
    assert Waf().inspect(b"POST", b"/", b"", [(b"Content-Type", b"text/plain")],
                         body) is not None


# --------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize(("raw", "decoded"), [
    ("%2e%2e%2f", "../"),
    ("%252e%252e%252f", "../"),
    ("%25252e", "%2e"),  # two passes, not more
    ("..%c0%af", "../"),
    ("%c0%ae%c0%ae%5c", "..\\"),
    ("%u002e%u002E%u2215", "..\xe2\x88\x95"),
    ("100%", "100%"),
    ("%zz%4", "%zz%4"),
    ("caf%C3%A9", "caf\xc3\xa9"),
])
def test_decode(raw: str, decoded: str) -> None:
    assert waf._decode(raw) == decoded


def test_plus_is_a_space_in_query_form_and_cookies_only() -> None:
    union = b"1+union+select+2"
    assert Waf(["sqli"]).inspect(b"GET", b"/", b"id=" + union, []) is not None
    assert Waf(["sqli"]).inspect(b"GET", b"/", b"", [(b"Cookie", b"id=" + union)]) is not None
    form = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    assert Waf(["sqli"]).inspect(b"POST", b"/", b"", form, b"id=" + union) is not None
    assert Waf(["sqli"]).inspect(b"GET", b"/a/" + union, b"", []) is None


@pytest.mark.parametrize("cookie", [b"a=.. ; b=1", b"a=..\t;b=1", b"a=%2e%2e ;b=1",
                                    b'a="..";b=1', b"a=.."])
def test_cookie_values_are_read_as_servers_read_them(cookie: bytes) -> None:
    verdict = Waf(["traversal"]).inspect(b"GET", b"/", b"", [(b"Cookie", cookie)])
    assert verdict is not None and verdict.target == "cookie:a"


def test_nul_is_reported_then_removed() -> None:
    query = b"q=%3Cscr%00ipt%3E"
    assert Waf(["control", "xss"]).inspect(b"GET", b"/", query, []).rule_id == "control-nul"
    assert Waf(["xss", "control"]).inspect(b"GET", b"/", query, []).rule_id == "xss-script"


# --------------------------------------------------------------------------
# Exclusions and per-route settings


def test_exclusions() -> None:
    query = b"q=%3Cscript%3E&r=%3Cscript%3E"
    assert Waf(exclusions=["xss-script"]).inspect(b"GET", b"/", query, []) is None
    assert Waf(exclusions=["xss"]).inspect(b"GET", b"/", query, []) is None
    verdict = Waf(exclusions=["xss@query:q"]).inspect(b"GET", b"/", query, [])
    assert verdict is not None and verdict.target == "query:r"
    assert Waf(exclusions=["xss@query"]).inspect(b"GET", b"/", query, []) is None
    assert Waf(exclusions=["*@query:q", "*@query:r"]).inspect(b"GET", b"/", query, []) is None
    headers = [(b"User-Agent", b"<script>x</script>")]
    assert Waf(exclusions=["xss-script@header:User-Agent"]).inspect(
        b"GET", b"/", b"", headers) is None
    assert Waf(exclusions=["xss-script@header"]).inspect(b"GET", b"/", b"", headers) is None
    assert Waf(exclusions=["xss@cookie:q"]).inspect(b"GET", b"/", query, []) is not None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rule_sets": ["sqly"]}, "unknown rule set 'sqly'"),
    ({"rule_sets": ["sqli:warn"]}, "unknown mode 'warn'"),
    ({"rule_sets": ["sqli", "sqli:log"]}, "listed twice"),
    ({"rule_sets": "sqli"}, "not a string"),
    ({"exclusions": ["sqli-unoin"]}, "did you mean 'sqli-union'"),
    ({"exclusions": ["sqli@any"]}, "one of method, path"),
    ({"exclusions": ["sqli@query:"]}, "is not a target"),
    ({"exclusions": ["sqli@path:x"]}, "is not a target"),
    ({"body_limit": -1}, "body_limit"),
    ({"custom_rules": [Rule("sqli-union", (Condition("path", "prefix", "/"),))]},
     "built-in"),
    ({"custom_rules": [Rule("a", (Condition("path", "prefix", "/"),))] * 2}, "twice"),
])
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Waf(**kwargs)


def test_empty_waf_passes_everything() -> None:
    assert Waf([]).inspect(b"TRACE", b"/../etc/passwd", b"", []) is None


# --------------------------------------------------------------------------
# Custom rules


def rule(match: Any, action: str = "block", rule_id: str = "r1") -> Rule:
    return parse_rule({"id": rule_id, "match": match, "action": action}, "waf.rules[0]")


HEADERS = [(b"Host", b"example.com"), (b"User-Agent", b"Mozilla/5.0 Test"),
           (b"Cookie", b"sid=AbC; role=admin"), (b"X-Token", b"%41bc"),
           (b"Content-Type", b"application/x-www-form-urlencoded")]


@pytest.mark.parametrize(("match", "hit"), [
    ({"target": "path", "prefix": "/wp-admin"}, True),
    ({"target": "path", "prefix": "/WP-ADMIN"}, True),
    ({"target": "path", "prefix": "/WP-ADMIN", "case_sensitive": True}, False),
    ({"target": "path", "equals": "/wp-admin/x y"}, True),
    ({"target": "path", "contains": "admin/x"}, True),
    ({"target": "path", "regex": r"^/wp-(admin|login)\b"}, True),
    ({"target": "method", "equals": "post"}, True),
    ({"target": "method", "equals": "post", "case_sensitive": True}, False),
    ({"target": "query", "contains": "page=2&q=a b"}, True),
    ({"target": "query:page", "greater_than": 1}, True),
    ({"target": "query:page", "less_than": 2}, False),
    ({"target": "query:q", "equals": "a b"}, True),
    ({"target": "query:nope", "equals": ""}, False),
    ({"target": "query:q", "greater_than": 2, "length": True}, True),
    ({"target": "query:q", "greater_than": 3, "length": True}, False),
    ({"target": "header:user-agent", "prefix": "mozilla/"}, True),
    ({"target": "header:X-Token", "equals": "%41bc"}, True),
    ({"target": "cookie:role", "equals": "admin"}, True),
    ({"target": "cookie:sid", "equals": "abc"}, True),
    ({"target": "cookie:sid", "equals": "abc", "case_sensitive": True}, False),
    ({"target": "body", "contains": "name=bob smith"}, True),
    ({"target": "body:name", "equals": "bob smith"}, True),
    ({"target": "any", "equals": "bob smith"}, True),
    ({"target": "any", "equals": "admin"}, True),
    ({"target": "any", "equals": "role"}, False),  # names are not values
    ({"target": "body:name", "greater_than": 5}, False),  # not a number
    ([{"target": "path", "prefix": "/wp"}, {"target": "cookie:role", "equals": "admin"}], True),
    ([{"target": "path", "prefix": "/wp"}, {"target": "cookie:role", "equals": "user"}], False),
])
def test_custom_conditions(match: Any, hit: bool) -> None:
    guard = Waf([], [rule(match)])
    verdict = guard.inspect(b"POST", b"/wp-admin/x%20y", b"page=2&q=a+b", HEADERS,
                            b"name=bob+smith")
    assert (verdict is not None) is hit
    if hit:
        assert verdict is not None and (verdict.rule_id, verdict.rule_set) == ("r1", "custom")


def test_custom_rules_come_first_and_allow_skips_built_ins() -> None:
    allow = rule({"target": "path", "prefix": "/admin/sql-console"}, "allow", "console")
    guard = Waf(custom_rules=[allow])
    query = b"q=1%20union%20select%202"
    verdict = guard.inspect(b"GET", b"/admin/sql-console", query, [])
    assert verdict is not None and (verdict.action, verdict.rule_id) == ("allow", "console")
    assert guard.inspect(b"GET", b"/other", query, []).rule_id == "sqli-union"


def test_custom_log_rules_are_collected() -> None:
    first = rule({"target": "path", "prefix": "/"}, "log", "all")
    second = rule({"target": "header:user-agent", "contains": "curl"}, "block", "no-curl")
    guard = Waf([], [first, second])
    assert guard.inspect(b"GET", b"/", b"", [(b"User-Agent", b"curl/8")]).rule_id == "no-curl"
    assert [v.rule_id for v in guard.last_logs] == ["all"]
    assert guard.inspect(b"GET", b"/", b"", []) is None
    assert [v.target for v in guard.last_logs] == ["path"]


def test_custom_rule_exclusion_by_target() -> None:
    block = rule({"target": "any", "contains": "evil"}, "block", "no-evil")
    guard = Waf([], [block], exclusions=["no-evil@cookie:pref"])
    assert guard.inspect(b"GET", b"/", b"", [(b"Cookie", b"pref=evil")]) is None
    assert guard.inspect(b"GET", b"/", b"x=evil", [(b"Cookie", b"pref=evil")]) is not None


@pytest.mark.parametrize(("table", "message"), [
    ({"match": {"target": "path", "prefix": "/"}}, "waf.rules[0].id: required"),
    ({"id": "has space", "match": {"target": "path", "prefix": "/"}}, "waf.rules[0].id"),
    ({"id": "a", "match": {"target": "path", "prefix": "/"}, "action": "deny"},
     "waf.rules[0].action: expected block, log or allow"),
    ({"id": "a", "match": {"target": "path", "prefix": "/"}, "when": 1},
     "waf.rules[0].when: unknown key"),
    ({"id": "a"}, "waf.rules[0].match: required"),
    ({"id": "a", "match": []}, "waf.rules[0].match: required"),
    ({"id": "a", "match": {"target": "paht", "prefix": "/"}}, "waf.rules[0].match.target:"),
    ({"id": "a", "match": {"target": "header", "prefix": "/"}}, "needs a name"),
    ({"id": "a", "match": {"target": "path:x", "prefix": "/"}}, "takes no name"),
    ({"id": "a", "match": {"prefix": "/"}}, "waf.rules[0].match.target: required"),
    ({"id": "a", "match": {"target": "path"}}, "give exactly one of"),
    ({"id": "a", "match": {"target": "path", "prefix": "/", "contains": "x"}},
     "found prefix, contains"),
    ({"id": "a", "match": {"target": "path", "prefxi": "/"}}, "did you mean 'prefix'"),
    ({"id": "a", "match": {"target": "path", "prefix": 3}}, "waf.rules[0].match.prefix"),
    ({"id": "a", "match": {"target": "path", "greater_than": "3"}}, "needs a number"),
    ({"id": "a", "match": {"target": "path", "prefix": "/", "length": True}},
     "length = true goes with"),
    ({"id": "a", "match": {"target": "path", "regex": "(a+)+$"}},
     "waf.rules[0].match.regex: refused"),
    ({"id": "a", "match": {"target": "path", "regex": "(unclosed"}},
     "invalid regular expression"),
    ({"id": "a", "match": [{"target": "path", "prefix": "/"}, {"target": "x", "equals": "y"}]},
     "waf.rules[0].match[1].target"),
])
def test_parse_rule_errors_name_the_field(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rule(table, "waf.rules[0]")


def test_parse_rule_round_trip() -> None:
    parsed = parse_rule({"id": "block-wp-admin", "match": {"target": "path", "prefix": "/wp-admin"},
                         "action": "block", "description": "no WordPress here"}, "waf.rules[3]")
    assert parsed == Rule("block-wp-admin", (Condition("path", "prefix", "/wp-admin"),),
                          "block", "no WordPress here")


# --------------------------------------------------------------------------
# The clean-value cache


def test_clean_values_are_remembered_only_after_a_clean_request() -> None:
    guard = Waf()
    cookie = (b"Cookie", b"theme=dark; x=%27%20or%20%271%27%3D%271")
    assert guard.inspect(b"GET", b"/", b"", [cookie]) is not None
    assert guard._clean == {}
    clean = (b"Cookie", b"theme=dark")
    assert guard.inspect(b"GET", b"/", b"", [clean]) is None
    assert b"theme=dark" in guard._clean
    # a remembered value is still read when something else is found
    verdict = guard.inspect(b"GET", b"/", b"q=%3Cscript%3E", [clean])
    assert verdict is not None and verdict.target == "query:q"
    # nor after a request that only logged
    logging = Waf(["sqli:log"])
    assert logging.inspect(b"GET", b"/", b"", [cookie]) is None and logging.last_logs
    assert logging._clean == {}


def test_clean_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waf, "_CLEAN_ENTRIES", 3)
    guard = Waf()
    for i in range(10):
        guard.inspect(b"GET", b"/", b"", [(b"User-Agent", b"agent/%d" % i)])
        assert len(guard._clean) <= 3


# --------------------------------------------------------------------------
# The glance: what it passes, the full inspection passes too


def _full_only(*args: Any) -> Waf:
    """A Waf that always runs the full inspection."""
    guard = Waf(*args)
    guard._glance_ok = False
    return guard


def _outcome(guard: Waf, case: Case) -> tuple[Verdict | None, list[Verdict]]:
    return case.inspect(guard), list(guard.last_logs)


def _remembered_fields(case: Case) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in case.headers if n.lower() in (b"cookie", b"user-agent", b"referer")]


GLANCE_CONFIGS: list[tuple[Any, ...]] = [
    (), *(([name],) for name in RULE_SETS), ([f"{name}:log" for name in RULE_SETS],),
    (DEFAULT_RULE_SETS, (), ["xss@query", "traversal-dotfile", "scanner-user-agent"]),
]
CORPUS_CASES = [case for _, case in ATTACKS] + BENIGN


@pytest.mark.parametrize("case", CORPUS_CASES, ids=[c.where for c in CORPUS_CASES])
def test_glance_agrees_with_the_full_inspection(case: Case) -> None:
    """Every corpus request, with the Cookie, User-Agent and Referer remembered the way
    a browser's earlier request makes them (so that the glance gets to decide), gets
    the same verdict and logs with the glance as without, twice (the second time the
    glance knows the pieces)."""
    for config in GLANCE_CONFIGS:
        fast = Waf(*config)
        full = _full_only(*config)
        assert fast._glance_ok
        for guard in (fast, full):
            guard.inspect(b"GET", b"/", b"", _remembered_fields(case))
        assert fast._clean == full._clean
        for _ in range(2):
            assert _outcome(fast, case) == _outcome(full, case), (config, case.where)


@pytest.mark.parametrize(("rule_set", "case"), ATTACKS, ids=[c.where for _, c in ATTACKS])
def test_attack_blocked_with_browser_fields_remembered(rule_set: str, case: Case) -> None:
    guard = Waf([rule_set])
    guard.inspect(b"GET", b"/", b"", _remembered_fields(case))
    for _ in range(2):
        verdict = case.inspect(guard)
        assert verdict is not None and verdict.rule_set == rule_set, case.where


BROWSER = [(b"Host", b"shop.example.com"),
           (b"User-Agent", b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                           b"(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"),
           (b"Accept", b"text/html,*/*;q=0.8"), (b"sec-fetch-mode", b"navigate"),
           (b"Cookie", b"session_id=8f3c2a1e; _ga=GA1.1.123.456"),
           (b"Referer", b"https://shop.example.com/search?q=shoes"),
           (b"X-Requested-With", b"XMLHttpRequest")]


@pytest.fixture
def full_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The calls of the full inspection (Waf._inspect), recorded."""
    calls: list[tuple[Any, ...]] = []
    real = Waf._inspect

    def recorded(self: Waf, *args: Any) -> Verdict | None:
        calls.append(args)
        return real(self, *args)

    monkeypatch.setattr(Waf, "_inspect", recorded)
    return calls


def _glance(guard: Waf, full_runs: list[tuple[Any, ...]], *args: Any) -> bool:
    """Did the glance alone pass the request (no full inspection)?"""
    before = len(full_runs)
    verdict = guard.inspect(*args)
    assert verdict is None or len(full_runs) > before
    return len(full_runs) == before


def test_glance_passes_a_known_browser_request_and_remembers_its_pieces(
        full_runs: list[tuple[Any, ...]]) -> None:
    guard = Waf()
    request = (b"GET", b"/item/42", b"q=red+shoes&page=2", BROWSER)
    assert not _glance(guard, full_runs, *request)  # the fields are new: in full
    assert guard._glanced == set() and guard._glanced_query == set()
    assert _glance(guard, full_runs, *request)
    assert guard._glanced == {b"/item/42", b"XMLHttpRequest"}
    assert guard._glanced_query == {b"q=red+shoes&page=2"}
    assert _glance(guard, full_runs, *request)
    assert guard.last_logs == []


@pytest.mark.parametrize(("method", "path", "query", "extra"), [
    (b"TRACE", b"/", b"", []),
    (b"get", b"/", b"", []),
    (b"GET", b"/a%2fb", b"", []),
    (b"GET", b"/a\\b", b"", []),
    (b"GET", b"/a\x00b", b"", []),
    (b"GET", b"/", b"a=%41", []),
    (b"GET", b"/", b"a=\x00", []),
    (b"GET", b"/", b"a=1&b=x*y", []),
    (b"GET", b"/", b"a=union+all", []),
    (b"GET", b"/", b"a=..", []),
    (b"GET", b"/etc/x", b"", []),
    (b"GET", b"/", b"", [(b"Host", b"second.example.com")]),
    (b"GET", b"/", b"", [(b"Content-Length", b"0")]),
    (b"GET", b"/", b"", [(b"Transfer-Encoding", b"chunked")]),
    (b"GET", b"/", b"", [(b"Range", b"bytes=0-1")]),
    (b"GET", b"/", b"", [(b"X-HTTP-Method-Override", b"GET")]),
    (b"GET", b"/", b"", [(b"X-Scanner", b"1")]),
    (b"GET", b"/", b"", [(b"X-Note", b"a=b")]),
    (b"GET", b"/", b"", [(b"X-Note", b"it's")]),
    (b"GET", b"/", b"", [(b"X-Note", b"tom & jerry")]),
    (b"GET", b"/", b"", [(b"Cookie", b"fresh=1")]),
    (b"GET", b"/", b"", [(b"Content-Type", b"text/plain; charset=utf-8")]),
])
def test_glance_leaves_to_the_full_inspection(method: bytes, path: bytes, query: bytes,
                                              extra: list[tuple[bytes, bytes]],
                                              full_runs: list[tuple[Any, ...]]) -> None:
    guard = Waf()
    assert guard.inspect(b"GET", b"/", b"", BROWSER) is None  # remembered
    assert _glance(guard, full_runs, b"GET", b"/", b"", BROWSER)
    assert not _glance(guard, full_runs, method, path, query, [*BROWSER, *extra])
    assert not _glance(guard, full_runs, b"GET", b"/", b"", [(b"Host", b"bad host!")])
    assert not _glance(guard, full_runs, b"GET", b"/", b"", BROWSER, b"a=1")  # a body


def test_glance_is_off_with_custom_rules() -> None:
    rule = Rule("r", (Condition("path", "prefix", "/x"),))
    assert not Waf(custom_rules=[rule])._glance_ok
    assert Waf(["sqli"], exclusions=["sqli-union"])._glance_ok


def test_glanced_pieces_are_bounded(monkeypatch: pytest.MonkeyPatch,
                                    full_runs: list[tuple[Any, ...]]) -> None:
    monkeypatch.setattr(waf, "_GLANCED_ENTRIES", 3)
    guard = Waf()
    for i in range(10):
        assert _glance(guard, full_runs, b"GET", b"/p%d" % i, b"q=%d" % i,
                       [(b"X-A", b"v%d" % i)])
        assert len(guard._glanced) <= 3 and len(guard._glanced_query) <= 3
    long = b"/" + b"a" * waf._GLANCED_PIECE_MAX
    assert _glance(guard, full_runs, b"GET", long, b"", [])
    assert long not in guard._glanced


_PLAIN_PIECES = ["a", "Z", "/", ".", "-", " ", "1", "+", "red", "shoes", "Or", "\xe9", "~"]
_ODD_PIECES = ["..", "/.", "%", "%2e", "%00", "\\", "\x00", "&", "=", "'", "\"", "<", "(",
               ":", ";", "*", "/*", "#", "{", "$", "@", "|", "`", "\n", "UNION", "union",
               "Select", "etc", "ETC/passwd", "env", "bin/", "/dev/", "document.", "system32",
               "web-inf", ".ini", ".ssh", "proc", "order", "\xff", "\xc0\xae", "sqlmap"]
_PIECE = st.lists(st.sampled_from(_PLAIN_PIECES) | st.sampled_from(_PLAIN_PIECES)
                  | st.sampled_from(_ODD_PIECES), max_size=4).map("".join)
_FIELD_NAMES = ["Host", "host", "User-Agent", "user-agent", "Cookie", "COOKIE", "Referer",
                "Accept", "X-Note", "x-note", "Sec-Fetch-Mode", "Content-Type",
                "Content-Length", "Range", "X-HTTP-Method-Override", "X-Scanner",
                "Acunetix-Aspect", "Upgrade-Insecure-Requests"]
_FIELD = st.tuples(st.sampled_from(_FIELD_NAMES),
                   st.sampled_from(["", "shop.example.com", "1", "Mozilla/5.0"]) | _PIECE)
_REQUEST = st.tuples(st.sampled_from(["GET", "GET", "HEAD", "POST", "get", "TRACE", "PROPFIND"]),
                     _PIECE.map(lambda p: "/" + p), _PIECE, st.lists(_FIELD, max_size=5))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_REQUEST, min_size=1, max_size=6),
       st.sampled_from([(), (["sqli:log", "xss", "scanners"],),
                        (DEFAULT_RULE_SETS, (), ["injection@header", "traversal-args"])]))
def test_glance_never_changes_an_outcome(requests: list[Any], config: tuple[Any, ...]) -> None:
    """Request after request (repeats make the memories fill), the glance and the full
    inspection agree on every verdict and log."""
    fast, full = Waf(*config), _full_only(*config)
    for method, path, query, fields in requests:
        headers = [(n.encode(), v.encode("latin-1")) for n, v in fields]
        args = (method.encode(), path.encode("latin-1"), query.encode("latin-1"), headers)
        assert fast.inspect(*args) == full.inspect(*args)
        assert fast.last_logs == full.last_logs
        assert fast._clean == full._clean


# --------------------------------------------------------------------------
# Regex safety

EVIL = [
    r"(a+)+$", r"(a+)+b", r"^(a+)+$", r"(a|a)*b", r"(a|aa)+$", r"(.*)*x", r"(a*)*b", r"(a?)+b",
    r"(\w+\s?)*$", r"^(\w+\s?)*$", r"(x+x+)+y", r"(\d+)*\d+x", r"(a|ab)*c",
    r"\d+\d+x", r"^.*a.*b$", r".*a.*b", r"\w+@", r"[a-z]+\.php", r".*foo",
    r"([a-z0-9-]+\.)+example\.com", r"/api/.*/delete", r"a.{0,200}b", r"a.{0,60}b",
    r"(?P<q>['\"]).*(?P=q)", r"(\w)\1", r"(?=a)a", r"(?!a)b", r"(?<=a)b", r"(?<!a)b",
    r"(?(1)a|b)", "x" * 1100,
]
SAFE = [
    r"x\d+y", r"^/api/.*/delete$", r"^/wp-(admin|login)(/|$)", r"[a-f0-9]{32}",
    r"(\d{1,3}\.){3}\d{1,3}", r"^([a-z0-9-]+\.)+example\.com$", r"\.(php|asp|aspx|jsp)$",
    r"^/api/v[0-9]+/internal", r"curl/[0-9.]+", r"union\s+select", r"admin.*",
    r"sqlmap|nikto|nmap", r"^\s*$", r"foo|foobar", r"a{2,}", r"\bselect\b", r"[<>]",
    r"^[a-z0-9_-]{3,16}$", r"%0[ad]", r"(?i)^bearer\s+\S+$", r"a.{0,8}b", r"^.{0,60}b",
]


@pytest.mark.parametrize("pattern", EVIL)
def test_catastrophic_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        check_regex(pattern)


@pytest.mark.parametrize("pattern", SAFE)
def test_safe_patterns_are_accepted(pattern: str) -> None:
    check_regex(pattern)


def _adversarial(pattern: str, size: int = 65536) -> list[str]:
    """Inputs that make backtracking work: runs of each character the pattern names,
    its literal pieces repeated, all without a way to finish the match."""
    chars = set("a1 x/._-\n") | {c for c in pattern if c.isprintable()}
    pieces = [run for run in re.findall(r"[A-Za-z0-9/._@-]{2,}", pattern)]
    inputs = [c * size for c in sorted(chars)]
    inputs += [(p * (size // len(p) + 1))[:size] for p in pieces]
    inputs += [("a" * 50 + "\n") * (size // 51), "a1" * (size // 2)]
    return inputs


def _worst_time(regex: re.Pattern[str], inputs: list[str]) -> float:
    worst = 0.0
    for text in inputs:
        start = time.perf_counter()
        regex.search(text)
        worst = max(worst, time.perf_counter() - start)
    return worst


@pytest.mark.parametrize("pattern", SAFE)
def test_accepted_patterns_are_bounded_on_64k(pattern: str) -> None:
    regex = waf.compile_checked(pattern)
    assert _worst_time(regex, _adversarial(pattern)) < 0.5


_ATOMS = st.sampled_from(["a", "b", "ab", "[ab]", ".", r"\d", r"\w", r"\s", "x", "[^x]",
                          "(?:a|b)", "(?:a|ab)", "(?:ab|b)", "(?:a|a)"])
_QUANTS = st.sampled_from(["", "", "*", "+", "?", "{1,3}", "{2,}", "{0,40}", "*?", "+?"])


@st.composite
def _patterns(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        if depth < 2 and draw(st.booleans()) and draw(st.booleans()):
            atom = "(?:" + draw(_patterns(depth + 1)) + ")"
        else:
            atom = draw(_ATOMS)
        parts.append(atom + draw(_QUANTS))
    text = "".join(parts)
    if depth == 0:
        text = draw(st.sampled_from(["", "", "^"])) + text + draw(
            st.sampled_from(["", "$", "x", "c", r"\b"]))
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_patterns())
def test_whatever_the_check_accepts_runs_in_bounded_time(pattern: str) -> None:
    try:
        check_regex(pattern)
    except ValueError:
        return
    regex = re.compile(pattern, re.ASCII)
    inputs = ["a" * 65536, "ab" * 32768, "aab" * 21845, "1" * 65536, " " * 65536,
              "x" * 65536, "b" * 65536, "a1 " * 21845, ("a" * 50 + "\n") * 1285]
    assert _worst_time(regex, inputs) < 0.5, pattern


# --------------------------------------------------------------------------
# The built-in patterns: vetted by construction, then measured


def _builtin_patterns() -> list[tuple[str, waf._Pattern]]:
    out = []
    for name in RULE_SETS:
        for one in waf._SETS[name].rules:
            out.extend((one.id, pat) for pat in one.patterns)
    return out


BUILTIN = _builtin_patterns()


def _walk(items: Any, inside_repeat: bool = False) -> None:
    for op, av in items:
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            _lo, hi, sub = av
            assert hi is not sre.MAXREPEAT and hi <= 256, "unbounded repeat"
            _walk(sub, inside_repeat or hi > 1)
        elif op is sre.SUBPATTERN:
            _walk(av[3], inside_repeat)
        elif op is sre.BRANCH:
            for sub in av[1]:
                _walk(sub, inside_repeat)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            assert not inside_repeat
            _walk(av[1], True)
        elif op is sre.LITERAL:
            assert not chr(av).isupper(), "the hays are lower-case"
        else:
            assert op not in (sre.GROUPREF, sre.GROUPREF_EXISTS)


@pytest.mark.parametrize(("rule_id", "pattern"), BUILTIN, ids=[r for r, _ in BUILTIN])
def test_builtin_pattern_shape(rule_id: str, pattern: waf._Pattern) -> None:
    _walk(sre_parse.parse(pattern.source, waf._FLAGS).data)
    if waf._SETS[waf._SET_OF_RULE[rule_id]].suspect is not None:
        return  # sets with their own pre-filter do not use the gates
    runs = waf._literal_runs(pattern.source)
    for gate in pattern.gates:
        assert any(gate in run for run in runs), f"gate {gate!r} is not a literal of it"
    first = pattern.gates[0]
    assert len(first) > 1 or first in waf.SPECIALS


@pytest.mark.parametrize(("rule_id", "pattern"), BUILTIN, ids=[r for r, _ in BUILTIN])
def test_builtin_pattern_bounded_on_64k(rule_id: str, pattern: waf._Pattern) -> None:
    inputs = _adversarial(pattern.source.replace("\\", ""))
    inputs += [(g * 65536)[:65536] for g in pattern.gates]
    assert _worst_time(pattern.regex, inputs) < 0.5


def test_every_set_bounded_on_64k_requests() -> None:
    """The worst case: near misses that open every gate, every set in log mode (so none
    returns early), 64 KiB in the query and in each kind of body."""
    near = ("' o <scrip union selec ../. sleep(x) ${jnd {{7*7} () { ; ca | i & w $(w `i "
            "or 1= onloa= javascript: etc/ proc/ char( concat( @@ <?ph <!entit %{ #{ \n")
    attack = ("1' or '1'='1 <script>x</script> ../../etc/passwd ;cat /etc/passwd ${jndi:x} "
              "{{7*7}} union select 1 <svg onload=x> ")
    guard = Waf([f"{name}:log" for name in RULE_SETS], body_limit=65536)
    for fragment in (near, attack):
        text = (fragment * (65536 // len(fragment) + 1))[:65536]
        bodies = (("application/x-www-form-urlencoded", "a=" + text.replace("&", "%26")),
                  ("application/json", json.dumps({"a": text})), ("text/plain", text))
        for ctype, body in bodies:
            start = time.perf_counter()
            guard.inspect(b"POST", b"/", b"q=" + text[:8000].encode(),
                          [(b"Content-Type", ctype.encode())], body.encode())
            assert time.perf_counter() - start < 0.5, ctype
            assert guard.last_logs


# --------------------------------------------------------------------------
# The gates only skip work: the same verdicts as evaluating every set exactly

_FRAGMENTS = [
    "1' or '1'='1", "1 union select 2", "x'--", "1;drop table t", "' and sleep(5)--",
    "(select 1)", "1 or 2>1", "admin' #", "@@version", "char(65,66,67)", "1' order by 3--",
    "<script>alert(1)</script>", "<svg onload=alert(1)>", "javascript:alert(1)",
    "\"onmouseover=\"x", "';alert(1)//", "&lt;script&gt;", "expression(alert(1))",
    "../../etc/passwd", "..\\..\\win.ini", "/proc/self/environ", "file:///etc/shadow",
    "; cat /etc/passwd", "| id", "$(whoami)", "`id`", "${jndi:ldap://x/a}", "{{7*7}}",
    "() { :; };", "<?php system('id'); ?>", "php://filter/x", "system('id')",
    "<!entity x system \"f\">", "a\x00b", "x\r\nset-cookie: a", "\x1b[31m",
    "O'Reilly", "rock & roll", "select a plan", "a < b and c > d", "50% off", "wait...",
    "https://example.com/?a=1&b=2", "cats; dogs | birds", "{\"a\": [1, 2]}", "eval me",
    "union station", "javascript the good parts", "C:\\Users\\bob", "~/.ssh/config",
]


def _quote(text: str, how: int) -> str:
    from urllib.parse import quote, quote_plus

    if how == 0:
        return quote(text, safe="")
    if how == 1:
        return quote_plus(text, safe="")
    return quote(quote(text, safe=""), safe="")  # double-encoded


def _reference(guard: Waf, method: bytes, path: bytes, query: bytes,
               headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[str, str] | None:
    """Every set evaluated value by value: no gates, no pre-filters, no cache."""
    req = waf._parse(method, path, query, headers, body, True, {})
    for rule_set, _mode in guard._sets:
        found = guard._run_set(rule_set, req)
        if found is not None:
            return found[0], found[1]
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_FRAGMENTS), st.integers(0, 8), st.integers(0, 2)),
                min_size=1, max_size=3),
       st.booleans())
def test_gates_never_change_a_verdict(parts: list[tuple[str, int, int]], again: bool) -> None:
    path, query, body = "/p", [], None
    headers = [("Host", "example.com"), ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64)")]
    cookies = ["_ga=GA1.2.3"]
    for text, where, how in parts:
        # raw control characters never get past the HTTP parser into a header field
        printable = "".join(c if c.isprintable() else " " for c in text)
        if where == 0:
            query.append("q=" + _quote(text, how))
        elif where == 1:
            query.append(_quote(text, how) + "=1")
        elif where == 2:
            cookies.append("c=" + _quote(text, how % 2))
        elif where == 3:
            headers.append(("X-Note", printable))
        elif where == 4:
            headers.append(("Referer", "https://a.example/x?r=" + _quote(text, how)))
        elif where == 5:
            path = "/p/" + _quote(text, 0)
        elif where == 6:
            body = ("application/x-www-form-urlencoded", "f=" + _quote(text, 1))
        elif where == 7:
            body = ("application/json", json.dumps({"k": [text]}))
        else:
            body = ("text/plain", text)
    headers.append(("Cookie", "; ".join(cookies)))
    if body is not None:
        headers.append(("Content-Type", body[0]))
    raw_headers = [(n.encode(), v.encode("utf-8")) for n, v in headers]
    raw_body = body[1].encode("utf-8") if body is not None else b""
    args = (b"POST", path.encode(), "&".join(query).encode(), raw_headers, raw_body)
    guard = Waf()
    if again:  # with the clean values of an earlier clean request remembered
        guard.inspect(b"GET", b"/", b"", raw_headers)
    verdict = guard.inspect(*args)
    expected = _reference(guard, *args)
    assert (None if verdict is None else (verdict.rule_id, verdict.target)) == expected
