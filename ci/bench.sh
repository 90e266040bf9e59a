#!/usr/bin/env bash
# Benchmarks: the pytest-benchmark micro suites (saved under .benchmarks/ for
# comparison with earlier runs), then the short end-to-end comparison.
# Extra arguments go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VPY="${FASTPROXY_VENV:-$ROOT/.venv}/bin/python"

# Same environment as the tests (nginx, wrk, .venv with the test extra).
bash "$ROOT/ci/test.sh" --setup-only

[ -d benchmarks ] || { echo "ERROR: no benchmarks/ folder yet" >&2; exit 1; }
"$VPY" -m pytest benchmarks -q --benchmark-only --benchmark-autosave "$@"
"$VPY" benchmarks/e2e.py --quick --install  # --install: HAProxy as the third peer
