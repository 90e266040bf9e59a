"""fastproxy._url (paths, hosts, query arguments, IP sets) against simple reference models.

The references are written for plainness, not speed: the path model is a
literal transcription of RFC 3986 §5.2.4 over the decoded string (the
extension removes segments in place), query decoding and encoding come from
urllib.parse, and IP matching from the ipaddress module.
"""

from __future__ import annotations

import ipaddress
import re
import tracemalloc
import urllib.parse
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._url import (
    IpSet,
    cookie_get,
    escape_path,
    has_dot_segment,
    normalize_host,
    normalize_path,
    query_edit,
    query_get,
)

PROPERTY = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")

# -- reference models -------------------------------------------------------------------


def ref_remove_dot_segments(path: bytes) -> bytes | None:
    """RFC 3986 §5.2.4 as written (rules B, C, E apply to a path starting with "/"),
    plus the spec's rule: a ".." with nothing left to remove is invalid."""
    inp, out = path, b""
    while inp:
        if inp.startswith(b"/./"):
            inp = inp[2:]
        elif inp == b"/.":
            inp = b"/"
        elif inp.startswith(b"/../") or inp == b"/..":
            if not out:
                return None
            out = out[: out.rfind(b"/")]
            inp = inp[3:] if inp.startswith(b"/../") else b"/"
        else:
            end = inp.find(b"/", 1)
            end = len(inp) if end < 0 else end
            out += inp[:end]
            inp = inp[end:]
    return out


def ref_normalize_path(path: bytes, merge_slashes: bool = True) -> bytes | None:
    if not path.startswith(b"/"):
        return None
    decoded = bytearray()
    i = 0
    while i < len(path):
        c = path[i]
        if c == ord("%"):
            escape = path[i + 1 : i + 3]
            if len(escape) != 2 or not HEX_DIGITS.issuperset(escape):
                return None
            value = int(escape, 16)
            decoded += bytes([value]) if value in UNRESERVED else b"%" + escape.upper()
            i += 3
        else:
            decoded += bytes([c]) if c in PATH_CHARS else b"%%%02X" % c
            i += 1
    text = bytes(decoded)
    if merge_slashes:
        text = re.sub(rb"/+", b"/", text)
    return ref_remove_dot_segments(text)


# RFC 3986 pchar, "/" and "%": every other byte is percent-encoded.
PATH_CHARS = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%")


def ref_normalize_host(host: bytes | None) -> bytes:
    """The semantics of the original fastproxy._router.normalize_host."""
    if not host:
        return b""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    if b":" in host:
        host = host[: host.rfind(b":")]
    return host.rstrip(b".").lower()


def ref_unquote(text: bytes) -> bytes:
    return urllib.parse.unquote_to_bytes(text.replace(b"+", b" "))


def ref_arguments(query: bytes) -> list[tuple[bytes, bytes]]:
    """(raw piece, decoded name) for every non-empty piece."""
    return [(piece, ref_unquote(piece.partition(b"=")[0]))
            for piece in query.split(b"&") if piece]


def ref_query_get(query: bytes, name: bytes) -> bytes | None:
    for piece, decoded_name in ref_arguments(query):
        if decoded_name == name:
            return ref_unquote(piece.partition(b"=")[2])
    return None


def ref_quote(text: bytes) -> bytes:
    return urllib.parse.quote_from_bytes(text, safe="").encode("ascii")


def ref_query_edit(query: bytes, remove: tuple[bytes, ...],
                   set_pairs: tuple[tuple[bytes, bytes], ...]) -> bytes:
    drop = set(remove) | {name for name, _ in set_pairs}
    arguments = ref_arguments(query)
    kept = [piece for piece, name in arguments if name not in drop]
    if len(kept) == len(arguments) and not set_pairs:
        return query
    kept += [ref_quote(name) + b"=" + ref_quote(value) for name, value in set_pairs]
    return b"&".join(kept)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ref_contains(networks: list[Network], text: bytes) -> bool:
    """`text` parsed by ipaddress; a ::ffff: client is also its IPv4 address (a
    dual-stack socket's peer), an IPv4 client is only that."""
    if b"\x00" in text:  # the C side hands inet_pton a C string
        return False
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    forms: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    return any(form.version == net.version and form in net for form in forms for net in networks)


