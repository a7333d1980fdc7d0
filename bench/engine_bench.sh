#!/usr/bin/env bash
# Build and run the standalone engine benchmark (no napi, no TUN).
# Usage: bench/engine_bench.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/fakeproxy-engine-bench"
g++ -std=c++17 -O2 -Wall -Wextra -Wno-missing-field-initializers -pthread \
  bench/engine_bench.cc native/engine.cc native/read_ring.cc native/flow_table.cc native/checksum.cc -o "$out"
exec "$out" "$@"
