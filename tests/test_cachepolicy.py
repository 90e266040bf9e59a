"""fastproxy.cachepolicy: the RFC 9111 / 9110 / 9211 / 5861 rules, one or more tests each.

Every test names the section it checks. Times are plain numbers: T0 is the
origin's Date, and the functions under test never read a clock.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy.cachepolicy import (
    DELTA_SECONDS_MAX,
    Freshness,
    Policy,
    RequestDirectives,
    Verdict,
    cache_status,
    client_conditional,
    current_age,
    format_age,
    format_http_date,
    freshens,
    freshness,
    invalidations,
    is_error_status,
    merge_not_modified,
    not_modified_headers,
    parse_cache_control,
    parse_http_date,
    secondary_key,
    serve,
    storable,
    usable_on_error,
    validators,
    vary_names,
)

PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

T0 = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
DATE0 = b"Sun, 06 Nov 1994 08:49:37 GMT"


def hdrs(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]


def fresh_of(*pairs: tuple[str, str], status: int = 200, request_time: float = T0,
             response_time: float = T0, policy: Policy | None = None) -> Freshness:
    return freshness(hdrs(*pairs), status, request_time, response_time,
                     policy if policy is not None else Policy())


def req(*pairs: tuple[str, str]) -> RequestDirectives:
    return RequestDirectives.from_headers(hdrs(*pairs))


def can_store(*response: tuple[str, str], status: int = 200, method: bytes = b"GET",
              request: tuple[tuple[str, str], ...] = (),
              policy: Policy | None = None) -> tuple[bool, str]:
    return storable(method, status, hdrs(*request), hdrs(*response),
                    policy if policy is not None else Policy())


# -- Cache-Control parsing (RFC 9111 §5.2) -------------------------------------------------


def test_cache_control_names_lowercased_values_unquoted_lines_combined() -> None:
    # §5.2: directives are case-insensitive tokens; arguments are token or quoted-string;
    # RFC 9110 §5.3: field lines combine into one list.
    cc = parse_cache_control([b'Max-Age=60, No-Cache="Set-Cookie, X-Foo"',
                              b'PRIVATE, s-maxage="5"'])
    assert cc == {"max-age": "60", "no-cache": "Set-Cookie, X-Foo", "private": None,
                  "s-maxage": "5"}


def test_cache_control_quoted_pair_and_commas_inside_quotes() -> None:
    # RFC 9110 §5.6.4: quoted-pair unescapes; a comma inside quotes is not a separator.
    cc = parse_cache_control([b'ext="a\\"b\\\\c, d", max-age=1'])
    assert cc == {"ext": 'a"b\\c, d', "max-age": "1"}


def test_cache_control_unknown_directives_kept_and_empty_members_ignored() -> None:
    # §5.2.3: unknown directives are ignored by the cache, but kept by the parser.
    assert parse_cache_control([b" , community=\"UCI\",, immutable ,"]) == {
        "community": "UCI", "immutable": None}


def test_cache_control_repeated_directive() -> None:
    # §4.2.1: repeated directives: first occurrence or stale; conflicting ones count as invalid.
    assert parse_cache_control([b"max-age=5, max-age=5"]) == {"max-age": "5"}
    assert parse_cache_control([b"max-age=5", b"max-age=10"]) == {"max-age": ""}
    assert parse_cache_control([b"max-age=5, max-age=10, max-age=5"]) == {"max-age": ""}
    assert fresh_of(("Cache-Control", "max-age=60, max-age=120")).lifetime == 0


def test_cache_control_is_strict_about_argument_syntax() -> None:
    # §5.2 ABNF: token [ "=" ( token / quoted-string ) ], no whitespace around "=".
    assert parse_cache_control([b"max-age = 60"]) == {"max-age": None}
    assert parse_cache_control([b"max-age= 60"]) == {"max-age": " 60"}
    assert parse_cache_control([b"max-age=60 30"]) == {"max-age": "60 30"}
    assert parse_cache_control([b'max-age="60'])["max-age"] == '"60'
    assert parse_cache_control([b'no-cache="a"junk'])["no-cache"] == '"a"junk'
    # A directive with trailing junk is still present; a member not starting with a token is not.
    assert parse_cache_control([b'no-store junk, "quoted", =5, \xff\xfe']) == {"no-store": None}
    for value in (b"max-age = 60", b"max-age= 60", b"max-age=60 30", b"max-age=1.5",
                  b"max-age=-1", b"max-age=+5", b"max-age=", b"max-age"):
        assert fresh_of(("Cache-Control", value.decode())).lifetime == 0, value


def test_delta_seconds_overflow_is_clamped_to_2_31() -> None:
    # §1.2.2: a value too large to represent is taken as 2147483648.
    assert fresh_of(("Cache-Control", "max-age=2147483649")).lifetime == DELTA_SECONDS_MAX
    assert fresh_of(("Cache-Control", "max-age=" + "9" * 5000)).lifetime == DELTA_SECONDS_MAX
    assert fresh_of(("Cache-Control", "max-age=000000000000042")).lifetime == 42
    assert fresh_of(("Cache-Control", 'max-age="42"')).lifetime == 42  # §5.2: accept both forms
    assert fresh_of(("Cache-Control", "max-age=\u00b2")).lifetime == 0  # isdigit(), not DIGIT


@PROPERTY
@given(st.lists(st.binary(max_size=80), max_size=4))
def test_cache_control_parser_never_raises(lines: list[bytes]) -> None:
    cc = parse_cache_control(lines)
    for name, value in cc.items():
        assert name and name == name.lower()
        assert re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9a-z]+", name)
        assert value is None or isinstance(value, str)


TOKEN_ALPHABET = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TOKEN_ALPHABET, min_size=1, max_size=12)
quotable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                 blacklist_characters="\x7f") | st.just("\t"), max_size=12)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@PROPERTY
@given(st.dictionaries(tokens.map(str.lower), st.none() | tokens | quotable, max_size=8),
       st.data())
def test_cache_control_round_trip(directives: dict[str, str | None], data: st.DataObject) -> None:
    members = []
    for name, value in directives.items():
        shown = data.draw(st.sampled_from([name, name.upper(), name.title()]))
        if value is None:
            members.append(shown)
        elif re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value) and data.draw(st.booleans()):
            members.append(f"{shown}={value}")
        else:
            members.append(f"{shown}={quote(value)}")
    lines: list[bytes] = []
    line: list[str] = []
    for member in members:
        line.append(member)
        if data.draw(st.booleans()):
            separator = data.draw(st.sampled_from([", ", ",", " ,\t"]))
            lines.append(separator.join(line).encode("latin-1"))
            line = []
    if line:
        lines.append(", ".join(line).encode("latin-1"))
    assert parse_cache_control(lines) == directives


# -- HTTP-date (RFC 9110 §5.6.7, RFC 9111 §4.2) ------------------------------------------


def test_http_date_three_formats() -> None:
    # RFC 9110 §5.6.7: recipients MUST accept IMF-fixdate, rfc850-date and asctime-date.
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == T0
    assert parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == T0
    assert parse_http_date(b"Sun Nov  6 08:49:37 1994") == T0
    assert parse_http_date(b"Sun Nov 16 08:49:37 1994") == T0 + 10 * 86400


def test_http_date_case_insensitive_and_trimmed() -> None:
    # RFC 9111 §4.2: a cache SHOULD match dates case-insensitively.
    assert parse_http_date(b"  sun, 06 NOV 1994 08:49:37 gmt\t") == T0


@pytest.mark.parametrize("value", [
    b"Sun, 06 Nov 1994 08:49:37 UTC",  # RFC 9111 §4.2: only GMT
    b"Sun, 06 Nov 1994 08:49:37 +0000",
    b"Sun, 6 Nov 1994 08:49:37 GMT",  # day is 2DIGIT
    b"Sun, 30 Feb 1994 08:49:37 GMT",
    b"Sun, 06 Nov 1994 24:00:00 GMT",
    b"Sun, 06 Nov 1994 08:60:00 GMT",
    b"Sun, 06 Foo 1994 08:49:37 GMT",
    b"Sun, 06 Nov 0000 08:49:37 GMT",
    b"0", b"", b"-1", b"yesterday",
    b"Sun, 06 Nov 1994 08:49:37 GMT junk",
])
def test_http_date_invalid(value: bytes) -> None:
    assert parse_http_date(value) is None


def test_http_date_leap_second_accepted() -> None:
    # RFC 9110 §5.6.7: second is 00-60 (leap second).
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:60 GMT") == T0 + 23


def year_of(timestamp: float | None) -> int:
    assert timestamp is not None
    return int(format_http_date(timestamp)[12:16])


def test_rfc850_two_digit_year_within_fifty_years() -> None:
    # RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is in the past century.
    now_2024 = float(parse_http_date(b"Mon, 01 Jan 2024 00:00:00 GMT") or 0)
    now_2099 = float(parse_http_date(b"Thu, 01 Jan 2099 00:00:00 GMT") or 0)
    assert year_of(parse_http_date(b"Friday, 01-Jan-99 00:00:00 GMT", now_2024)) == 1999
    assert year_of(parse_http_date(b"Friday, 01-Jan-30 00:00:00 GMT", now_2024)) == 2030
    assert year_of(parse_http_date(b"Friday, 01-Jan-00 00:00:00 GMT", now_2099)) == 2100
    assert year_of(parse_http_date(b"Friday, 01-Jan-70 00:00:00 GMT")) == 1970
    assert year_of(parse_http_date(b"Friday, 01-Jan-69 00:00:00 GMT")) == 2069


def test_format_http_date() -> None:
    # RFC 9110 §5.6.7: IMF-fixdate; RFC 9111 §4.2: round down to the resolution.
    assert format_http_date(T0) == DATE0
    assert format_http_date(T0 + 0.999) == DATE0
    assert format_http_date(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"


@PROPERTY
@given(st.integers(min_value=-62135596800, max_value=253402300799))
def test_http_date_round_trip(timestamp: int) -> None:
    assert parse_http_date(format_http_date(timestamp)) == timestamp


def test_format_age() -> None:
    # RFC 9111 §5.1: Age is delta-seconds.
    assert format_age(12.9) == b"12"
    assert format_age(-3) == b"0"
    assert format_age(1e12) == b"2147483648"


# -- request directives (RFC 9111 §5.2.1, §5.4; RFC 5861 §4) -------------------------------


def test_request_directives() -> None:
    r = req(("Cache-Control", "max-age=5, min-fresh=7, only-if-cached, no-store, stale-if-error=9"))
    assert (r.max_age, r.min_fresh, r.only_if_cached, r.no_store, r.stale_if_error) == (
        5, 7, True, True, 9)
    assert not r.no_cache and r.max_stale is None


def test_request_max_stale_forms() -> None:
    # §5.2.1.2: max-stale without a value accepts any staleness.
    assert req(("Cache-Control", "max-stale")).max_stale == math.inf
    assert req(("Cache-Control", "max-stale=30")).max_stale == 30
    # An invalid argument grants nothing.
    assert req(("Cache-Control", "max-stale=abc")).max_stale is None
    assert req(("Cache-Control", "max-age=abc")).max_age is None


def test_pragma_no_cache_only_without_cache_control() -> None:
    # RFC 7234 §5.4 (Pragma deprecated by RFC 9111 §5.4): Pragma is ignored when
    # Cache-Control is present.
    only_pragma = req(("Pragma", "no-cache"))
    assert only_pragma.no_cache and only_pragma.pragma_no_cache
    assert req(("pragma", "foo, No-Cache")).no_cache
    assert not req(("Cache-Control", "max-age=5"), ("Pragma", "no-cache")).no_cache
    assert not req(("Pragma", "no-cachex")).no_cache
    assert req(("Cache-Control", "no-cache")).no_cache


# -- storing (RFC 9111 §3) ----------------------------------------------------------------


def test_storable_explicit_freshness() -> None:
    assert can_store(("Cache-Control", "max-age=60")) == (True, "explicit freshness (max-age)")
    assert can_store(("Cache-Control", "s-maxage=60")) == (True, "explicit freshness (s-maxage)")
    assert can_store(("Expires", "0")) == (True, "explicit freshness (Expires)")
    # §3: any final status with explicit freshness, even one not heuristically cacheable.
    assert can_store(("Cache-Control", "max-age=60"), status=500)[0]
    assert can_store(("Cache-Control", "max-age=60"), status=599)[0]


def test_storable_only_get() -> None:
    # §3: the method must be understood; HEAD is answered from a stored GET by the caller.
    for method in (b"HEAD", b"POST", b"get", b"PUT"):
        ok, reason = can_store(("Cache-Control", "max-age=60"), method=method)
        assert not ok and reason.startswith("method ")


def test_storable_final_status_only() -> None:
    # §3: the status code must be final.
    assert can_store(("Cache-Control", "max-age=60"), status=103) == (
        False, "status 103 is not final")


def test_storable_never_partial_or_304() -> None:
    # §3 / §3.3: 206 and Content-Range are not stored as full responses; 304 is not stored.
    assert not can_store(("Cache-Control", "max-age=60"), status=206)[0]
    assert not can_store(("Cache-Control", "max-age=60"), ("Content-Range", "bytes 0-1/2"))[0]
    assert not can_store(("Cache-Control", "max-age=60"), status=304)[0]


def test_storable_no_store() -> None:
    # §5.2.2.5 / §5.2.1.5: no-store in the response or the request.
    assert can_store(("Cache-Control", "max-age=60, no-store")) == (False, "response no-store")
    assert can_store(("Cache-Control", "max-age=60"),
                     request=(("Cache-Control", "no-store"),)) == (False, "request no-store")


def test_storable_must_understand() -> None:
    # §3, §5.2.2.3: must-understand with an understood status overrides no-store;
    # with an unknown status the response is not stored.
    assert can_store(("Cache-Control", "max-age=60, must-understand, no-store"))[0]
    ok, reason = can_store(("Cache-Control", "max-age=60, must-understand, no-store"), status=599)
    assert not ok and "must-understand" in reason
    assert not can_store(("Cache-Control", "max-age=60, must-understand"), status=299)[0]


def test_storable_private_in_both_forms() -> None:
    # §5.2.2.7: a shared cache MUST NOT store private; the qualified form is treated alike.
    assert can_store(("Cache-Control", "max-age=60, private")) == (False, "private")
    assert can_store(("Cache-Control", 'max-age=60, private="set-cookie"')) == (False, "private")


@pytest.mark.parametrize("directive, ok", [
    ("max-age=60", False), ("public, max-age=60", True), ("s-maxage=60", True),
    ("max-age=60, must-revalidate", True), ("max-age=60, proxy-revalidate", False),
])
def test_storable_authorization(directive: str, ok: bool) -> None:
    # §3.5: with Authorization, only must-revalidate, public or s-maxage allow storing.
    result = can_store(("Cache-Control", directive), request=(("Authorization", "Basic eDp5"),))
    assert result[0] is ok


def test_storable_vary_star() -> None:
    # §4.1: Vary: * never matches, so it is not stored.
    assert can_store(("Cache-Control", "max-age=60"), ("Vary", "accept, *")) == (False, "Vary: *")
    assert can_store(("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding"))[0]


def test_storable_set_cookie_by_policy() -> None:
    # §7.3: Set-Cookie does not prevent caching; the policy decides (off like nginx/Varnish).
    assert can_store(("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")) == (
        False, "Set-Cookie")
    assert can_store(("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b"),
                     policy=Policy(store_set_cookie=True))[0]


def test_storable_max_object_size() -> None:
    policy = Policy(max_object_size=100)
    assert can_store(("Cache-Control", "max-age=60"), ("Content-Length", "100"), policy=policy)[0]
    ok, reason = can_store(("Cache-Control", "max-age=60"), ("Content-Length", "101"),
                           policy=policy)
    assert not ok and "max_object_size" in reason


def test_storable_without_explicit_freshness() -> None:
    # §3 / §4.2.2: heuristically cacheable status or public, else not.
    assert can_store(("Last-Modified", DATE0.decode()), ("Date", DATE0.decode())) == (
        True, "heuristically cacheable status 200")
    assert can_store(("ETag", '"x"'), status=404) == (True, "heuristically cacheable status 404")
    assert can_store(("Cache-Control", "public"), ("ETag", '"x"'), status=302) == (True, "public")
    ok, reason = can_store(("ETag", '"x"'), status=302)
    assert not ok and "not heuristically cacheable" in reason
    # Nothing to reuse: no lifetime, no heuristic input, no validator.
    assert not can_store(("Content-Type", "text/plain"))[0]
    # §5.2.2.4: no-cache responses are storable (and always revalidated).
    assert can_store(("Cache-Control", "no-cache"), ("ETag", '"x"'))[0]


def test_storable_default_ttl_for_any_listed_status() -> None:
    policy = Policy(default_ttl_by_status={302: 60})
    assert can_store(status=302, policy=policy) == (True, "default_ttl for status 302")
    assert not can_store(status=302)[0]


# -- freshness lifetime (RFC 9111 §4.2.1, §4.2.2, §5.3) -------------------------------------


def test_lifetime_precedence() -> None:
    # §4.2.1: s-maxage (shared cache), then max-age, then Expires - Date.
    expires = format_http_date(T0 + 300).decode()
    all_three = fresh_of(("Date", DATE0.decode()), ("Expires", expires),
                         ("Cache-Control", "max-age=60, s-maxage=120"))
    assert (all_three.lifetime, all_three.source) == (120, "s-maxage")
    two = fresh_of(("Date", DATE0.decode()), ("Expires", expires), ("Cache-Control", "max-age=60"))
    assert (two.lifetime, two.source) == (60, "max-age")
    one = fresh_of(("Date", DATE0.decode()), ("Expires", expires))
    assert (one.lifetime, one.source) == (300, "expires")


def test_expires_without_date_uses_arrival_time() -> None:
    # §4.2.1 / RFC 9110 §6.6.1: without Date, the time the response was received.
    fresh = fresh_of(("Expires", format_http_date(T0 + 300).decode()), response_time=T0 + 100)
    assert fresh.lifetime == 200


def test_invalid_or_past_expires_is_stale() -> None:
    # §5.3: invalid dates, especially "0", are in the past; §4.2.1: conflicting values -> stale.
    assert fresh_of(("Date", DATE0.decode()), ("Expires", "0")).lifetime == 0
    assert fresh_of(("Date", DATE0.decode()),
                    ("Expires", format_http_date(T0 - 10).decode())).lifetime == 0
    conflicting = fresh_of(("Date", DATE0.decode()),
                           ("Expires", format_http_date(T0 + 10).decode()),
                           ("Expires", format_http_date(T0 + 20).decode()))
    assert conflicting.lifetime == 0
    # Invalid freshness is still explicit: no heuristic on top (§4.2.2).
    assert fresh_of(("Expires", "0"), ("Last-Modified", format_http_date(T0 - 1000).decode()),
                    ("Date", DATE0.decode())).source == "expires"


def test_invalid_max_age_is_stale_not_heuristic() -> None:
    # §4.2.1: invalid freshness information -> stale; §4.2.2: no heuristic when explicit.
    fresh = fresh_of(("Cache-Control", "max-age=soon"), ("Date", DATE0.decode()),
                     ("Last-Modified", format_http_date(T0 - 10000).decode()))
    assert (fresh.lifetime, fresh.source) == (0, "max-age")
    assert "invalid" in fresh.lifetime_detail
    assert fresh_of(("Cache-Control", "s-maxage=x, max-age=60")).lifetime == 0


def test_heuristic_fraction_of_last_modified_interval() -> None:
    # §4.2.2: a fraction (10%) of the time since Last-Modified, capped.
    lm = format_http_date(T0 - 10000).decode()
    fresh = fresh_of(("Date", DATE0.decode()), ("Last-Modified", lm))
    assert (fresh.lifetime, fresh.source) == (1000, "heuristic")
    assert fresh_of(("Date", DATE0.decode()), ("Last-Modified", lm),
                    policy=Policy(heuristic_fraction=0.5)).lifetime == 5000
    assert fresh_of(("Date", DATE0.decode()), ("Last-Modified", lm),
                    policy=Policy(heuristic_max=60)).lifetime == 60
    old = format_http_date(T0 - 100 * 86400).decode()
    assert fresh_of(("Date", DATE0.decode()), ("Last-Modified", old)).lifetime == 86400


def test_heuristic_only_for_heuristically_cacheable_or_public() -> None:
    # §4.2.2 / RFC 9110 §15.1 / §5.2.2.9.
    lm = format_http_date(T0 - 10000).decode()
    assert fresh_of(("Date", DATE0.decode()), ("Last-Modified", lm), status=302).lifetime == 0
    public = fresh_of(("Date", DATE0.decode()), ("Last-Modified", lm),
                      ("Cache-Control", "public"), status=302)
    assert (public.lifetime, public.source) == (1000, "heuristic")
    for status in (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501):
        assert fresh_of(("Date", DATE0.decode()), ("Last-Modified", lm),
                        status=status).lifetime == 1000
    none = fresh_of(("Date", DATE0.decode()))
    assert (none.lifetime, none.source) == (0, "none")


def test_default_ttl_beats_heuristic_not_explicit() -> None:
    policy = Policy(default_ttl_by_status={200: 30, 404: 5})
    lm = format_http_date(T0 - 10000).decode()
    by_default = fresh_of(("Date", DATE0.decode()), ("Last-Modified", lm), policy=policy)
    assert (by_default.lifetime, by_default.source) == (30, "default_ttl")
    assert fresh_of(("Cache-Control", "max-age=0"), policy=policy).lifetime == 0
    assert fresh_of(status=404, policy=policy).lifetime == 5


# -- age (RFC 9111 §4.2.3, §5.1) ---------------------------------------------------------


def test_corrected_initial_age_uses_age_plus_response_delay() -> None:
    # §4.2.3: corrected_initial_age = max(apparent_age, age_value + response_delay).
    fresh = fresh_of(("Date", DATE0.decode()), ("Age", "10"), ("Cache-Control", "max-age=60"),
                     request_time=T0 + 1, response_time=T0 + 3)
    assert (fresh.apparent_age, fresh.response_delay, fresh.age_value) == (3, 2, 10)
    assert fresh.corrected_initial_age == 12


def test_corrected_initial_age_uses_apparent_age_when_larger() -> None:
    fresh = fresh_of(("Date", format_http_date(T0 - 100).decode()), ("Age", "5"),
                     request_time=T0 - 1, response_time=T0)
    assert fresh.corrected_initial_age == 100


def test_apparent_age_never_negative() -> None:
    # §4.2.3: a Date in the future gives apparent_age 0.
    fresh = fresh_of(("Date", format_http_date(T0 + 500).decode()), response_time=T0)
    assert fresh.apparent_age == 0 and fresh.corrected_initial_age == 0


def test_age_field_first_member_invalid_ignored() -> None:
    # §5.1: first member of a list; an invalid value is ignored.
    base = ("Date", DATE0.decode())
    assert fresh_of(base, ("Age", "5, 7")).age_value == 5
    assert fresh_of(base, ("Age", "5"), ("Age", "9")).age_value == 5
    invalid = fresh_of(base, ("Age", "-5"))
    assert invalid.age_value == 0 and "invalid Age ignored" in invalid.notes
    assert fresh_of(base, ("Age", "99999999999")).age_value == DELTA_SECONDS_MAX


def test_missing_date_uses_arrival_time() -> None:
    # RFC 9110 §6.6.1: without Date, the arrival time stands in.
    fresh = fresh_of(("Cache-Control", "max-age=60"), response_time=T0 + 50)
    assert fresh.apparent_age == 0 and "no valid Date: arrival time used" in fresh.notes


def test_current_age() -> None:
    # §4.2.3: current_age = corrected_initial_age + (now - response_time).
    fresh = fresh_of(("Date", DATE0.decode()), ("Age", "10"), response_time=T0)
    assert current_age(fresh, T0, T0 + 5) == 15
    assert current_age(fresh, T0, T0 - 5) == 10  # the clock went back: no resident time


@PROPERTY
@given(st.floats(0, 1e6), st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.floats(-1e6, 1e6),
       st.integers(0, 10**10), st.floats(-1e7, 1e7), st.floats(0, 1e7))
def test_age_math_monotonic_and_never_negative(
        date_offset: float, request_offset: float, response_offset: float, now_offset: float,
        age: int, now2_delta: float, step: float) -> None:
    response_time = T0 + response_offset
    fresh = fresh_of(("Date", format_http_date(T0 - date_offset).decode()), ("Age", str(age)),
                     request_time=T0 + request_offset, response_time=response_time)
    assert fresh.corrected_initial_age >= 0
    now = response_time + now2_delta
    first = current_age(fresh, response_time, now)
    assert first >= 0
    assert current_age(fresh, response_time, now + step) >= first


# -- flags, RFC 5861 and explain (RFC 9111 §5.2.2) ------------------------------------------


def test_must_revalidate_flags() -> None:
    # §5.2.2.2, §5.2.2.8, §5.2.2.10: s-maxage incorporates proxy-revalidate.
    assert fresh_of(("Cache-Control", "max-age=5, must-revalidate")).revalidate_directive == (
        "must-revalidate")
    assert fresh_of(("Cache-Control", "max-age=5, proxy-revalidate")).must_revalidate
    s_maxage = fresh_of(("Cache-Control", "s-maxage=5"))
    assert s_maxage.must_revalidate and "s-maxage" in s_maxage.revalidate_directive
    assert not fresh_of(("Cache-Control", "max-age=5")).must_revalidate
    assert fresh_of(("Cache-Control", 'max-age=5, no-cache="x"')).no_cache


def test_stale_extensions_from_response_or_policy() -> None:
    # RFC 5861 §3, §4.
    fresh = fresh_of(("Cache-Control", "max-age=5, stale-while-revalidate=30, stale-if-error=600"))
    assert (fresh.stale_while_revalidate, fresh.stale_if_error) == (30, 600)
    policy = Policy(stale_while_revalidate=10, stale_if_error=60)
    by_policy = fresh_of(("Cache-Control", "max-age=5"), policy=policy)
    assert (by_policy.stale_while_revalidate, by_policy.stale_if_error) == (10, 60)
    invalid = fresh_of(("Cache-Control", "max-age=5, stale-while-revalidate=x"), policy=policy)
    assert invalid.stale_while_revalidate == 10
    assert any("invalid" in note for note in invalid.notes)


def test_describe_explains_itself() -> None:
    fresh = fresh_of(("Date", DATE0.decode()), ("Age", "10"), ("Cache-Control", "max-age=60"),
                     response_time=T0)
    assert fresh.describe(T0, T0 + 5) == [
        "max-age=60 from Cache-Control", "Age: 10 received", "age on arrival 10 s",
        "stored 5 s ago", "45 s left"]
    assert fresh.describe(T0, T0 + 70)[-1] == "stale for 20 s"
    strict = fresh_of(("Cache-Control", "s-maxage=5, no-cache"))
    assert "s-maxage (implies proxy-revalidate): never served stale" in strict.describe()
    assert "no-cache: revalidated on every use" in strict.describe()


# -- serving (RFC 9111 §4, §4.2.4, §5.2.1; RFC 5861) --------------------------------------


def stored(directives: str, age: str | None = None) -> Freshness:
    pairs = [("Date", DATE0.decode()), ("Cache-Control", directives)]
    if age is not None:
        pairs.append(("Age", age))
    return fresh_of(*pairs, response_time=T0)


def test_serve_fresh_until_age_reaches_lifetime() -> None:
    # §4.2: response_is_fresh = (freshness_lifetime > current_age).
    fresh = stored("max-age=60")
    decision = serve(fresh, T0, T0 + 59, RequestDirectives())
    assert (decision.verdict, decision.age, decision.ttl) == (Verdict.FRESH, 59, 1)
    at_lifetime = serve(fresh, T0, T0 + 60, RequestDirectives())
    assert at_lifetime.verdict is Verdict.REVALIDATE and at_lifetime.ttl == 0
    assert serve(stored("max-age=60", age="30"), T0, T0 + 30, RequestDirectives()).verdict is (
        Verdict.REVALIDATE)


def test_serve_response_no_cache_always_revalidates() -> None:
    # §4, §5.2.2.4: not used without successful validation, even when fresh.
    decision = serve(stored("max-age=600, no-cache"), T0, T0 + 1,
                     req(("Cache-Control", "max-stale")))
    assert decision.verdict is Verdict.REVALIDATE and decision.reason == "response no-cache"


def test_serve_request_no_cache() -> None:
    # §5.2.1.4, and the policy knob like Varnish.
    fresh = stored("max-age=600")
    assert serve(fresh, T0, T0 + 1, req(("Cache-Control", "no-cache"))).verdict is (
        Verdict.REVALIDATE)
    assert serve(fresh, T0, T0 + 1, req(("Pragma", "no-cache"))).reason == (
        "request Pragma: no-cache")
    ignoring = Policy(ignore_no_cache_request=True)
    assert serve(fresh, T0, T0 + 1, req(("Cache-Control", "no-cache")), ignoring).verdict is (
        Verdict.FRESH)


def test_serve_request_max_age() -> None:
    # §5.2.1.1: age less than or equal to the value.
    fresh = stored("max-age=600")
    assert serve(fresh, T0, T0 + 5, req(("Cache-Control", "max-age=5"))).verdict is Verdict.FRESH
    late = serve(fresh, T0, T0 + 6, req(("Cache-Control", "max-age=5")))
    assert late.verdict is Verdict.REVALIDATE and late.reason == "request max-age=5, age 6 s"
    assert serve(fresh, T0, T0 + 1, req(("Cache-Control", "max-age=0"))).verdict is (
        Verdict.REVALIDATE)


def test_serve_request_min_fresh() -> None:
    # §5.2.1.3: lifetime no less than current age plus min-fresh.
    fresh = stored("max-age=60")
    assert serve(fresh, T0, T0 + 50, req(("Cache-Control", "min-fresh=10"))).verdict is (
        Verdict.FRESH)
    assert serve(fresh, T0, T0 + 50, req(("Cache-Control", "min-fresh=11"))).verdict is (
        Verdict.REVALIDATE)


def test_serve_request_max_stale() -> None:
    # §5.2.1.2 and §4.2.4: the client may allow stale responses.
    fresh = stored("max-age=60")
    assert serve(fresh, T0, T0 + 70, req(("Cache-Control", "max-stale"))).verdict is (
        Verdict.STALE_SERVE)
    assert serve(fresh, T0, T0 + 70, req(("Cache-Control", "max-stale=10"))).verdict is (
        Verdict.STALE_SERVE)
    assert serve(fresh, T0, T0 + 71, req(("Cache-Control", "max-stale=10"))).verdict is (
        Verdict.REVALIDATE)
    # max-age still bounds the age when max-stale is present.
    both = req(("Cache-Control", "max-age=65, max-stale"))
    assert serve(fresh, T0, T0 + 65, both).verdict is Verdict.STALE_SERVE
    assert serve(fresh, T0, T0 + 66, both).verdict is Verdict.REVALIDATE
    assert serve(fresh, T0, T0 + 70, RequestDirectives()).verdict is Verdict.REVALIDATE


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
def test_serve_never_stale_with_revalidation_directives(directive: str) -> None:
    # §4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10: no stale reuse, whatever allows it.
    fresh = stored("max-age=60, stale-while-revalidate=600, " + directive)
    decision = serve(fresh, T0, T0 + 70, req(("Cache-Control", "max-stale")))
    assert decision.verdict is Verdict.REVALIDATE
    assert decision.reason.startswith("stale by 10 s and ")


def test_serve_stale_while_revalidate() -> None:
    # RFC 5861 §3: serve up to N seconds stale while revalidating in the background.
    fresh = stored("max-age=60, stale-while-revalidate=30")
    decision = serve(fresh, T0, T0 + 90, RequestDirectives())
    assert decision.verdict is Verdict.STALE_WHILE_REVALIDATE and decision.ttl == -30
    assert serve(fresh, T0, T0 + 91, RequestDirectives()).verdict is Verdict.REVALIDATE
    # Preferred over max-stale: the client gets the same response and the cache refreshes.
    assert serve(fresh, T0, T0 + 70, req(("Cache-Control", "max-stale"))).verdict is (
        Verdict.STALE_WHILE_REVALIDATE)
    # The client's max-age still wins.
    assert serve(fresh, T0, T0 + 70, req(("Cache-Control", "max-age=60"))).verdict is (
        Verdict.REVALIDATE)


def test_serve_only_if_cached() -> None:
    # §5.2.1.7: a stored response consistent with the request, or 504.
    only = req(("Cache-Control", "only-if-cached"))
    assert serve(stored("max-age=60"), T0, T0 + 1, only).verdict is Verdict.FRESH
    stale = serve(stored("max-age=60"), T0, T0 + 61, only)
    assert stale.verdict is Verdict.MISS_ONLY_IF_CACHED
    assert stale.reason == "only-if-cached, but stale by 1 s"
    assert serve(stored("max-age=60, no-cache"), T0, T0 + 1, only).verdict is (
        Verdict.MISS_ONLY_IF_CACHED)
    with_stale = req(("Cache-Control", "only-if-cached, max-stale"))
    assert serve(stored("max-age=60"), T0, T0 + 61, with_stale).verdict is Verdict.STALE_SERVE


def test_serve_request_no_store_does_not_block_reuse() -> None:
    # §5.2.1.5: no-store does not apply to the already stored response.
    assert serve(stored("max-age=60"), T0, T0 + 1, req(("Cache-Control", "no-store"))).verdict is (
        Verdict.FRESH)


# -- errors (RFC 5861 §4, RFC 9111 §4.2.4, §4.3.3, §5.2.2.2) --------------------------------


def test_is_error_status() -> None:
    assert [s for s in (200, 404, 500, 501, 502, 503, 504, 505) if is_error_status(s)] == [
        500, 502, 503, 504]


def test_usable_on_error_windows() -> None:
    none = RequestDirectives()
    fresh = stored("max-age=60, stale-if-error=100")
    assert usable_on_error(fresh, T0, T0 + 30, none)  # still fresh
    assert usable_on_error(fresh, T0, T0 + 160, none)  # stale by 100
    assert not usable_on_error(fresh, T0, T0 + 161, none)
    plain = stored("max-age=60")
    assert usable_on_error(plain, T0, T0 + 59, none)
    assert not usable_on_error(plain, T0, T0 + 70, none)
    assert usable_on_error(plain, T0, T0 + 70, req(("Cache-Control", "stale-if-error=10")))
    assert not usable_on_error(plain, T0, T0 + 71, req(("Cache-Control", "stale-if-error=10")))
    assert usable_on_error(plain, T0, T0 + 9999, req(("Cache-Control", "max-stale")))
    by_policy = fresh_of(("Date", DATE0.decode()), ("Cache-Control", "max-age=60"),
                         response_time=T0, policy=Policy(stale_if_error=300))
    assert usable_on_error(by_policy, T0, T0 + 360, none)


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
def test_usable_on_error_never_stale_with_must_revalidate(directive: str) -> None:
    # §5.2.2.2: a disconnected cache MUST answer with an error (504), not the stale response.
    fresh = stored("max-age=60, stale-if-error=600, " + directive)
    assert usable_on_error(fresh, T0, T0 + 30, RequestDirectives())
    assert not usable_on_error(fresh, T0, T0 + 61, req(("Cache-Control", "max-stale")))


def test_usable_on_error_never_with_no_cache() -> None:
    # §5.2.2.4: "even by caches that have been configured to send stale responses".
    fresh = stored("max-age=600, no-cache, stale-if-error=600")
    assert not usable_on_error(fresh, T0, T0 + 1, RequestDirectives())


# -- Vary (RFC 9111 §4.1, RFC 9110 §12.5.5) --------------------------------------------------


def test_vary_names() -> None:
    assert vary_names(hdrs(("Vary", "Accept-Encoding, accept"), ("vary", " User-Agent ,,"),
                           ("Vary", "ACCEPT"))) == (b"accept", b"accept-encoding", b"user-agent")
    assert vary_names(hdrs(("Content-Type", "text/plain"))) == ()
    assert vary_names(hdrs(("Vary", "Accept"), ("Vary", "*"))) is None
    assert vary_names(hdrs(("Vary", "Accept Encoding"))) is None  # not a field name


def test_secondary_key_normalizes_only_what_every_field_allows() -> None:
    # §4.1: whitespace around values and combining lines; nothing else.
    names = (b"accept-encoding", b"accept-language")
    one_line = secondary_key(names, hdrs(("Accept-Encoding", "gzip, br"),
                                         ("Accept-Language", "en")))
    assert one_line == b'accept-encoding="gzip, br"; accept-language="en"'
    two_lines = secondary_key(names, hdrs(("accept-language", " en\t"),
                                          ("ACCEPT-ENCODING", "gzip "), ("Accept-Encoding", " br")))
    assert two_lines == one_line
    assert secondary_key(names, hdrs(("Accept-Encoding", "br, gzip"),
                                     ("Accept-Language", "en"))) != one_line
    assert secondary_key(names, hdrs(("Accept-Encoding", "GZIP, br"),
                                     ("Accept-Language", "en"))) != one_line


def test_secondary_key_absent_differs_from_empty() -> None:
    # §4.1: an absent field only matches an absent field.
    names = (b"cookie",)
    assert secondary_key(names, []) == b"cookie"
    assert secondary_key(names, hdrs(("Cookie", ""))) == b'cookie=""'
    assert secondary_key((), hdrs(("Cookie", "a"))) == b""


field_values = st.none() | st.lists(st.binary(max_size=6).map(lambda b: b.strip(b" \t")),
                                    min_size=1, max_size=3)


@PROPERTY
@given(st.lists(field_values, min_size=2, max_size=2), st.lists(field_values, min_size=2,
                                                                  max_size=2))
def test_secondary_key_equal_iff_combined_values_equal(
        a: list[list[bytes] | None], b: list[list[bytes] | None]) -> None:
    names = (b"x-a", b"x-b")

    def headers(values: list[list[bytes] | None]) -> list[tuple[bytes, bytes]]:
        return [(name, line) for name, lines in zip(names, values, strict=True)
                for line in lines or []]

    def combined(values: list[list[bytes] | None]) -> list[bytes | None]:
        return [None if lines is None else b", ".join(lines) for lines in values]

    same = secondary_key(names, headers(a)) == secondary_key(names, headers(b))
    assert same == (combined(a) == combined(b))


# -- client conditionals (RFC 9110 §13.1.2, §13.1.3, §13.2.2; RFC 9111 §4.3.2) -------------

STORED_200 = hdrs(("Date", DATE0.decode()), ("ETag", '"v1"'),
                  ("Last-Modified", format_http_date(T0 - 100).decode()),
                  ("Content-Length", "5"), ("Cache-Control", "max-age=60"))


def conditional(*pairs: tuple[str, str], stored_headers: list[tuple[bytes, bytes]] = STORED_200,
                response_time: float | None = None) -> int | None:
    return client_conditional(hdrs(*pairs), stored_headers, response_time=response_time)


def test_if_none_match_weak_comparison() -> None:
    # §13.1.2: weak comparison; §8.8.3.2: W/ ignored for it.
    assert conditional(("If-None-Match", '"v1"')) == 304
    assert conditional(("If-None-Match", 'W/"v1"')) == 304
    weak_stored = hdrs(("ETag", 'W/"v1"'))
    assert conditional(("If-None-Match", '"v1"'), stored_headers=weak_stored) == 304
    assert conditional(("If-None-Match", '"v0", W/"v1"')) == 304
    assert conditional(("If-None-Match", '"v0"'), ("If-None-Match", '"v1"')) == 304
    assert conditional(("If-None-Match", '"v0", "v2"')) is None
    assert conditional(("If-None-Match", '"V1"')) is None  # opaque-tags are case-sensitive


def test_if_none_match_star_and_malformed() -> None:
    # §13.1.2: "*" matches any current representation; malformed lists never give 304.
    assert conditional(("If-None-Match", "*")) == 304
    assert conditional(("If-None-Match", "v1")) is None
    assert conditional(("If-None-Match", 'w/"v1"')) is None  # W/ is case-sensitive
    assert conditional(("If-None-Match", '"v1" "v2"')) is None
    assert conditional(("If-None-Match", '"v1'),) is None
    assert conditional(("If-None-Match", '"v1"'), stored_headers=hdrs(("Date", DATE0.decode()))) \
        is None


def test_if_none_match_tag_with_comma() -> None:
    # RFC 9110 §8.8.3: etagc includes ",", so the list is not split on commas blindly.
    assert conditional(("If-None-Match", '"a,b"'), stored_headers=hdrs(("ETag", '"a,b"'))) == 304
    assert conditional(("If-None-Match", '"a", "b"'), stored_headers=hdrs(("ETag", '"a,b"'))) \
        is None


def test_if_none_match_takes_precedence_over_if_modified_since() -> None:
    # §13.2.2 step 3-4: If-Modified-Since is evaluated only without If-None-Match.
    later = format_http_date(T0).decode()
    assert conditional(("If-None-Match", '"other"'), ("If-Modified-Since", later)) is None
    assert conditional(("If-Modified-Since", later)) == 304


def test_if_modified_since() -> None:
    # §13.1.3: 304 when Last-Modified is earlier than or equal to the date.
    lm = T0 - 100
    assert conditional(("If-Modified-Since", format_http_date(lm).decode())) == 304
    assert conditional(("If-Modified-Since", format_http_date(lm - 1).decode())) is None
    assert conditional(("If-Modified-Since", "Sunday, 06-Nov-94 08:49:37 GMT")) == 304
    # Ignored when not a valid HTTP-date or when more than one is sent.
    assert conditional(("If-Modified-Since", "yesterday")) is None
    assert conditional(("If-Modified-Since", DATE0.decode()),
                       ("If-Modified-Since", DATE0.decode())) is None


def test_if_modified_since_without_last_modified() -> None:
    # RFC 9111 §4.3.2: use the stored Date, or else the time it was received.
    with_date = hdrs(("Date", DATE0.decode()))
    assert conditional(("If-Modified-Since", DATE0.decode()), stored_headers=with_date) == 304
    assert conditional(("If-Modified-Since", format_http_date(T0 - 1).decode()),
                       stored_headers=with_date) is None
    bare = hdrs(("Content-Length", "0"))
    assert conditional(("If-Modified-Since", DATE0.decode()), stored_headers=bare,
                       response_time=T0) == 304
    assert conditional(("If-Modified-Since", DATE0.decode()), stored_headers=bare,
                       response_time=T0 + 1) is None
    assert conditional(("If-Modified-Since", DATE0.decode()), stored_headers=bare) is None


def test_if_match_and_if_unmodified_since_are_not_for_a_cache() -> None:
    # RFC 9111 §4.3.2: If-Match and If-Unmodified-Since are not applicable to a cache.
    assert conditional(("If-Match", '"nope"'), ("If-None-Match", '"v1"')) == 304
    assert conditional(("If-Unmodified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")) is None


def test_not_modified_headers() -> None:
    # RFC 9110 §15.4.5: Cache-Control, Content-Location, Date, ETag, Expires, Vary;
    # Last-Modified only without an ETag.
    stored_headers = hdrs(("Date", DATE0.decode()), ("Content-Type", "text/html"),
                          ("ETag", '"v1"'), ("Vary", "Accept"), ("Set-Cookie", "a=b"),
                          ("Last-Modified", DATE0.decode()), ("Content-Length", "9"),
                          ("Cache-Control", "max-age=60"), ("Expires", "0"),
                          ("Content-Location", "/x"))
    assert not_modified_headers(stored_headers) == hdrs(
        ("Date", DATE0.decode()), ("ETag", '"v1"'), ("Vary", "Accept"),
        ("Cache-Control", "max-age=60"), ("Expires", "0"), ("Content-Location", "/x"))
    no_etag = [(n, v) for n, v in stored_headers if n != b"ETag"]
    assert (b"Last-Modified", DATE0) in not_modified_headers(no_etag)


# -- revalidation (RFC 9111 §3.2, §4.3.1, §4.3.4) -------------------------------------------


def test_validators() -> None:
    # §4.3.1: MUST send the entity tag, SHOULD send Last-Modified as If-Modified-Since.
    assert validators(STORED_200) == [
        (b"If-None-Match", b'"v1"'), (b"If-Modified-Since", format_http_date(T0 - 100))]
    assert validators(hdrs(("ETag", ' W/"x" '))) == [(b"If-None-Match", b'W/"x"')]
    assert validators(hdrs(("Date", DATE0.decode()))) == []  # Date is not a validator here
    assert validators(hdrs(("ETag", "unquoted"), ("Last-Modified", "0"))) == []


def test_freshens_by_validator() -> None:
    # §4.3.4: a strong validator must match strongly; a weak one must correspond.
    strong = hdrs(("ETag", '"v1"'), ("Last-Modified", DATE0.decode()))
    assert freshens(strong, hdrs(("ETag", '"v1"')))
    assert not freshens(strong, hdrs(("ETag", '"v2"')))
    assert not freshens(hdrs(("ETag", 'W/"v1"')), hdrs(("ETag", '"v1"')))
    assert freshens(hdrs(("ETag", 'W/"v1"')), hdrs(("ETag", 'W/"v1"')))
    assert freshens(strong, hdrs(("ETag", 'W/"v1"')))
    assert not freshens(hdrs(("Date", DATE0.decode())), hdrs(("ETag", '"v1"')))
    assert freshens(strong, hdrs(("Last-Modified", DATE0.decode())))
    assert not freshens(strong, hdrs(("Last-Modified", format_http_date(T0 + 1).decode())))
    assert not freshens(strong, hdrs(("ETag", "garbage")))
    # Choice: a 304 without validators answers the one stored response we asked about.
    assert freshens(strong, hdrs(("Date", DATE0.decode())))


def test_merge_not_modified() -> None:
    # §3.2: replace the fields the 304 carries, except hop-by-hop and Connection-listed
    # fields, proxy fields, Content-Length (and Content-Encoding/Range, which describe the body).
    stored_headers = hdrs(("Date", DATE0.decode()), ("Cache-Control", "max-age=60"),
                          ("Content-Length", "5"), ("Content-Encoding", "gzip"),
                          ("X-Old", "1"), ("Cache-Control", "public"), ("Age", "100"),
                          ("ETag", '"v1"'))
    not_modified = hdrs(("Date", format_http_date(T0 + 100).decode()),
                        ("Cache-Control", "max-age=120"), ("Content-Length", "0"),
                        ("Content-Encoding", "br"), ("Connection", "close, X-Hop"),
                        ("X-Hop", "a"), ("Keep-Alive", "timeout=5"),
                        ("Proxy-Authenticate", "Basic"), ("X-New", "2"), ("ETag", '"v1"'))
    assert merge_not_modified(stored_headers, not_modified) == hdrs(
        ("Date", format_http_date(T0 + 100).decode()), ("Cache-Control", "max-age=120"),
        ("Content-Length", "5"), ("Content-Encoding", "gzip"), ("X-Old", "1"),
        ("ETag", '"v1"'), ("X-New", "2"))


def test_merge_then_freshness_restarts_age() -> None:
    # §4.2: age counts from the successful validation; a stale upstream Age is replaced.
    stored_headers = hdrs(("Date", DATE0.decode()), ("Cache-Control", "max-age=60"),
                          ("Age", "50"), ("ETag", '"v1"'))
    old = freshness(stored_headers, 200, T0, T0)
    assert serve(old, T0, T0 + 20, RequestDirectives()).verdict is Verdict.REVALIDATE
    not_modified = hdrs(("Date", format_http_date(T0 + 20).decode()), ("ETag", '"v1"'))
    assert freshens(stored_headers, not_modified)
    merged = merge_not_modified(stored_headers, not_modified)
    new = freshness(merged, 200, T0 + 20, T0 + 20)
    assert new.corrected_initial_age == 0
    decision = serve(new, T0 + 20, T0 + 30, RequestDirectives())
    assert (decision.verdict, decision.ttl) == (Verdict.FRESH, 50)
    with_age = merge_not_modified(stored_headers, not_modified + hdrs(("Age", "7")))
    assert (b"Age", b"7") in with_age and (b"Age", b"50") not in with_age


# -- invalidation (RFC 9111 §4.4) -----------------------------------------------------------


def test_invalidations_target_location_content_location() -> None:
    out = invalidations(b"POST", 201, b"example.com", b"/a/b?x=1",
                        hdrs(("Location", "../c?y=2#frag"),
                             ("Content-Location", "http://EXAMPLE.com:80/d")))
    assert out == [(b"example.com", b"/a/b?x=1"), (b"example.com", b"/c?y=2"),
                   (b"example.com", b"/d")]


def test_invalidations_only_unsafe_and_non_error() -> None:
    # §4.4: unsafe methods (and unknown ones) with a 2xx or 3xx status.
    for method in (b"GET", b"HEAD", b"OPTIONS", b"TRACE"):
        assert invalidations(method, 200, b"h", b"/", []) == []
    for status in (100, 404, 500, 503):
        assert invalidations(b"POST", status, b"h", b"/", []) == []
    for method in (b"PUT", b"DELETE", b"PATCH", b"PURGE", b"post"):
        assert invalidations(method, 204, b"h", b"/x", []) == [(b"h", b"/x")]
    assert invalidations(b"POST", 303, b"h", b"/form", hdrs(("Location", "/done"))) == [
        (b"h", b"/form"), (b"h", b"/done")]


@pytest.mark.parametrize("location", [
    "http://other.example/x", "https://example.com/x", "http://example.com:8080/x",
    "//other.example/x", "mailto:a@example.com", "http://example.com:bad/x",
])
def test_invalidations_never_cross_origin(location: str) -> None:
    # §4.4: MUST NOT invalidate a URI whose origin differs from the target's.
    assert invalidations(b"POST", 200, b"example.com", b"/", hdrs(("Location", location))) == [
        (b"example.com", b"/")]


def test_invalidations_same_origin_details() -> None:
    https = invalidations(b"PUT", 200, b"example.com:443", b"/a",
                          hdrs(("Location", "https://user@example.com/b")), scheme=b"https")
    assert https == [(b"example.com:443", b"/a"), (b"example.com:443", b"/b")]
    assert invalidations(b"PUT", 200, b"h", b"/a", hdrs(("Location", "/a"))) == [(b"h", b"/a")]
    skipped = invalidations(b"PUT", 200, b"h", b"/a",
                            hdrs(("Location", "/b"), ("Location", "/c"),
                                 ("Content-Location", "/d e")))
    assert skipped == [(b"h", b"/a")]
    assert invalidations(b"PUT", 200, b"[::1]:8080", b"/a",
                         hdrs(("Location", "http://[::1]:8080/b?"))) == [
        (b"[::1]:8080", b"/a"), (b"[::1]:8080", b"/b")]


# -- Cache-Status (RFC 9211, RFC 8941 §4.1) --------------------------------------------------


def test_cache_status_examples() -> None:
    # RFC 9211 §3 examples, in RFC 8941's canonical serialization.
    assert cache_status("ExampleCache", hit=True) == b"ExampleCache;hit"
    assert cache_status("ExampleCache", hit=True, ttl=376) == b"ExampleCache;hit;ttl=376"
    assert cache_status("ExampleCache", hit=True, ttl=-412) == b"ExampleCache;hit;ttl=-412"
    assert cache_status("ExampleCache", fwd="uri-miss") == b"ExampleCache;fwd=uri-miss"
    assert cache_status("ExampleCache", fwd="stale", fwd_status=304) == (
        b"ExampleCache;fwd=stale;fwd-status=304")
    assert cache_status("ExampleCache", fwd="uri-miss", collapsed=True) == (
        b"ExampleCache;fwd=uri-miss;collapsed")
    assert cache_status("ExampleCache", fwd="uri-miss", collapsed=False) == (
        b"ExampleCache;fwd=uri-miss;collapsed=?0")
    assert cache_status("CDN Company Here", hit=True, ttl=545) == (
        b'"CDN Company Here";hit;ttl=545')


def test_cache_status_parameter_order_and_types() -> None:
    # RFC 9211 §2.1-2.8 order; key is sf-string; detail token when it can be; ttl integer.
    value = cache_status(fwd="miss", fwd_status=200, ttl=59.9, stored=True, collapsed=False,
                         key=b'GET http://h/a?"q"\\', detail="response no-store")
    assert value == (b'fastproxy;fwd=miss;fwd-status=200;ttl=59;stored;collapsed=?0;'
                     b'key="GET http://h/a?\\"q\\"\\\\";detail="response no-store"')
    assert cache_status(hit=True, ttl=-0.5, detail="private") == (
        b"fastproxy;hit;ttl=-1;detail=private")
    assert cache_status() == b"fastproxy"
    assert cache_status(b"edge-1", hit=True, key="\u00e9\n") == b'edge-1;hit;key="%C3%A9%0A"'


def test_cache_status_rejects_inconsistent_parameters() -> None:
    with pytest.raises(ValueError):
        cache_status(hit=True, fwd="miss")
    with pytest.raises(ValueError):
        cache_status(fwd="nope")
    with pytest.raises(ValueError):
        cache_status(hit=True, stored=True)
    with pytest.raises(ValueError):
        cache_status(fwd_status=200)


def parse_sf_string(data: str) -> tuple[str, str]:
    """RFC 8941 §4.2.5 (reference model): the string at the start and what follows."""
    assert data[0] == '"'
    out, i = [], 1
    while True:
        c = data[i]
        if c == "\\":
            assert data[i + 1] in '"\\'
            out.append(data[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), data[i + 1:]
        else:
            assert 0x20 <= ord(c) <= 0x7E
            out.append(c)
            i += 1


@PROPERTY
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_cache_status_detail_and_key_round_trip(text: str) -> None:
    value = cache_status(hit=True, key=text, detail=text).decode("ascii")
    assert value.startswith("fastproxy;hit;key=")
    key, rest = parse_sf_string(value[len("fastproxy;hit;key="):])
    assert key == text
    assert rest.startswith(";detail=")
    detail = rest[len(";detail="):]
    if detail.startswith('"'):
        parsed, tail = parse_sf_string(detail)
        assert (parsed, tail) == (text, "")
    else:
        assert detail == text and re.fullmatch(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*", text)


# -- policy settings ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"heuristic_fraction": 1.5}, {"heuristic_fraction": -0.1}, {"heuristic_max": -1},
    {"stale_if_error": -1}, {"stale_while_revalidate": float("nan")},
    {"max_object_size": -1}, {"default_ttl_by_status": {99: 10}},
    {"default_ttl_by_status": {200: -1}},
])
def test_policy_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_immutable() -> None:
    ttls = {200: 10.0}
    policy = Policy(default_ttl_by_status=ttls)
    ttls[200] = 99.0
    assert policy.default_ttl_by_status[200] == 10.0
    with pytest.raises(TypeError):
        policy.default_ttl_by_status[404] = 1  # type: ignore[index]


# -- robustness: whatever an upstream or a client sends --------------------------------------

FIELD_NAMES = st.sampled_from([
    b"Cache-Control", b"cache-control", b"Date", b"Age", b"Expires", b"Last-Modified", b"ETag",
    b"Vary", b"Location", b"Content-Location", b"Content-Length", b"Set-Cookie", b"Pragma",
    b"Authorization", b"If-None-Match", b"If-Modified-Since", b"Connection", b"Content-Range"])
FIELD_VALUES = st.binary(max_size=40) | st.sampled_from([
    b"max-age=60", b"s-maxage=5, stale-while-revalidate=9", b"no-cache", b"*", b'W/"x"',
    b'"x", "y"', DATE0, b"Sunday, 06-Nov-94 08:49:37 GMT", b"0", b"//evil/x", b"../a?b"])
HEADER_LISTS = st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=8)


@PROPERTY
@given(HEADER_LISTS, HEADER_LISTS, st.integers(100, 999), st.floats(-1e9, 1e10),
       st.floats(0, 1e6))
def test_header_driven_functions_never_raise(
        request_headers: list[tuple[bytes, bytes]], response_headers: list[tuple[bytes, bytes]],
        status: int, response_time: float, later: float) -> None:
    ok, reason = storable(b"GET", status, request_headers, response_headers)
    assert isinstance(ok, bool) and reason
    fresh = freshness(response_headers, status, response_time - 1, response_time)
    assert fresh.lifetime >= 0 and fresh.corrected_initial_age >= 0
    directives = RequestDirectives.from_headers(request_headers)
    decision = serve(fresh, response_time, response_time + later, directives)
    assert decision.reason and decision.age >= 0
    usable_on_error(fresh, response_time, response_time + later, directives)
    assert fresh.describe(response_time, response_time + later)
    names = vary_names(response_headers)
    secondary_key(names or (), request_headers)
    assert client_conditional(request_headers, response_headers, response_time=response_time,
                              now=response_time) in (304, None)
    validators(response_headers)
    not_modified_headers(response_headers)
    freshens(response_headers, request_headers)
    merge_not_modified(response_headers, request_headers)
    for target in invalidations(b"POST", 200, b"example.com", b"/a/b", response_headers):
        assert target[0] == b"example.com" and target[1].startswith(b"/")