def test_reference_models_agree_with_known_answers() -> None:
    """The models themselves, on the spec's own examples (a wrong model proves nothing)."""
    assert ref_remove_dot_segments(b"/a/b/c/./../../g") == b"/a/g"  # RFC 3986 §5.2.4
    assert ref_remove_dot_segments(b"/a/b/..") == b"/a/"
    assert ref_remove_dot_segments(b"/..") is None
    assert ref_normalize_path(b"/%2f%7e") == b"/%2F~"
    assert ref_query_get(b"a=1&b=x+y%21", b"b") == b"x y!"
    assert ref_quote(b"a b/~") == b"a%20b%2F~"
    assert ref_contains([ipaddress.ip_network("10.0.0.0/8")], b"::ffff:10.9.9.9")


# -- normalize_path ---------------------------------------------------------------------

KIB64 = 64 * 1024
CLIMB = 13107  # "/d" * CLIMB + "/.." * CLIMB + "/x" is 64 KiB
PATHS: list[tuple[bytes, bytes | None, bytes | None]] = [
    # (path, with merge_slashes, without)
    (b"/", b"/", b"/"),
    (b"/.", b"/", b"/"),
    (b"/..", None, None),
    (b"/./", b"/", b"/"),
    (b"/a/.", b"/a/", b"/a/"),
    (b"/a/./", b"/a/", b"/a/"),
    (b"/a/..", b"/", b"/"),
    (b"/a/b/..", b"/a/", b"/a/"),
    (b"/a/./b", b"/a/b", b"/a/b"),
    (b"/a/b/c/./../../g", b"/a/g", b"/a/g"),
    (b"/a/..b", b"/a/..b", b"/a/..b"),        # not a dot segment
    (b"/a/b..", b"/a/b..", b"/a/b.."),
    (b"/a/.../b", b"/a/.../b", b"/a/.../b"),
    (b"/.well-known/x", b"/.well-known/x", b"/.well-known/x"),
    (b"/../x", None, None),
    (b"/a/../../x", None, None),
    (b"/%2e%2e/x", None, None),                # decoded dots are dot segments
    (b"/a/%2E%2e/b", b"/b", b"/b"),
    (b"/a/.%2e", b"/", b"/"),
    (b"/%2E", b"/", b"/"),
    (b"/a/..%2F..%2Fb", b"/a/..%2F..%2Fb", b"/a/..%2F..%2Fb"),  # %2F is no separator
    (b"/%2f", b"/%2F", b"/%2F"),
    (b"/%2F", b"/%2F", b"/%2F"),
    (b"/%41%7e", b"/A~", b"/A~"),
    (b"/%2d%2E%5f%7E%30", b"/-._~0", b"/-._~0"),
    (b"/%25", b"/%25", b"/%25"),
    (b"/%252e%252e/x", b"/%252e%252e/x", b"/%252e%252e/x"),  # decoded once only
    (b"/a%3fb", b"/a%3Fb", b"/a%3Fb"),
    (b"/%zz", None, None),
    (b"/%4", None, None),
    (b"/%4g", None, None),
    (b"/%", None, None),
    (b"/a%", None, None),
    (b"/caf\xc3\xa9", b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/caf%c3%a9", b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/caf%C3%A9", b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/\x80\xff", b"/%80%FF", b"/%80%FF"),
    # Bytes RFC 3986 keeps out of paths are data, never separators: "\\" must not
    # reach an upstream (or a browser, via a Location) that reads it as "/".
    (b"/old/\\evil.com", b"/old/%5Cevil.com", b"/old/%5Cevil.com"),
    (b'/a"<>^`{|}', b"/a%22%3C%3E%5E%60%7B%7C%7D", b"/a%22%3C%3E%5E%60%7B%7C%7D"),
    (b"/a;b=c,d:e@f!$&'()*+", b"/a;b=c,d:e@f!$&'()*+", b"/a;b=c,d:e@f!$&'()*+"),  # pchar
    (b"//a//b", b"/a/b", b"//a//b"),
    (b"///", b"/", b"///"),
    (b"/a//", b"/a/", b"/a//"),
    (b"/a//../b", b"/b", b"/a/b"),             # unmerged: ".." removes the empty segment
    (b"//..", None, b"/"),
    (b"/.//", b"/", b"//"),
    (b"", None, None),
    (b"a/b", None, None),
    (b"*", None, None),
    (b"%2Fa", None, None),
    (b"/" + b"a" * (KIB64 - 1), b"/" + b"a" * (KIB64 - 1), b"/" + b"a" * (KIB64 - 1)),
    (b"/d" * CLIMB + b"/.." * CLIMB + b"/x", b"/x", b"/x"),
    (b"/d" * CLIMB + b"/.." * (CLIMB + 1) + b"/x", None, None),
    (b"/" + b"\xff" * (KIB64 - 1), b"/" + b"%FF" * (KIB64 - 1), b"/" + b"%FF" * (KIB64 - 1)),
    (b"/" * KIB64, b"/", b"/" * KIB64),
    (b"/" + b"%7e" * 21845, b"/" + b"~" * 21845, b"/" + b"~" * 21845),
]


def short_id(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} chars)"


