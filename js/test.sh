#!/usr/bin/env bash
# Runs the JavaScript host's tests with node's test runner (run setup.sh first): every trace
# vector of tests/vectors/ against a fresh instance of its policy, and the wrapper's own tests.
# ACI_POLICY_DIR / ACI_VECTORS_DIR override the policy / vector folders. Extra args go to node
# (e.g. --test-reporter=tap).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -d "$here/node_modules/@bytecodealliance/jco" ]; then
    echo "test.sh: no node_modules; run js/setup.sh first" >&2
    exit 1
fi
cd "$here"
exec node --test "$@" test/*.test.js
