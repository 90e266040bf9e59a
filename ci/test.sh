#!/usr/bin/env bash
# The project's test command (see README): installs what the tests need, proves
# that the sdist carries the pinned third-party C sources and builds without
# network, installs that wheel into a fresh venv outside the tree and runs the
# whole test suite against it (ci/install-test.sh: the installed package, never
# the checkout), then runs the fuzz targets (parser, config loader, URL helpers,
# PROXY protocol, TLS engine, ClientHello reader, HPACK and HTTP/2 frames), each for
# a bounded time.
#
#   ci/test.sh                 everything (what CI runs, through .ci/run)
#   ci/test.sh PYTEST_ARGS...  only pytest on the checkout (editable install), with
#                              these arguments (a subset)
#   ci/test.sh --setup-only    system packages + .venv + editable install, nothing else
#
# Environment: PYTHON (interpreter for the venv, default python3.11/python3),
# FASTPROXY_VENV (default .venv in the repo), FASTPROXY_FUZZ_SECONDS (parser fuzzing,
# default 20), FASTPROXY_FUZZ_SMALL_SECONDS (config, URL, PROXY protocol and TLS fuzzing,
# each, default 10).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${FASTPROXY_VENV:-$ROOT/.venv}"
VPY="$VENV/bin/python"
FUZZ_SECONDS="${FASTPROXY_FUZZ_SECONDS:-20}"
FUZZ_SMALL_SECONDS="${FASTPROXY_FUZZ_SMALL_SECONDS:-10}"
FUZZ_TARGETS=(  # target=seconds, run in this order
    "tests/fuzz/fuzz_parser.py=$FUZZ_SECONDS"
    "tests/fuzz/fuzz_config.py=$FUZZ_SMALL_SECONDS"
    "tests/fuzz/fuzz_url.py=$FUZZ_SMALL_SECONDS"
    "tests/fuzz/fuzz_proxyproto.py=$FUZZ_SMALL_SECONDS"
    "tests/fuzz/fuzz_tls.py=$FUZZ_SMALL_SECONDS"
    "tests/fuzz/fuzz_hello.py=$FUZZ_SMALL_SECONDS"
    "tests/fuzz/fuzz_h2.py=$FUZZ_SMALL_SECONDS"
)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
export DEBIAN_FRONTEND=noninteractive

log() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastproxy-ci.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- system packages ------------------------------------------------------

have_cmd() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# Runs "$@" as root: directly, or through passwordless sudo. Returns 126 if neither.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n env DEBIAN_FRONTEND=noninteractive "$@"
    else
        return 126
    fi
}

apt_install() {  # apt_install PACKAGE...
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "no apt-get here: install $* yourself"
        return 1
    fi
    if ! as_root true; then
        warn "not root and no passwordless sudo: skipping apt-get install $*"
        return 1
    fi
    log "apt-get install $*"
    # Debian starts daemons on install; our tests start their own nginx, so keep
    # the packaged service from starting (policy-rc.d exit 101 = "not allowed").
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d' \
            && made_policy=1
    fi
    local rc=0
    as_root apt-get update -qq >/dev/null \
        && as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    if [ "$made_policy" -eq 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    return "$rc"
}

install_system_packages() {
    local missing=() tool
    for tool in nginx wrk redis-server; do
        have_cmd "$tool" || missing+=("$tool")
    done
    # fastproxy._tls is linked against OpenSSL: its headers are needed to build it.
    [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
    # fastproxy._compress calls zlib's deflate from C.
    [ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
    # The dashboard's browser test drives Debian's Chromium with Playwright (which is
    # told where it is, so it downloads no browser of its own).
    have_cmd chromium || missing+=(chromium)
    # h2load (HTTP/2 load client) drives the multiplexed HTTP/2 test and benchmark.
    have_cmd h2load || missing+=(nghttp2-client)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! apt_install "${missing[@]}"; then
        if as_root true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
            die "apt-get could not install ${missing[*]}"
        fi
        warn "continuing without ${missing[*]}: tests that need them will skip or fail"
    fi
}

# --- Python environment ---------------------------------------------------

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3 python; do
        if [ -z "$candidate" ] || ! command -v "$candidate" >/dev/null 2>&1; then
            continue
        fi
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    die "no Python >= 3.11 found (set PYTHON=/path/to/python3.11)"
}

make_venv() {
    if [ -x "$VPY" ] && "$VPY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        return 0
    fi
    local py
    py="$(find_python)"
    log "creating $VENV with $("$py" --version 2>&1)"
    rm -rf "$VENV"
    if ! "$py" -m venv "$VENV" 2>"$WORK/venv.err"; then
        # Debian ships ensurepip separately, as python3-venv / python3.X-venv.
        local ver
        ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        apt_install "python$ver-venv" || apt_install python3-venv \
            || die "cannot create a venv: $(cat "$WORK/venv.err")"
        rm -rf "$VENV"
        "$py" -m venv "$VENV" || die "cannot create a venv with $py"
    fi
}

install_build_requirements() {
    # Build requirements come from pyproject.toml, so they are listed in one place.
    local build_reqs=()
    mapfile -t build_reqs < <("$VPY" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))')
    log "installing build requirements: ${build_reqs[*]} build"
    "$VPY" -m pip install -q "${build_reqs[@]}" build
}

install_project() {
    # The editable install builds in this venv (no isolation): repeated runs are
    # fast and need no network once the pinned C sources are fetched.
    install_build_requirements
    log "pip install -e '.[test,fuzz]'"
    if "$VPY" -m pip install -q --no-build-isolation -e '.[test,fuzz]' >"$WORK/pip.log" 2>&1; then
        return 0
    fi
    log "that failed; retrying without the fuzz extra"
    if "$VPY" -m pip install -q --no-build-isolation -e '.[test]' >"$WORK/pip-test.log" 2>&1; then
        warn "atheris (the fuzz extra) could not be installed; fuzzing will be skipped. pip said:"
        tail -n 20 "$WORK/pip.log" >&2
        return 0
    fi
    cat "$WORK/pip-test.log" >&2
    die "pip install -e '.[test]' failed (output above)"
}

# --- checks -----------------------------------------------------------------

PYTEST_SUMMARY=""

run_pytest() {
    local args=("$@")
    [ "${#args[@]}" -eq 0 ] && args=(tests)
    log "python -m pytest -q -p no:cacheprovider -p no:benchmark ${args[*]}"
    local rc=0
    set +e
    "$VPY" -m pytest -q -p no:cacheprovider -p no:benchmark "${args[@]}" 2>&1 \
        | tee "$WORK/pytest.log"
    rc="${PIPESTATUS[0]}"
    set -e
    PYTEST_SUMMARY="$(grep -E '^=*\s*[0-9]+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed)' \
        "$WORK/pytest.log" | tail -n 1 || true)"
    case "$rc" in
        0) ;;
        5) die "pytest collected no tests (exit 5): the suite must run at least one test" ;;
        *) die "pytest failed (exit $rc)" ;;
    esac
}