@pytest.mark.parametrize("merge_slashes", [True, False])
@pytest.mark.parametrize(("path", "merged", "unmerged"), PATHS, ids=short_id)
def test_normalize_path_table(path: bytes, merged: bytes | None, unmerged: bytes | None,
                              merge_slashes: bool) -> None:
    want = merged if merge_slashes else unmerged
    got = normalize_path(path, merge_slashes)
    assert got == want
    if want == path:
        assert got is path
    if got is not None:
        assert normalize_path(got, merge_slashes) is got


def test_normalize_path_table_matches_reference() -> None:
    """The model must give the table's answers too, or the property tests check nothing."""
    for path, merged, unmerged in PATHS:
        if len(path) < 1024:
            assert ref_normalize_path(path, True) == merged, path
            assert ref_normalize_path(path, False) == unmerged, path


def test_normalize_path_default_merges_slashes() -> None:
    assert normalize_path(b"//a") == b"/a"


def test_normalize_path_refuses_none() -> None:
    with pytest.raises(TypeError):
        normalize_path(None)  # type: ignore[arg-type]


PATH_PIECES = st.sampled_from([
    b"/", b"//", b".", b"..", b"a", b"B", b"~", b"-", b"%2e", b"%2E", b"%2f", b"%2F",
    b"%41", b"%7e", b"%c3", b"%C3%a9", b"%25", b"%", b"%4", b"%zz", b"%g1", b"\xc3\xa9",
    b"\xff", b"?", b"+", b";",
])
paths = (
    st.builds(lambda lead, parts: lead + b"".join(parts),
              st.sampled_from([b"/", b"/", b"/", b"", b"a"]), st.lists(PATH_PIECES, max_size=14))
    | st.binary(max_size=24)
)


@PROPERTY
@given(path=paths, merge_slashes=st.booleans())
def test_normalize_path_matches_reference(path: bytes, merge_slashes: bool) -> None:
    got = normalize_path(path, merge_slashes)
    assert got == ref_normalize_path(path, merge_slashes)
    if got == path:
        assert got is path


@PROPERTY
@given(path=paths, merge_slashes=st.booleans())
def test_normalize_path_is_idempotent(path: bytes, merge_slashes: bool) -> None:
    once = normalize_path(path, merge_slashes)
    if once is not None:
        assert normalize_path(once, merge_slashes) is once
        assert b".." not in once.split(b"/") and b"." not in once.split(b"/")
        if merge_slashes:
            assert b"//" not in once


