"""atheris fuzz target: the ClientHello reader of tcp listeners (fastproxy._stream).

Each input is fed to a `HelloReader` whole and cut into pieces at fuzzed points;
both verdicts must equal the Python model's in tests/test_client_hello.py (which
the property tests use too), and a reader given more bytes after a verdict keeps
it. Inputs that start like a TLS record are also re-wrapped: the fuzzed bytes
as a handshake message in records of fuzzed sizes, so that libFuzzer reaches the
ClientHello body parse. Anything else, an exception included, is a crash.

    python tests/fuzz/fuzz_hello.py -max_total_time=10
    python tests/fuzz/fuzz_hello.py crash-<sha1>        # replay one input

Without corpus arguments it keeps what it learns in build/fuzz-corpus-hello/ and
starts from a few real ClientHellos (the ssl module's).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORK_CORPUS = ROOT / "build" / "fuzz-corpus-hello"
sys.path.insert(0, str(HERE.parent))

with atheris.instrument_imports():
    from test_client_hello import client_hello_bytes, handshake, model, pieces, records

from fastproxy._stream import HelloReader  # noqa: E402


def verdict(chunks: list[bytes], limit: int) -> tuple[str, bytes | None]:
    reader = HelloReader(limit)
    result = "more"
    for chunk in chunks:
        result = reader.feed(chunk)
        if result != "more":
            if reader.feed(b"\x16\x03\x01") != result:
                raise AssertionError("a verdict changed with more bytes")
            break
    return result, reader.server_name


def check(data: bytes, cuts: list[int], limit: int) -> None:
    expected = model(data, limit)
    whole = verdict([data], limit)
    if whole != expected:
        raise AssertionError(f"{data!r}: reader {whole}, model {expected}")
    split = verdict(pieces(data, cuts), limit)
    if split != expected:
        raise AssertionError(f"{data!r} cut at {sorted(cuts)}: reader {split}, model {expected}")


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.PickValueInList([16384, 512, 64])
    cuts = [fdp.ConsumeIntInRange(0, 600) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    rest = fdp.ConsumeBytes(4096)
    check(rest, cuts, limit)
    # The same bytes as a ClientHello body in records.
    message = handshake(rest)
    check(records(message, cuts), cuts[::-1], limit)


def seeds() -> None:
    WORK_CORPUS.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("a.example.com", None, "x.y")):
        hello = client_hello_bytes(name)
        # The FuzzedDataProvider takes the limit and the cuts first.
        (WORK_CORPUS / f"seed-{i}").write_bytes(b"\x00\x00" + hello)
        (WORK_CORPUS / f"seed-body-{i}").write_bytes(b"\x00\x00" + hello[9:])


def main(argv: list[str]) -> None:
    args = list(argv)
    if not any(a and not a.startswith("-") for a in args[1:]):
        seeds()
        args.append(str(WORK_CORPUS))
    for fn in (TestOneInput, verdict, check):
        atheris.instrument_func(fn)
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
