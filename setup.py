"""Build the Cython hot paths of fastproxy.

Metadata lives in pyproject.toml; this file only declares the extensions and
makes sure the pinned third-party C sources are in ext/third_party/ first
(see build_support.py).

Environment switches:
  FASTPROXY_CYTHON_TRACE=1  linetrace/profile directives + CYTHON_TRACE(_NOGIL)=1,
                            for profiling and line coverage builds.
  FASTPROXY_ANNOTATE=1      write Cython's annotated .html next to each .pyx.
  FASTPROXY_LIMITED_API=1   build against the stable ABI (Py_LIMITED_API 3.11,
                            CYTHON_LIMITED_API): abi3 extensions, for measuring
                            what the limited API costs (benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import ClassVar

from setuptools import Command, Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.egg_info import egg_info as _egg_info

HERE = Path(__file__).resolve().parent
# PEP 517 backends do not promise the project folder on sys.path.
sys.path.insert(0, str(HERE))

import build_support  # noqa: E402

EXT_DIR = "ext/fastproxy"
LLHTTP_DIR = "ext/third_party/llhttp"
XXHASH_DIR = "ext/third_party/xxhash"

# Modules that need C sources besides their .pyx. Every other
# ext/fastproxy/*.pyx is discovered and built as fastproxy.<stem> on its own.
EXTRA_C_SOURCES: dict[str, list[str]] = {
    "fastproxy._http": [f"{LLHTTP_DIR}/{name}.c" for name in ("api", "http", "llhttp")],
}

# Modules linked against system libraries (OpenSSL: its headers are needed to build;
# a manylinux wheel gets libssl/libcrypto vendored by auditwheel).
LIBRARIES: dict[str, list[str]] = {
    "fastproxy._tls": ["ssl", "crypto"],
    "fastproxy._compress": ["z"],  # zlib's deflate, called from C (zlib.h needed to build)
}

INCLUDE_DIRS = [LLHTTP_DIR, XXHASH_DIR, EXT_DIR]
# xxhash.h is used header-only: every function is static inline in the unit that includes it.
DEFINE_MACROS: list[tuple[str, str | None]] = [("XXH_INLINE_ALL", "1")]
EXTRA_COMPILE_ARGS = ["-O2"]

CYTHON_DIRECTIVES: dict[str, object] = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def discover_extensions() -> list[Extension]:
    modules = {f"fastproxy.{p.stem}": p for p in sorted((HERE / EXT_DIR).glob("*.pyx"))}
    missing = sorted(set(EXTRA_C_SOURCES) - set(modules))
    if missing:
        raise SystemExit(f"setup.py: no .pyx in {EXT_DIR}/ for {', '.join(missing)}")
    trace = _env_flag("FASTPROXY_CYTHON_TRACE")
    macros = list(DEFINE_MACROS)
    if trace:
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    limited = _env_flag("FASTPROXY_LIMITED_API")
    if limited:
        macros += [("Py_LIMITED_API", "0x030B0000"), ("CYTHON_LIMITED_API", "1")]
    return [
        Extension(
            name,
            sources=[f"{EXT_DIR}/{pyx.name}", *EXTRA_C_SOURCES.get(name, [])],
            include_dirs=INCLUDE_DIRS,
            define_macros=macros,
            extra_compile_args=EXTRA_COMPILE_ARGS,
            libraries=LIBRARIES.get(name, []),
            py_limited_api=limited,
        )
        for name, pyx in modules.items()
    ]


def _cythonize(extensions: list[Extension]) -> list[Extension]:
    from Cython.Build import cythonize

    directives = dict(CYTHON_DIRECTIVES)
    if _env_flag("FASTPROXY_CYTHON_TRACE"):
        directives.update(linetrace=True, profile=True)
    annotate = _env_flag("FASTPROXY_ANNOTATE")
    # cythonize only compares timestamps; regenerate the C when the options change,
    # so a traced build never leaks into a normal one (or back).
    stamp = HERE / "build" / "cython-options.json"
    options = json.dumps({"directives": directives, "annotate": annotate}, sort_keys=True)
    force = not stamp.is_file() or stamp.read_text(encoding="utf-8") != options
    result: list[Extension] = cythonize(
        extensions,
        include_path=["ext"],
        compiler_directives=directives,
        annotate=annotate,
        force=force,
    )
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(options, encoding="utf-8")
    return result


def _fetch_third_party(force: bool = False) -> bool:
    try:
        return build_support.fetch(force=force)
    except build_support.ThirdPartyError as exc:
        raise SystemExit(f"error: {exc}") from None


class build_ext(_build_ext):
    def finalize_options(self) -> None:
        _fetch_third_party()
        if self.distribution.ext_modules:
            self.distribution.ext_modules[:] = _cythonize(self.distribution.ext_modules)
        super().finalize_options()


class egg_info(_egg_info):
    """Fetch before the file list is made, so an sdist always carries ext/third_party/."""

    def run(self) -> None:
        _fetch_third_party()
        super().run()


class fetch_third_party(Command):
    description = "fetch the pinned llhttp/xxHash sources into ext/third_party/"
    user_options: ClassVar[list[tuple[str, str, str]]] = [
        ("force", "f", "fetch again even if the marker matches the pins")
    ]
    boolean_options: ClassVar[list[str]] = ["force"]

    def initialize_options(self) -> None:
        self.force = False

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        if not _fetch_third_party(force=bool(self.force)):
            print(f"third-party sources already match the pins ({build_support.MARKER})")


setup(
    ext_modules=discover_extensions(),
    cmdclass={"build_ext": build_ext, "egg_info": egg_info, "fetch_third_party": fetch_third_party},
)
