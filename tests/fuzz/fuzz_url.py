"""atheris fuzz target: the URL helpers of fastproxy._url.

Every input is used whole, as a path (as is, and behind a "/"), as a host and
as a query string; a FuzzedDataProvider over the same bytes also builds a
path out of the pieces that matter to normalization (dot segments, escapes
of unreserved and reserved bytes, runs of "/", bytes >= 0x80) and the names
and values for query_get / query_edit.

normalize_path(path, merge) must give None or bytes that start with "/",
hold no "." or ".." segment, no byte but RFC 3986 path characters, no "%"
but one followed by two upper-case hex digits that encode a reserved byte,
no "//" when merging, and
normalize to themselves (the very same object, as promised for normal paths).
A path without "%" and without a ".." segment is never refused. The other
helpers must return the right type, and query_edit must do what it says:
removed names are gone, set names read back (through query_get) as set.
Anything else, an exception included, is a crash.

    python tests/fuzz/fuzz_url.py -max_total_time=10
    python tests/fuzz/fuzz_url.py crash-<sha1>        # replay one input

Without corpus arguments it reads the seeds in tests/fuzz/corpus/url/ and
keeps what it learns in build/fuzz-corpus-url/; without -dict it writes and
uses build/fuzz-url.dict. The extension is not instrumented, so libFuzzer is
guided only by the checks below and by the dictionary.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import atheris

from fastproxy._url import IpSet, normalize_host, normalize_path, query_edit, query_get

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus" / "url"
WORK_CORPUS = ROOT / "build" / "fuzz-corpus-url"
DICT = ROOT / "build" / "fuzz-url.dict"

HEX_UPPER = b"0123456789ABCDEF"
UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
# The pieces a path is built from: what normalization decodes, keeps, merges or refuses.
PIECES = [b"/", b"a", b".", b"..", b"//", b"%2e", b"%2E", b"%2f", b"%2F", b"%41", b"%61",
          b"%7e", b"%7E", b"%25", b"%20", b"%3f", b"%c3%a9", b"%C3%A9", b"%", b"%4", b"%g0",
          b"%%", b"\xc3\xa9", b"\x80", b"\xff", b"~", b"-", b"_", b"?", b"#", b";", b"%00",
          b"\x00", b" ", b"\\", b"A"]
NAMES = [b"v", b"a", b"utm source", b"utm+source", b"utm%20source", b"", b"=", b"&", b"%",
         b"%4", b"+", b"\xff", b"a=b"]
NETS = IpSet([ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.0.2.7/32", "::1/128",
                                                 "fd00::/8", "::ffff:0:0/96")])


def note(kind: int, grew: bool) -> None:
    # distinct branches per outcome give libFuzzer's coverage something to follow
    if kind == 0:
        return
    if kind == 1:
        if grew:
            return
        return
    if kind == 2:
        return


# RFC 3986 pchar, "/" and the "%" of escapes: all a normalized path may hold.
PATH_CHARS = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%")


def check_path(path: bytes, merge: bool) -> None:
    out = normalize_path(path, merge)
    note(0 if out is None else 1 if out is not path else 2,
         out is not None and len(out) > len(path))
    if out is None:
        if not path.startswith(b"/"):
            return
        if b"%" not in path and b".." not in path.split(b"/"):
            raise AssertionError(f"refused a path without '%' or '..': {path!r} merge={merge}")
        return
    if not path.startswith(b"/"):
        raise AssertionError(f"accepted a path not starting with '/': {path!r} -> {out!r}")
    if type(out) is not bytes or not out.startswith(b"/"):
        raise AssertionError(f"result does not start with '/': {path!r} -> {out!r}")
    if out == path and out is not path:
        raise AssertionError(f"a normal path came back as a copy: {path!r}")
    segments = out.split(b"/")
    if b"." in segments or b".." in segments:
        raise AssertionError(f"dot segment left: {path!r} -> {out!r}")
    if any(c not in PATH_CHARS for c in out):
        raise AssertionError(f"a byte a path cannot hold left: {path!r} -> {out!r}")
    i = out.find(b"%")
    while i >= 0:
        hi, lo = out[i + 1:i + 2], out[i + 2:i + 3]
        if not hi or not lo or hi[0] not in HEX_UPPER or lo[0] not in HEX_UPPER:
            raise AssertionError(f"bad escape at {i}: {path!r} -> {out!r}")
        if int(out[i + 1:i + 3], 16) in UNRESERVED:
            raise AssertionError(f"escaped unreserved byte at {i}: {path!r} -> {out!r}")
        i = out.find(b"%", i + 3)
    if merge and b"//" in out:
        raise AssertionError(f"'//' left with merge_slashes: {path!r} -> {out!r}")
    again = normalize_path(out, merge)
    if again != out:
        raise AssertionError(f"not idempotent: {path!r} -> {out!r} -> {again!r}")
    if again is not out:
        raise AssertionError(f"normalizing a normal path made a copy: {out!r}")


def check_host(host: bytes) -> None:
    out = normalize_host(host)
    if type(out) is not bytes:
        raise AssertionError(f"normalize_host({host!r}) gave {type(out).__name__}")
    if len(out) > len(host) or out != out.lower():
        raise AssertionError(f"normalize_host({host!r}) = {out!r}")


def check_query(query: bytes, name: bytes, remove: tuple[bytes, ...],
                set_pairs: tuple[tuple[bytes, bytes], ...]) -> None:
    got = query_get(query, name)
    if got is not None and type(got) is not bytes:
        raise AssertionError(f"query_get({query!r}, {name!r}) gave {type(got).__name__}")
    out = query_edit(query, remove, set_pairs)
    if type(out) is not bytes:
        raise AssertionError(f"query_edit gave {type(out).__name__}")
    first_set: dict[bytes, bytes] = {}
    for n, v in set_pairs:
        first_set.setdefault(n, v)
    for n, v in first_set.items():
        if query_get(out, n) != v:
            raise AssertionError(f"query_edit({query!r}, {remove!r}, {set_pairs!r}) = {out!r}: "
                                 f"{n!r} reads {query_get(out, n)!r}, not {v!r}")
    for n in remove:
        if n not in first_set and query_get(out, n) is not None:
            raise AssertionError(f"query_edit({query!r}, {remove!r}, {set_pairs!r}) = {out!r}: "
                                 f"{n!r} is still there")
    if not set_pairs and query_get(out, name) != (None if name in remove else got):
        raise AssertionError(f"query_edit({query!r}, {remove!r}, ()) = {out!r} "
                             f"changed argument {name!r}")


def built_path(fdp: atheris.FuzzedDataProvider) -> bytes:
    out = [b"/"]
    for _ in range(fdp.ConsumeIntInRange(0, 24)):
        out.append(fdp.PickValueInList(PIECES))
    return b"".join(out)


def name_for(fdp: atheris.FuzzedDataProvider) -> bytes:
    if fdp.ConsumeIntInRange(0, 3) == 3:
        return bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6)))
    return bytes(fdp.PickValueInList(NAMES))


def TestOneInput(data: bytes) -> None:
    for merge in (True, False):
        check_path(data, merge)
        check_path(b"/" + data, merge)
    check_host(data)
    if type(NETS.contains(data)) is not bool:
        raise AssertionError("IpSet.contains gave a non-bool")

    fdp = atheris.FuzzedDataProvider(data)
    path = built_path(fdp)
    check_path(path, True)
    check_path(path, False)
    name = name_for(fdp)
    remove = tuple(name_for(fdp) for _ in range(fdp.ConsumeIntInRange(0, 2)))
    set_pairs = tuple((name_for(fdp), name_for(fdp)) for _ in range(fdp.ConsumeIntInRange(0, 2)))
    check_query(data, name, remove, set_pairs)
    # The query as the proxy sees it: after the "?" of a target.
    q = data.find(b"?")
    if q >= 0:
        check_query(data[q + 1:], name, remove, set_pairs)


DICT_WORDS = [b"/", b"//", b"/./", b"/../", b"/.", b"/..", b"%2e", b"%2E", b"%2f", b"%2F",
              b"%7e", b"%25", b"%41", b"%c3%a9", b"\xc3\xa9", b"\x80", b"?", b"&", b"=",
              b"+", b"%20", b"[::1]", b":8080", b"::ffff:", b"10.0.0.1", b"%eth0"]


def write_dict(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for word in DICT_WORDS:
        text = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}"
                       for b in word)
        lines.append(f'"{text}"\n')
    path.write_text("".join(lines))


def main(argv: list[str]) -> None:
    args = list(argv)
    if not any(a and not a.startswith("-") for a in args[1:]):
        WORK_CORPUS.mkdir(parents=True, exist_ok=True)
        args += [str(WORK_CORPUS), str(SEEDS)]  # new inputs go to the first one
    if not any(a.startswith("-dict=") for a in args):
        write_dict(DICT)
        args.append(f"-dict={DICT}")
    for fn in (TestOneInput, note, check_path, check_host, check_query, built_path, name_for):
        atheris.instrument_func(fn)
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
