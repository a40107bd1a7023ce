#!/usr/bin/env bash
# Runs the Python host's benchmarks from python/.venv (run setup.sh first):
# per-call engine costs, then the cache against raw redis-py on a private redis-server.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$here/.venv/bin/python"
[ -x "$py" ] || { echo "bench.sh: no venv; run python/setup.sh first" >&2; exit 1; }
"$py" "$here/bench/engine_calls.py" "$@"
"$py" "$here/bench/bench.py" "$@"
