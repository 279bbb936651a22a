#!/usr/bin/env bash
# The test command: installs what is missing (scripts/install.sh), then runs every test
# (unit, integration against real etcd 3.4/3.5, S3 on loopback, Prometheus, deploy checks).
# The build directory is kept between runs (CARGO_TARGET_DIR, default ~/.cache/etcd-lifeboat/target).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/target}"
export CARGO_TERM_COLOR=never
mkdir -p "$CARGO_TARGET_DIR"
LOG="$CARGO_TARGET_DIR/test-output.log"
set +e
cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
echo "== summary (one line per test binary: unit tests of the library and the binary, then tests/integration.rs) =="
grep -E '^test result:' "$LOG" || true
grep -E '^test result:' "$LOG" | awk '{p+=$4; f+=$6; s+=$8} END {printf "%d passed, %d failed, %d skipped\n", p, f, s}'
exit "$status"
