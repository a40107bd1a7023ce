#!/usr/bin/env bash
# Vets the Go host and runs its tests: the conformance replay of every vector in
# ../tests/vectors against both policies, and the load and failure tests.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
go vet ./...
go test -count=1 -v ./...
