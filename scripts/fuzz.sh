#!/usr/bin/env bash
# Runs every Go fuzz target in the tree for the given time each (default 5s).
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-5s}
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
  pkg=./$(dirname "${file#./}")
  for name in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //'); do
    echo "fuzz $pkg $name ($fuzztime)"
    go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg" >/tmp/fuzz-$$.log 2>&1 || {
      cat /tmp/fuzz-$$.log; rm -f /tmp/fuzz-$$.log; exit 1; }
  done
done
rm -f /tmp/fuzz-$$.log
