#!/usr/bin/env bash
# Runs the tunnel benchmarks with the real binaries on loopback and writes
# docs/benchmarks.md: each figure next to the same measurement made directly
# in the same run, with the ratio (see e2e/benchdriver). Bounded: about a
# quarter of an hour on 2 cores (1 GiB per bulk transfer, 5 s per load, each
# comparison three times with the median reported, curl and wrk against a
# lean origin, 10,000 idle sessions held 30 s). It needs curl and wrk
# (make bench installs them: scripts/test-deps.sh --bench; without them
# those rows are left out). Extra arguments go to the driver, e.g.
#   scripts/bench.sh -phases small,tools -only 'TCP.*reverse' -out /tmp/rows.md  (some rows alone)
#   scripts/bench.sh -bulk-mib 256 -sessions 2000 -hold 5s -out /tmp/bench.md
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
make --no-print-directory build  # the binaries users get: static, stripped
go run ./e2e/benchdriver -bin bin -out docs/benchmarks.md "$@"
