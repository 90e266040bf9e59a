#!/usr/bin/env bash
# Install test: the manylinux wheel, installed into a fresh venv outside the
# source tree, works as a user gets it.
#
#   ci/install-test.sh [WHEEL]     default: build one with ci/build-wheels.sh for the
#                                  tool venv's Python
#
# Checks, all against the installed package (never the checkout: the venv is new,
# PYTHONPATH is unset, the working folder is a temporary one holding copies of
# tests/ and examples/ but no src/):
#   - `fastproxy --version` names llhttp, uvloop, OpenSSL 3 and zlib;
#   - `fastproxy check` passes on every examples/*.toml (tls.toml beside
#     certificates made here, as tests/test_cli_check.py does);
#   - the tests: a short smoke subset (SMOKE_TESTS below: the compiled parser,
#     router, TLS engine and compression, and a proxy process), or with
#     FASTPROXY_INSTALL_FULL=1 the whole suite (what ci/test.sh runs: the suite is
#     run against the installed package only, never against the checkout).
#
# Environment: FASTPROXY_VENV (tool venv, default .venv), FASTPROXY_INSTALL_PYTHON
# (the interpreter of the fresh venv, default the tool venv's; it must match the
# wheel's cp3XX tag), FASTPROXY_INSTALL_TESTS (pytest arguments replacing
# SMOKE_TESTS, paths relative to tests/), FASTPROXY_INSTALL_FULL=1 (every test).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTPROXY_VENV:-$ROOT/.venv}"
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
SMOKE_TESTS=(test_cli_check.py test_smoke.py test_parser.py test_router.py test_tls_engine.py
             test_compress.py test_url.py)

log() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastproxy-install.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# FASTPROXY_INSTALL_VENV=DIR: make the fresh venv there and leave it (ci/test.sh
# fuzzes the installed package with it, then removes it).
VENV_DIR="${FASTPROXY_INSTALL_VENV:-$WORK/venv}"

if [ "$#" -gt 0 ]; then
    wheel="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    [ -f "$wheel" ] || die "no such wheel: $1"
else
    [ -x "$VPY" ] || bash "$ROOT/ci/test.sh" --setup-only
    # Build for the same interpreter as the tool venv's (its base Python).
    bash "$ROOT/ci/build-wheels.sh" "$VPY" | tee "$WORK/build.log"
    wheel="$ROOT/$(grep -oE 'dist/wheelhouse/fastproxy-[^ ]+\.whl' "$WORK/build.log" | tail -n 1)"
    [ -f "$wheel" ] || die "ci/build-wheels.sh reported no wheel"
fi
log "wheel: $wheel"

BASE_PY="${FASTPROXY_INSTALL_PYTHON:-}"
if [ -z "$BASE_PY" ]; then
    BASE_PY="$("$VPY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
fi
log "fresh venv in $VENV_DIR ($("$BASE_PY" --version 2>&1))"
rm -rf "$VENV_DIR"
"$BASE_PY" -m venv "$VENV_DIR"
PY="$VENV_DIR/bin/python"
# The test extra brings pytest and the tests' helpers (trustme, requests, ...); the
# fuzz extra (atheris) when it installs.
if ! "$PY" -m pip install -q "${wheel}[test,fuzz]" >"$WORK/pip.log" 2>&1; then
    "$PY" -m pip install -q "${wheel}[test]" >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log" >&2; die "pip install of the wheel failed (output above)"; }
fi

cp -r "$ROOT/tests" "$WORK/tests"
cp -rL "$ROOT/examples" "$WORK/examples"   # -L: demo.toml is a link into src/
# The reference and the README: tests check them against the code (test_config_schema),
# their links, the README's feature table, the version and the license (test_docs).
cp -r "$ROOT/docs" "$WORK/docs"
cp "$ROOT/README.md" "$ROOT/CHANGELOG.md" "$ROOT/LICENSE" "$WORK/"
mkdir -p "$WORK/benchmarks"
cp "$ROOT/benchmarks/README.md" "$WORK/benchmarks/README.md"
rm -rf "$WORK/tests/__pycache__" "$WORK/tests/fuzz"
# pyproject.toml's pytest settings that change outcomes (no pyproject here: no src/ either).
printf '[pytest]\nxfail_strict = true\naddopts = -ra\n' >"$WORK/tests/pytest.ini"
cd "$WORK"
unset PYTHONPATH
where="$("$PY" -c 'import fastproxy._http, fastproxy._tls; print(fastproxy._tls.__file__)')"
case "$where" in
    "$VENV_DIR/"*) log "fastproxy is imported from the venv: $where" ;;
    *) die "fastproxy is imported from $where, not from the fresh venv" ;;
esac

log "fastproxy --version"
"$VENV_DIR/bin/fastproxy" --version | tee "$WORK/version.txt"
for want in '^fastproxy [0-9]' '^uvloop [0-9]' '^llhttp 9\.' '^OpenSSL 3\.' '^zlib 1\.'; do
    grep -Eq "$want" "$WORK/version.txt" || die "fastproxy --version lacks a line matching $want"
done

log "fastproxy check examples/*.toml"
# tls.toml names certificates that are not shipped: make them beside it.
"$PY" - "$WORK/examples/certs" <<'PY'
import pathlib, sys
import trustme
certs = pathlib.Path(sys.argv[1])
certs.mkdir()
ca = trustme.CA(key_type=trustme.KeyType.RSA)
ecdsa_ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
issued = {
    "site-rsa": ca.issue_cert("example.com", "www.example.com", key_type=trustme.KeyType.RSA),
    "site-ecdsa": ecdsa_ca.issue_cert("example.com", "www.example.com"),
    "api": ecdsa_ca.issue_cert("api.example.com", "*.api.example.com"),
}
for name, cert in issued.items():
    cert.cert_chain_pems[0].write_to_path(str(certs / f"{name}.pem"))
    cert.private_key_pem.write_to_path(str(certs / f"{name}.key"))
ca.cert_pem.write_to_path(str(certs / "clients-ca.pem"))
ecdsa_ca.cert_pem.write_to_path(str(certs / "internal-ca.pem"))
PY
checked=0
for config in "$WORK"/examples/*.toml; do
    if ! "$VENV_DIR/bin/fastproxy" check "$config" >"$WORK/check.out" 2>&1; then
        cat "$WORK/check.out" >&2
        die "fastproxy check $(basename "$config") failed (output above)"
    fi
    printf '    %s: %s\n' "$(basename "$config")" "$(head -n 1 "$WORK/check.out")"
    checked=$((checked + 1))
done
[ "$checked" -gt 0 ] || die "no examples/*.toml to check"

if [ -n "${FASTPROXY_INSTALL_TESTS:-}" ]; then
    read -r -a SMOKE_TESTS <<<"$FASTPROXY_INSTALL_TESTS"
fi
if [ "${FASTPROXY_INSTALL_FULL:-0}" = "1" ]; then
    SMOKE_TESTS=(. --durations=30)  # every test file; the slowest named (CI time)
fi
log "python -m pytest (installed package) in $WORK/tests: ${SMOKE_TESTS[*]}"
cd "$WORK/tests"
rc=0
"$PY" -m pytest -q -p no:cacheprovider -p no:benchmark "${SMOKE_TESTS[@]}" || rc=$?
case "$rc" in
    0) ;;
    5) die "pytest collected no tests (exit 5): the suite must run at least one test" ;;
    *) die "pytest failed (exit $rc)" ;;
esac
log "install test passed: $(basename "$wheel")"