def allocated_during(call: Callable[[], object], times: int = 200) -> int:
    """Peak bytes traced by tracemalloc while `call` runs `times` times."""
    call()  # warm up any one-time caches
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(times):
            call()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_normal_path_costs_no_allocation() -> None:
    path = b"/static/" + b"x" * KIB64
    assert normalize_path(path) is path
    assert allocated_during(lambda: normalize_path(path)) < 1024
    # The probe itself does see a 64 KiB path being rebuilt.
    changed = path + b"/."
    assert allocated_during(lambda: normalize_path(changed)) >= KIB64


# -- normalize_host ---------------------------------------------------------------------


@pytest.mark.parametrize(("host", "want"), [
    (None, b""),
    (b"", b""),
    (b"Example.COM", b"example.com"),
    (b"example.com:8080", b"example.com"),
    (b"example.com.", b"example.com"),
    (b"example.com..", b"example.com"),
    (b"EXAMPLE.com.:443", b"example.com"),
    (b"example.com:", b"example.com"),
    (b"[::1]:8080", b"[::1]"),
    (b"[2001:DB8::1]", b"[2001:db8::1]"),
    (b"[::1", b"[::1"),
    (b"[::1]", b"[::1]"),
    (b"127.0.0.1:80", b"127.0.0.1"),
    (b"a:b:80", b"a:b"),                        # only the last ":" starts the port
    (b"caf\xc3\xa9.EXAMPLE", b"caf\xc3\xa9.example"),  # only ASCII is case-folded
    (b"example.com", b"example.com"),
])
def test_normalize_host_table(host: bytes | None, want: bytes) -> None:
    got = normalize_host(host)
    assert got == want
    if host is not None and want == host:
        assert got is host


hosts = st.none() | st.binary(max_size=24) | st.lists(
    st.sampled_from(list(b"aZz.:[]09-\xc3")), max_size=16).map(bytes)


@PROPERTY
@given(host=hosts)
def test_normalize_host_matches_reference(host: bytes | None) -> None:
    got = normalize_host(host)
    assert got == ref_normalize_host(host)
    if got == host:
        assert got is host
    # Idempotent, except that a name with several ":" (no valid Host header has one
    # outside brackets) loses one port-like suffix per call, as the original did.
    if b":" not in got or got.startswith(b"["):
        assert normalize_host(got) is got


# -- query_get / query_edit -------------------------------------------------------------


@pytest.mark.parametrize(("query", "name", "want"), [
    (b"", b"a", None),
    (b"a=1&b=2", b"b", b"2"),
    (b"a=1&a=2", b"a", b"1"),                   # the first one
    (b"debug", b"debug", b""),
    (b"debug=", b"debug", b""),
    (b"debug=&debug=1", b"debug", b""),
    (b"&&a=1&&", b"a", b"1"),
    (b"a=x=y", b"a", b"x=y"),                   # split at the first "="
    (b"a+b=1", b"a b", b"1"),
    (b"a%20b=1", b"a b", b"1"),
    (b"%61=%41+%2B", b"a", b"A +"),
    (b"a=%zz%4", b"a", b"%zz%4"),               # malformed escapes are literal
    (b"a=%%41", b"a", b"%A"),
    (b"%zz=1", b"%zz", b"1"),
    (b"=1", b"", b"1"),
    (b"a=1", b"A", None),                       # names are case-sensitive
    (b"ab=1", b"a", None),
    (b"a=1", b"ab", None),
    (b"a%26b=1", b"a&b", b"1"),
    (b"a=caf%C3%A9", b"a", b"caf\xc3\xa9"),
])
def test_query_get_table(query: bytes, name: bytes, want: bytes | None) -> None:
    assert query_get(query, name) == want
    assert ref_query_get(query, name) == want


