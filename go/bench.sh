#!/usr/bin/env bash
# Prints the cost of one engine call from Go, one line per call kind:
#   engine-call go <op> <nanoseconds per call>
# for op in record-write, status, pending-batch-100. Extra arguments go to cmd/enginebench
# (e.g. -dir DIR instead of ACI_POLICY_DIR; -call-timeout 0 to measure calls without their
# deadline). Takes about 15 s.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
go run ./cmd/enginebench "$@"