# Copies the tracked and untracked-but-not-ignored files, i.e. what a fresh
# clone would have: the sdist build then fetches the C sources itself, inside
# pip's isolated build environment, as it does for a user.
clean_source_copy() {  # clean_source_copy DEST
    "$VPY" - "$ROOT" "$1" <<'PY'
import os, shutil, subprocess, sys
root, dest = sys.argv[1:]
out = subprocess.run(
    ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    check=True, capture_output=True,
).stdout.decode()
for rel in filter(None, out.split("\0")):
    src = os.path.join(root, rel)
    if os.path.isfile(src):  # tracked files deleted in the work tree are skipped
        os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))
PY
}

check_sdist() {
    local src="$ROOT"
    if command -v git >/dev/null 2>&1 && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        src="$WORK/clean-src"
        mkdir -p "$src"
        clean_source_copy "$src"
    fi
    log "python -m build --sdist (from a clean copy of the sources)"
    "$VPY" -m build --sdist --outdir "$WORK/sdist" "$src" >"$WORK/sdist.log" 2>&1 \
        || { cat "$WORK/sdist.log" >&2; die "building the sdist failed (output above)"; }
    local sdist
    sdist="$(find "$WORK/sdist" -maxdepth 1 -name 'fastproxy-*.tar.gz' | head -n 1)"
    [ -n "$sdist" ] || die "python -m build --sdist produced no fastproxy-*.tar.gz"

    tar -tzf "$sdist" >"$WORK/sdist.list"
    local f
    for f in ext/third_party/llhttp/llhttp.c ext/third_party/xxhash/xxhash.h \
             ext/third_party/SOURCES ext/third_party/llhttp/LICENSE \
             ext/third_party/xxhash/LICENSE build_support.py; do
        grep -qx "[^/]*/$f" "$WORK/sdist.list" || die "$(basename "$sdist") lacks $f"
    done
    if grep -Ex '[^/]*/ext/fastproxy/[^/]*\.(c|cpp|html)' "$WORK/sdist.list"; then
        die "$(basename "$sdist") ships Cython-generated files (listed above); check MANIFEST.in"
    fi

    mkdir -p "$WORK/unpacked"
    tar -xzf "$sdist" -C "$WORK/unpacked"
    local unpacked
    unpacked="$(find "$WORK/unpacked" -mindepth 1 -maxdepth 1 -type d | head -n 1)"

    local offline=() how
    if unshare -n true 2>/dev/null; then
        offline=(unshare -n --)
        how="in a network namespace without network (unshare -n)"
    else
        warn "unshare -n is not permitted here; falling back to PIP_NO_INDEX=1, which keeps pip" \
             "off the index but cannot stop the build itself from using the network"
        offline=(env PIP_NO_INDEX=1)
        how="with PIP_NO_INDEX=1 (unshare -n not permitted)"
    fi
    log "pip wheel from the unpacked sdist, offline"
    "${offline[@]}" "$VPY" -m pip wheel -q --no-deps --no-build-isolation --no-index \
        -w "$WORK/wheel" "$unpacked" >"$WORK/wheel.log" 2>&1 \
        || { cat "$WORK/wheel.log" >&2; die "the sdist did not build offline (output above)"; }
    local wheel
    wheel="$(find "$WORK/wheel" -maxdepth 1 -name 'fastproxy-*.whl' | head -n 1)"
    [ -n "$wheel" ] || die "pip wheel produced no fastproxy wheel"
    "$VPY" - "$wheel" <<'PY' || die "the offline-built wheel lacks the compiled extensions"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
exts = sorted(n for n in names if n.startswith("fastproxy/") and n.endswith(".so"))
if not any(n.startswith("fastproxy/_http.") for n in exts):
    sys.exit(f"no fastproxy/_http extension in {sys.argv[1]}: {exts}")
print("    extensions in wheel: " + ", ".join(exts))
PY
    log "sdist OK: $(basename "$sdist") carries the pinned C sources and built $how" \
        "into $(basename "$wheel")"
    SDIST_WHEEL="$wheel"
}