@pytest.mark.parametrize(("query", "remove", "set_pairs", "want"), [
    (b"", (), (), b""),
    (b"a=1&utm_source=x&b=2", (b"utm_source",), (), b"a=1&b=2"),
    (b"utm_source=x", (b"utm_source",), (), b""),
    (b"a=1&v=1&b=2&v=3", (), ((b"v", b"2"),), b"a=1&b=2&v=2"),
    (b"a=1", (), ((b"v", b"2"),), b"a=1&v=2"),
    (b"", (), ((b"v", b"2"),), b"v=2"),
    (b"a=1&&b=2", (b"c",), (), b"a=1&&b=2"),   # nothing applies: bytes untouched
    (b"a=1&&b=2&", (b"b",), (), b"a=1"),       # something does: single "&" joins
    (b"utm+source=1&x=2", (b"utm source",), (), b"x=2"),
    (b"%76=1", (), ((b"v", b"2"),), b"v=2"),
    (b"a=1", (), ((b"a b", b"x/y&z=~"),), b"a=1&a%20b=x%2Fy%26z%3D~"),
    (b"a=1", (), ((b"k", b"caf\xc3\xa9"),), b"a=1&k=caf%C3%A9"),
    (b"a=1", (b"a",), ((b"a", b"1"),), b"a=1"),
    (b"x&a", (), ((b"a", b""), (b"a", b"2")), b"x&a=&a=2"),
])
def test_query_edit_table(query: bytes, remove: tuple[bytes, ...],
                          set_pairs: tuple[tuple[bytes, bytes], ...], want: bytes) -> None:
    got = query_edit(query, remove, set_pairs)
    assert got == want
    assert ref_query_edit(query, remove, set_pairs) == want
    if want == query:
        assert got is query


@pytest.mark.parametrize(("remove", "set_pairs"), [
    ([b"a"], ()),
    ((), [(b"a", b"1")]),
    (("a",), ()),
    ((None,), ()),
    ((), ((b"a",),)),
    ((), ((b"a", "1"),)),
    ((), ([b"a", b"1"],)),
    (None, ()),
])
def test_query_edit_refuses_bad_arguments(remove: object, set_pairs: object) -> None:
    with pytest.raises(TypeError):
        query_edit(b"a=1", remove, set_pairs)  # type: ignore[arg-type]


