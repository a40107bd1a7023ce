#!/usr/bin/env bash
# Runs the Python host's tests from python/.venv (run setup.sh first). Extra args go to pytest.
# Needs redis-server on PATH (the tests start their own on a free loopback port).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -x "$here/.venv/bin/python" ]; then
    echo "test.sh: no venv; run python/setup.sh first" >&2
    exit 1
fi
cd "$here"
exec "$here/.venv/bin/python" -m pytest "$@"
