"""atheris fuzz target: the PROXY protocol parser and builders of fastproxy._proxyproto.

Every input is parsed whole; a FuzzedDataProvider over the same bytes also
assembles a v1 line out of the pieces that matter to its grammar and a v2
header out of fuzzed command, family, length and body bytes (random bytes
rarely get past a 12-byte signature), and both are parsed too.

parse() must return None, or a tuple (consumed, src_ip, src_port, dst_ip,
dst_port) with 0 < consumed <= len(data), the v1 line within 107 bytes and
the v2 header within 16 + 4096, both addresses None (ports 0) or both ASCII
bytes in inet_ntop form, ports in 0..65535; or raise ProxyProtocolError
whose reason starts with "PROXY". A refused input stays refused whatever
follows; a header parses the same with anything after it and with nothing
after it, and every shorter prefix of it is None ("read more"); a prefix of
a None input is None too. Addresses that parse are built again with
build_v1 and build_v2, which must parse back to the same. Anything else,
another exception included, is a crash.

    python tests/fuzz/fuzz_proxyproto.py -max_total_time=10
    python tests/fuzz/fuzz_proxyproto.py crash-<sha1>        # replay one input

Without corpus arguments it reads the seeds in tests/fuzz/corpus/proxyproto/
and keeps what it learns in build/fuzz-corpus-proxyproto/; without -dict it
writes and uses build/fuzz-proxyproto.dict. The extension is not
instrumented, so libFuzzer is guided only by the checks below and by the
dictionary.
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import atheris

from fastproxy._proxyproto import ProxyProtocolError, build_v1, build_v2, parse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus" / "proxyproto"
WORK_CORPUS = ROOT / "build" / "fuzz-corpus-proxyproto"
DICT = ROOT / "build" / "fuzz-proxyproto.dict"

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
V2_MAX = 16 + 4096
TAILS = (b"", b"\r\n", b" ", b"0", b"GET / HTTP/1.1\r\n\r\n")

V1_PIECES = [b"PROXY", b" ", b"TCP4", b"TCP6", b"UNKNOWN", b"1.2.3.4", b"255.255.255.255",
             b"0.0.0.0", b"01.2.3.4", b"1.2.3", b"::1", b"::", b"::ffff:1.2.3.4", b"2001:DB8::1",
             b"1::2::3", b"fe80::1%1", b"0", b"80", b"65535", b"65536", b"00", b"+1", b"-1",
             b"\r\n", b"\r", b"\n", b"x", b"\x00", b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
VER_CMDS = [0x20, 0x21, 0x22, 0x2F, 0x11, 0x31, 0x01]
FAMILIES = [0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x13, 0x41, 0x01, 0x10]
ADDR_LEN = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}


def note(kind: int) -> None:
    # distinct branches per outcome give libFuzzer's coverage something to follow
    if kind == 0:
        return
    if kind == 1:
        return
    if kind == 2:
        return
    if kind == 3:
        return


def outcome(data: bytes) -> object:
    try:
        got = parse(data)
    except ProxyProtocolError as exc:
        if not str(exc).startswith("PROXY"):
            raise AssertionError(f"reason {str(exc)!r} for {data!r}") from None
        return "error"
    if got is not None and type(got) is not tuple:
        raise AssertionError(f"parse({data!r}) gave {type(got).__name__}")
    return got


def canonical(ip: bytes) -> bool:
    af = socket.AF_INET6 if b":" in ip else socket.AF_INET
    try:
        return socket.inet_ntop(af, socket.inet_pton(af, ip.decode("ascii"))).encode() == ip
    except (OSError, UnicodeDecodeError):
        return False


def check(data: bytes) -> None:
    got = outcome(data)
    if got == "error":
        note(0)
        for tail in TAILS[1:]:
            if outcome(data + tail) != "error":
                raise AssertionError(f"refused {data!r} but not {data + tail!r}")
        return
    if got is None:
        note(1)
        for k in {0, len(data) // 2, max(len(data) - 1, 0)}:
            if outcome(data[:k]) is not None:
                raise AssertionError(f"{data!r} needs more, but its prefix {data[:k]!r} does not")
        return
    assert isinstance(got, tuple)
    consumed, src, sport, dst, dport = got
    if type(consumed) is not int or not 0 < consumed <= len(data):
        raise AssertionError(f"consumed {consumed!r} of {len(data)} bytes: {data!r}")
    if consumed > (V1_MAX if data[:1] == b"P" else V2_MAX):
        raise AssertionError(f"header of {consumed} bytes accepted: {data!r}")
    if (src is None) != (dst is None) or not (0 <= sport <= 65535 and 0 <= dport <= 65535):
        raise AssertionError(f"bad result {got!r} for {data!r}")
    if src is None:
        note(2)
        if sport or dport:
            raise AssertionError(f"ports without addresses: {got!r} for {data!r}")
    else:
        note(3)
        if type(src) is not bytes or type(dst) is not bytes:
            raise AssertionError(f"addresses are not bytes: {got!r}")
        if not canonical(src) or not canonical(dst):
            raise AssertionError(f"addresses not in inet_ntop form: {got!r} for {data!r}")
        for build in (build_v1, build_v2):
            header = build(src, sport, dst, dport)
            if parse(header) != (len(header), src, sport, dst, dport):
                raise AssertionError(f"{build.__name__}{got[1:]!r} = {header!r} "
                                     f"parses as {parse(header)!r}")
    header = data[:consumed]
    for tail in TAILS:
        if outcome(header + tail) != got:
            raise AssertionError(f"{header!r} + {tail!r} gave {outcome(header + tail)!r}, "
                                 f"not {got!r}")
    for k in {0, 1, consumed // 2, consumed - 1}:
        if k < consumed and outcome(header[:k]) is not None:
            raise AssertionError(f"truncation {header[:k]!r} of {header!r} is not None")


def built_v1(fdp: atheris.FuzzedDataProvider) -> bytes:
    out = [b"PROXY "]
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        out.append(fdp.PickValueInList(V1_PIECES))
    return b"".join(out)


def built_v2(fdp: atheris.FuzzedDataProvider) -> bytes:
    ver_cmd = fdp.PickValueInList(VER_CMDS)
    fam = fdp.PickValueInList(FAMILIES)
    body = bytearray(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 240)))
    if fdp.ConsumeBool():  # a well-formed address block, then TLVs of fuzzed lengths
        body = bytearray(bytes(ADDR_LEN.get(fam, 0)) + bytes(body))
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
            length = len(value) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 12)
            body += struct.pack("!BH", fdp.ConsumeIntInRange(0, 255), length) + value
    length = len(body) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 0xFFFF)
    return SIG + struct.pack("!BBH", ver_cmd, fam, length) + bytes(body)


def TestOneInput(data: bytes) -> None:
    check(data)
    fdp = atheris.FuzzedDataProvider(data)
    check(built_v1(fdp))
    check(built_v2(fdp))


DICT_WORDS = [b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"\r\n", SIG, SIG + b"\x21\x11",
              SIG + b"\x20\x00\x00\x00", b"\x00\x0c", b"\x00\x24", b"1.2.3.4 ", b"::1 ",
              b"::ffff:", b"65535", b"65536"]


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
    for fn in (TestOneInput, note, outcome, canonical, check, built_v1, built_v2):
        atheris.instrument_func(fn)
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