def test_query_helpers_refuse_none() -> None:
    with pytest.raises(TypeError):
        query_get(None, b"a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        query_get(b"a", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        query_edit(None, (), ())  # type: ignore[arg-type]


def test_untouched_query_costs_no_allocation() -> None:
    query = b"&".join(b"k%d=%d" % (i, i) for i in range(8000))
    remove = (b"utm_source", b"utm_medium")
    assert query_edit(query, remove, ()) is query
    assert allocated_during(lambda: query_edit(query, remove, ())) < 1024
    assert allocated_during(lambda: query_edit(query, (b"k1",), ())) >= len(query) - 16


QUERY_PIECES = st.sampled_from([
    b"a", b"b", b"%61", b"%62", b"a+b", b"a%20b", b"A", b"=", b"&", b"&&", b"%", b"%zz",
    b"%4", b"+", b"%2B", b"%26", b"%3D", b"1", b"\xc3", b"%c3",
])
queries = st.lists(QUERY_PIECES, max_size=12).map(b"".join) | st.binary(max_size=16)
names = st.sampled_from([b"a", b"b", b"a b", b"A", b"", b"%zz", b"+", b"&", b"=", b"ab",
                         b"\xc3", b"1"])


@PROPERTY
@given(query=queries, name=names)
def test_query_get_matches_reference(query: bytes, name: bytes) -> None:
    assert query_get(query, name) == ref_query_get(query, name)


@PROPERTY
@given(query=queries, remove=st.lists(names, max_size=3).map(tuple),
       set_pairs=st.lists(st.tuples(names | st.binary(max_size=4), st.binary(max_size=6)),
                          max_size=3).map(tuple))
def test_query_edit_matches_reference(query: bytes, remove: tuple[bytes, ...],
                                      set_pairs: tuple[tuple[bytes, bytes], ...]) -> None:
    got = query_edit(query, remove, set_pairs)
    assert got == ref_query_edit(query, remove, set_pairs)
    if got == query:
        assert got is query
    for name in remove:
        if name not in {n for n, _ in set_pairs}:
            assert query_get(got, name) is None
    for name, _ in set_pairs:
        # The first argument of that name is now the first value set for it.
        assert query_get(got, name) == next(v for n, v in set_pairs if n == name)


# -- IpSet ------------------------------------------------------------------------------


def nets(*texts: str) -> IpSet:
    return IpSet(ipaddress.ip_network(t) for t in texts)


@pytest.mark.parametrize(("networks", "address", "want"), [
    (("10.0.0.0/8",), b"10.1.2.3", True),
    (("10.0.0.0/8",), b"11.1.2.3", False),
    (("10.0.0.0/8",), b"::ffff:10.1.2.3", True),
    (("10.0.0.0/8",), b"::FFFF:a01:203", True),     # the same, in hex
    (("10.0.0.0/8",), b"::10.1.2.3", False),        # IPv4-compatible is not mapped
    (("::ffff:10.0.0.0/104",), b"10.1.2.3", False),  # an IPv4 client: IPv4 networks only
    (("::ffff:10.0.0.0/104",), b"::ffff:10.1.2.3", True),
    (("::1/128",), b"::1", True),
    (("::1/128",), b"0:0:0:0:0:0:0:1", True),
    (("::1/128",), b"::2", False),
    (("::1/128",), b"127.0.0.1", False),
    (("0.0.0.0/0",), b"203.0.113.9", True),
    (("0.0.0.0/0",), b"2001:db8::1", False),
    (("::/0",), b"203.0.113.9", False),             # ::/0 holds ::ffff:0:0/96, not IPv4
    (("::/0",), b"::ffff:203.0.113.9", True),
    (("192.168.1.0/25",), b"192.168.1.127", True),
    (("192.168.1.0/25",), b"192.168.1.128", False),
    (("2001:db8::/33",), b"2001:db8:7fff::1", True),
    (("2001:db8::/33",), b"2001:db8:8000::1", False),
    (("fe80::/10",), b"fe80::1%eth0", True),        # zone as getnameinfo reports it
    (("fe80::/10",), b"fe80::1%", False),
    (("fe80::/10",), b"fe80::1%a%b", False),
    (("10.0.0.0/8",), b"10.0.0.1%eth0", False),
    (("10.0.0.0/8",), b"10.0.0.1\x00", False),
    (("10.0.0.0/8",), b"10.0.0.1 ", False),
    (("10.0.0.0/8",), b"010.0.0.1", False),
    (("10.0.0.0/8",), b"10.1", False),
    (("10.0.0.0/8",), b"", False),
    (("10.0.0.0/8",), b"1" * 200, False),
    (("::/0",), b"::ffff:" + b"0" * 100, False),
    ((), b"10.0.0.1", False),
])
def test_ip_set_table(networks: tuple[str, ...], address: bytes, want: bool) -> None:
    assert nets(*networks).contains(address) is want
    assert ref_contains([ipaddress.ip_network(t) for t in networks], address) is want


def test_ip_set_refuses_what_is_not_a_network() -> None:
    with pytest.raises(TypeError):
        IpSet(["10.0.0.0/8"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        IpSet([ipaddress.ip_address("10.0.0.1")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        nets("10.0.0.0/8").contains(None)  # type: ignore[arg-type]


def test_ip_set_init_again_replaces_the_networks() -> None:
    s = nets("10.0.0.0/8")
    s.__init__([ipaddress.ip_network("::1")])
    assert not s.contains(b"10.0.0.1")
    assert s.contains(b"::1")


@st.composite
def networks(draw: st.DrawFn) -> Network:
    kind = draw(st.sampled_from(["v4", "v6", "mapped"]))
    if kind == "v6":
        return ipaddress.ip_network((draw(st.ip_addresses(v=6)), draw(st.integers(0, 128))),
                                    strict=False)
    net = ipaddress.ip_network((draw(st.ip_addresses(v=4)), draw(st.integers(0, 32))),
                               strict=False)
    if kind == "mapped":
        return ipaddress.ip_network(f"::ffff:{net.network_address}/{net.prefixlen + 96}")
    return net


@st.composite
def address_texts(draw: st.DrawFn, candidates: list[Network]) -> bytes:
    """Addresses inside or near the networks, in the spellings clients show up with."""
    inside = draw(st.booleans())
    if candidates and inside:
        net = draw(st.sampled_from(candidates))
        # Just inside or just past the network, or anywhere in it.
        offset = draw(st.sampled_from([0, net.num_addresses - 1, net.num_addresses, -1])
                      | st.integers(0, net.num_addresses - 1))
        value = (int(net.network_address) + offset) % (1 << net.max_prefixlen)
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv6Address(value) if net.version == 6 else ipaddress.IPv4Address(value))
    else:
        address = draw(st.ip_addresses())
    spelling = draw(st.sampled_from(["plain", "mapped", "exploded", "upper", "zone"]))
    if spelling == "mapped" and address.version == 4:
        return f"::ffff:{address}".encode()
    if spelling == "exploded":
        return address.exploded.encode()
    if spelling == "upper":
        return str(address).upper().encode()
    if spelling == "zone" and address.version == 6:
        return f"{address}%eth0".encode()
    return str(address).encode()


@PROPERTY
@given(data=st.data(), candidates=st.lists(networks(), max_size=5))
def test_ip_set_matches_ipaddress(data: st.DataObject, candidates: list[Network]) -> None:
    ip_set = IpSet(candidates)
    text = data.draw(address_texts(candidates)
                     | st.text("0123456789abcdefABCDEF:.%", max_size=24).map(str.encode)
                     | st.binary(max_size=20))
    assert ip_set.contains(text) is ref_contains(candidates, text)


@pytest.mark.parametrize(("path", "segment", "want"), [
    (b"/a/b", False, b"/a/b"),
    (b"/a b?c#d", False, b"/a%20b%3Fc%23d"),
    (b"/a/b%2F", True, b"%2Fa%2Fb%252F"),
    (b"x=1&y", True, b"x=1&y"),
    (b"\\", True, b"%5C"),
])
def test_escape_path(path: bytes, segment: bool, want: bytes) -> None:
    out = escape_path(path, segment)
    assert out == want
    if want == path:
        assert out is path


@pytest.mark.parametrize(("path", "want"), [
    (b"/a/b", False), (b"/a/./b", True), (b"/a/..", True), (b"/..a", False),
    (b"/a/%2e%2E/b", True), (b"/a/.%2e", True), (b"/.../", False), (b"/%2e%2e%2e", False),
    (b".", True), (b"/a/b.", False), (b"/a/%2Fb/..%2F", False), (b"", False),
])
def test_has_dot_segment(path: bytes, want: bool) -> None:
    assert has_dot_segment(path) is want


@pytest.mark.parametrize(("header", "name", "want"), [
    (b"a=1; b=2", b"b", b"2"),
    (b"a=1;b=2 ;c", b"b", b"2"),
    (b" sid = x y ; a=1", b"sid", b"x y"),
    (b"a=1", b"b", None),
    (b"ab=1; b=", b"b", b""),
    (b"", b"a", None),
    (b"b=1; b=2", b"b", b"1"),  # the first, as browsers send the most specific first
])
def test_cookie_get(header: bytes, name: bytes, want: bytes | None) -> None:
    assert cookie_get(header, name) == want
