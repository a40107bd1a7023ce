#!/usr/bin/env bash
# Runs the JavaScript host's tests with node's test runner (run setup.sh first): the policy trace
# vectors and wire vectors, the wrapper's tests, and the cache, protocol and npm-pack tests, each
# against its own redis-server (on the PATH, or $REDIS_SERVER) on a free loopback port.
# ACI_POLICY_DIR / ACI_VECTORS_DIR override the policy / vector folders; ACI_SKIP_PACK=1 skips
# the npm pack test. Extra args go to node (e.g. --test-reporter=tap).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$here/node_modules/@bytecodealliance/jco" ]; then
    echo "test.sh: no node_modules; run js/setup.sh first" >&2
    exit 1
fi
if ! command -v "${ACI_REDIS_SERVER:-${REDIS_SERVER:-redis-server}}" >/dev/null 2>&1; then
    echo "test.sh: redis-server not found (apt-get install redis-server, or set REDIS_SERVER)" >&2
    exit 1
fi
cd "$here"
exec node --test "$@" test/*.test.js