# The wheel built from the sdist, installed into a fresh venv outside the tree:
# --version, check on every example, and the whole test suite against it
# (ci/install-test.sh; run it alone to build and test the manylinux wheel instead).
INSTALLED_VENV="$WORK/installed"  # the fresh venv with the wheel (fuzzing uses it too)

run_install_test() {
    [ -n "${SDIST_WHEEL:-}" ] || die "no wheel from the sdist check to install"
    log "install test: $(basename "$SDIST_WHEEL") in a fresh venv, the whole suite"
    local rc=0
    set +e
    FASTPROXY_VENV="$VENV" FASTPROXY_INSTALL_FULL=1 FASTPROXY_INSTALL_VENV="$INSTALLED_VENV" \
        bash "$ROOT/ci/install-test.sh" "$SDIST_WHEEL" 2>&1 | tee "$WORK/pytest.log"
    rc="${PIPESTATUS[0]}"
    set -e
    PYTEST_SUMMARY="$(grep -E '^=*\s*[0-9]+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed)' \
        "$WORK/pytest.log" | tail -n 1 || true)"
    [ "$rc" -eq 0 ] || die "the install test failed (exit $rc; output above)"
}

run_fuzz() {  # run_fuzz PYTHON: a venv's interpreter with fastproxy and atheris
    local py="$1"
    if ! "$py" -c 'import atheris' 2>/dev/null; then
        warn "skipping fuzzing: atheris is not installed (see the install step above)"
        return 0
    fi
    mkdir -p "$ROOT/build/fuzz-artifacts"
    local entry target seconds fuzz_log
    for entry in "${FUZZ_TARGETS[@]}"; do
        target="${entry%=*}"
        seconds="${entry##*=}"
        if [ ! -f "$target" ]; then
            log "skipping fuzzing: $target does not exist yet"
            continue
        fi
        log "fuzzing: $target -max_total_time=$seconds"
        fuzz_log="$WORK/fuzz-$(basename "$target" .py).log"
        # timeout is a backstop in case the target ignores libFuzzer's time limit.
        timeout --kill-after=30 $((seconds * 3 + 60)) \
            "$py" "$target" -max_total_time="$seconds" \
            -artifact_prefix="$ROOT/build/fuzz-artifacts/" 2>"$fuzz_log" \
            || { tail -n 60 "$fuzz_log" >&2
                 die "fuzzing $target failed; crash inputs are in build/fuzz-artifacts/" \
                     "(replay one: $py $target build/fuzz-artifacts/crash-...)"; }
        tail -n 3 "$fuzz_log"
    done
}

# Repeats pytest's counts last, as "pytest: N passed, N failed, N skipped".
print_counts() {
    [ -n "$PYTEST_SUMMARY" ] || return 0
    count() { grep -oE "[0-9]+ $1" <<<"$PYTEST_SUMMARY" | grep -oE '^[0-9]+' || echo 0; }
    local failed=$(( $(count failed) + $(count 'errors?') ))
    printf 'pytest: %d passed, %d failed, %d skipped\n' "$(count passed)" "$failed" "$(count skipped)"
}

# --- main -----------------------------------------------------------------

install_system_packages
make_venv

if [ "${1:-}" = "--setup-only" ]; then
    install_project
    log "setup done: $VPY"
    exit 0
fi

if [ "$#" -gt 0 ]; then
    install_project
    run_pytest "$@"
    log "subset run: skipped the sdist and fuzz checks (run ci/test.sh without arguments for all)"
else
    # Everything runs against the wheel built from the sdist (compiled once): the
    # checkout's venv only holds the build tools.
    install_build_requirements
    check_sdist
    run_install_test
    run_fuzz "$INSTALLED_VENV/bin/python"
    log "all checks passed"
fi
print_counts
