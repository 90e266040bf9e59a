"""Fetch the pinned third-party C sources that the extensions compile against.

No third-party source is committed to this repository. llhttp and the xxHash
header come from the pinned source distributions of the packages ``llhttp``
and ``xxhash``: ``pip download`` fetches each sdist, its sha256 is checked
against the pin below, and only the files we compile (plus their licenses) are
copied into ``ext/third_party/``. A ``SOURCES`` marker records what was
fetched; when the marker matches the pins and every file still matches its
recorded hash, nothing is downloaded. The sdist ships ``ext/third_party/``,
which is why building from it needs no network.

Run standalone with ``python build_support.py [--force]``, or through
``python setup.py fetch_third_party``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent
THIRD_PARTY_DIR = ROOT / "ext" / "third_party"
MARKER = THIRD_PARTY_DIR / "SOURCES"

# Upper bound for one extracted member; the real files are well under 1 MiB.
_MAX_MEMBER_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str
    dest: str  # folder under ext/third_party/
    files: tuple[tuple[str, str], ...]  # (path inside the sdist, name in dest)


PINS: tuple[Pin, ...] = (
    Pin(
        name="llhttp",
        version="9.3.0.0",
        sha256="0d989363e7fb6f270b9d49956e7a3945c26778f8c70a166815264309ac6a8295",
        dest="llhttp",
        files=(
            ("lib/api.c", "api.c"),
            ("lib/http.c", "http.c"),
            ("lib/llhttp.c", "llhttp.c"),
            ("lib/llhttp.h", "llhttp.h"),
            ("LICENSE", "LICENSE"),
        ),
    ),
    Pin(
        name="xxhash",
        version="4.1.0",
        sha256="c9b288e4c1f5dae54417bc8a05e6f6daf505783d916b4783f4dd2f2e7d5db486",
        dest="xxhash",
        files=(
            ("deps/xxhash/xxhash.h", "xxhash.h"),
            # The xxHash library's own BSD-2-Clause license (not the binding's).
            ("deps/xxhash/LICENSE", "LICENSE"),
        ),
    ),
)


class ThirdPartyError(RuntimeError):
    """The pinned sources could not be fetched or did not verify."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pin_line(pin: Pin) -> str:
    return f"{pin.name}=={pin.version} sha256={pin.sha256} -> {pin.dest}/"


def _render_marker(file_hashes: dict[str, str]) -> str:
    lines = [
        "# Third-party sources fetched by build_support.py from pinned sdists. Do not edit.",
        "# <name>==<version> sha256=<sdist sha256> -> <folder>/ then <file sha256>  <file>",
    ]
    for pin in PINS:
        lines.append(_pin_line(pin))
        for _, dest_name in pin.files:
            rel = f"{pin.dest}/{dest_name}"
            lines.append(f"  {file_hashes[rel]}  {rel}")
    return "\n".join(lines) + "\n"


def is_up_to_date() -> bool:
    """True when the marker names exactly the current pins and every file matches it."""
    if not MARKER.is_file():
        return False
    recorded: dict[str, str] = {}
    pin_lines: list[str] = []
    for line in MARKER.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("  "):
            digest, _, rel = line.strip().partition("  ")
            recorded[rel] = digest
        else:
            pin_lines.append(line)
    if pin_lines != [_pin_line(pin) for pin in PINS]:
        return False
    expected = {f"{pin.dest}/{name}" for pin in PINS for _, name in pin.files}
    if set(recorded) != expected:
        return False
    for rel, digest in recorded.items():
        path = THIRD_PARTY_DIR / rel
        if not path.is_file() or _sha256_file(path) != digest:
            return False
    return True


def _download(pin: Pin, workdir: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check",
        "--dest", str(workdir), f"{pin.name}=={pin.version}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ThirdPartyError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); building fastproxy from a "
            f"git checkout needs the package index once to fetch {pin.name}=={pin.version} "
            "(an sdist of fastproxy already contains it).\n"
            f"--- pip stdout ---\n{proc.stdout}\n--- pip stderr ---\n{proc.stderr}"
        )
    tarballs = sorted(workdir.glob("*.tar.gz"))
    if len(tarballs) != 1:
        found = ", ".join(p.name for p in workdir.iterdir()) or "nothing"
        raise ThirdPartyError(
            f"expected one sdist (.tar.gz) of {pin.name}=={pin.version}, pip saved: {found}"
        )
    return tarballs[0]


def _verify(pin: Pin, tarball: Path) -> None:
    actual = _sha256_file(tarball)
    if actual != pin.sha256:
        raise ThirdPartyError(
            f"sha256 mismatch for {tarball.name}: expected {pin.sha256}, got {actual}. "
            "Refusing to build with unverified third-party sources."
        )


def _extract(pin: Pin, tarball: Path, dest: Path) -> None:
    """Copy only the pinned members, each to a destination name we choose."""
    wanted = dict(pin.files)
    found: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(tarball, mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            # Members live under one top folder, e.g. llhttp-9.3.0.0/lib/api.c.
            if len(parts) < 2:
                continue
            inner = "/".join(parts[1:])
            if inner not in wanted:
                continue
            if not member.isreg():
                raise ThirdPartyError(f"{tarball.name}: {member.name} is not a regular file")
            if member.size > _MAX_MEMBER_BYTES:
                raise ThirdPartyError(f"{tarball.name}: {member.name} is unexpectedly large")
            if inner in found:
                raise ThirdPartyError(f"{tarball.name}: {inner} appears more than once")
            found[inner] = member
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise ThirdPartyError(f"{tarball.name} lacks {', '.join(missing)}")
        dest.mkdir(parents=True, exist_ok=True)
        for inner, member in found.items():
            src = tar.extractfile(member)
            if src is None:
                raise ThirdPartyError(f"{tarball.name}: cannot read {member.name}")
            with src, (dest / wanted[inner]).open("wb") as out:
                shutil.copyfileobj(src, out)


def fetch(force: bool = False, log: Callable[[str], object] = print) -> bool:
    """Make ext/third_party/ match the pins. Returns True if anything was fetched."""
    if not force and is_up_to_date():
        return False
    THIRD_PARTY_DIR.mkdir(parents=True, exist_ok=True)
    # The marker goes last, so an interrupted fetch is redone next time.
    MARKER.unlink(missing_ok=True)
    file_hashes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fastproxy-third-party-") as tmp:
        for pin in PINS:
            log(f"fastproxy: fetching {pin.name}=={pin.version} (sdist, sha256-pinned)")
            workdir = Path(tmp) / pin.name
            workdir.mkdir()
            tarball = _download(pin, workdir)
            _verify(pin, tarball)
            dest = THIRD_PARTY_DIR / pin.dest
            if dest.exists():
                shutil.rmtree(dest)
            _extract(pin, tarball, dest)
            for _, name in pin.files:
                file_hashes[f"{pin.dest}/{name}"] = _sha256_file(dest / name)
    MARKER.write_text(_render_marker(file_hashes), encoding="utf-8")
    log(f"fastproxy: third-party sources ready in {THIRD_PARTY_DIR}")
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--force"]):
        print("usage: python build_support.py [--force]", file=sys.stderr)
        return 2
    try:
        fetched = fetch(force=args == ["--force"])
    except ThirdPartyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not fetched:
        print(f"fastproxy: third-party sources already match the pins ({MARKER})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
