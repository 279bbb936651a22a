#!/usr/bin/env bash
# Benchmark native status / verify / restore-db against etcdctl 3.4 and etcdutl 3.5.
# Prints a table: tool, wall s, peak RSS MiB, ratio. Builds the test binary in release mode.
#   BENCH_MB=600 (size of the generated snapshot, cached in BENCH_DIR=/tmp/lifeboat-bench)
#   BENCH_SNAPSHOT=/path/to/snap.db (use an existing `etcdctl snapshot save` file instead)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/target}"
exec cargo test --release --test integration -- --ignored --exact snapshot_bench::bench --nocapture --test-threads=1
