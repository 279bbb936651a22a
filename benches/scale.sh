#!/usr/bin/env bash
# Scale benchmark (issue 15): etcd-lifeboat on multi-GiB dbs against etcd's own tools, in the
# same run, with wall time and peak RSS of every command.
#
# The dbs are built ONCE (etcd 3.5 filled through its JSON gateway by benches/scale_fill.py,
# then `etcdctl snapshot save`) into CACHE (default ~/.cache/etcd-lifeboat/bench/) and reused;
# only those snapshot files stay there. Per db and run:
#   status:  etcdctl snapshot status  vs  etcd-lifeboat status --skip-hash-check (and plain status)
#   restore: etcdutl snapshot restore vs  etcd-lifeboat restore  vs  cp + fsync of the db (floor)
#   backup:  etcd started on our restored data dir; etcdctl snapshot save vs etcd-lifeboat
#            backup (local store; S3 too when S3_ENDPOINT is set, see benches/s3-garage.sh)
#   verify:  etcd-lifeboat verify latest (local store; S3 too)
#   restore --from-store (local store; S3 too)
# The commands compared with each other run in rounds (RUNS rounds, each tool once per round, in
# the order above), and each row is the median of its RUNS runs.
# Restored dirs, saved snapshots and stores are deleted after each measurement.
#
# Usage: benches/scale.sh              (from anywhere; builds the release binary)
# Env:   SIZES="4" (GiB of the 64 KiB-values db, "256m" for MiB; "4 8" adds 8 GiB, skipped when the disk would
#        keep < 10 GB free), K8S_GIB=4 (size of the small-keys db, 0 = skip), RUNS=1,
#        CACHE=dir, WORK=dir (scratch, default under CARGO_TARGET_DIR), ETCD35_DIR (etcd, etcdctl,
#        etcdutl 3.5; default ~/.cache/etcd-lifeboat/etcd-3.5.30/usr/bin), LIFEBOAT=binary
#        (skip the build), ONLY="status restore local backup verify" (subset; without
#        "local" only the S3 rows of backup and verify),
#        S3_ENDPOINT/S3_BUCKET/AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/S3_REGION (S3 rows),
#        S3_PART_MIB="8" (part sizes to try, MiB), S3_CHECKSUM=when_supported,
#        LEVELS="3" (zstd levels of the local-store backup rows, e.g. "1 3"; the default config's is 3)
#        (storage.s3.checksum: CRC32C; when_required sends Content-MD5, an MD5 pass per byte);
#        the S3 server: scripts/bench-seaweedfs.sh or scripts/bench-garage.sh
#        (`eval "$(scripts/bench-garage.sh start DIR)"`; with GARAGE_PID set, the CPU seconds
#        of etcd-lifeboat, etcd and Garage are logged for each run)
# Disk: CACHE holds the snapshots (4 GiB + K8S_GIB [+ 8 GiB]); WORK needs about 2x the
# largest db at a time (restored data dir + one saved snapshot or store object). With CACHE and
# WORK on one XFS (reflink=1) or btrfs file system the restores clone the db instead of copying
# it (ours, etcdutl's and cp's alike): ONLY="status restore" there measures that path.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
C=${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat
CACHE=${CACHE:-$C/bench}
SIZES=${SIZES:-4}
K8S_GIB=${K8S_GIB:-4}
RUNS=${RUNS:-1}
ONLY=${ONLY:-status restore local backup verify}
ETCD35_DIR=${ETCD35_DIR:-$C/etcd-3.5.30/usr/bin}
ETCD=$ETCD35_DIR/etcd ETCDCTL=$ETCD35_DIR/etcdctl ETCDUTL=$ETCD35_DIR/etcdutl
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$C/target}
WORK=${WORK:-$CARGO_TARGET_DIR/scale-bench}
RESULTS=${RESULTS:-$WORK/results.tsv}
export ETCDCTL_API=3
mkdir -p "$CACHE" "$WORK"
: >"$RESULTS"

ETCD_PID=
cleanup() {
  if [[ -n $ETCD_PID ]]; then kill "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; fi
  rm -rf "$WORK/src.etcd" "$WORK/run"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
log() { echo "[$(date -u +%T)] $*" >&2; }

if [[ -z ${LIFEBOAT:-} ]]; then
  log "building the release binary ..."
  (cd "$ROOT" && cargo build --release --quiet)
  LIFEBOAT=$CARGO_TARGET_DIR/release/etcd-lifeboat
fi

# start_etcd DATA_DIR NAME PEER_PORT CLIENT_PORT: etcd 3.5 with a quota fit for 8 GiB.
# SNAPSHOT_COUNT: the fill uses 10000 so that etcd purges its WAL as it goes (without it the
# WAL of an 8 GiB fill is another 8 GiB on disk).
start_etcd() {
  "$ETCD" --name "$2" --data-dir "$1" --quota-backend-bytes=$((12 * 1024 * 1024 * 1024)) \
    --listen-client-urls "http://127.0.0.1:$4" --advertise-client-urls "http://127.0.0.1:$4" \
    --listen-peer-urls "http://127.0.0.1:$3" --initial-advertise-peer-urls "http://127.0.0.1:$3" \
    --initial-cluster "$2=http://127.0.0.1:$3" --snapshot-count="${SNAPSHOT_COUNT:-1000000}" \
    --max-request-bytes=$((4 * 1024 * 1024)) >"$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  for _ in $(seq 300); do
    "$ETCDCTL" --endpoints="http://127.0.0.1:$4" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd did not start, see $WORK/etcd.log" >&2
  exit 1
}
stop_etcd() { kill "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true; ETCD_PID=; }

# bytes SIZE: "4" is 4 GiB, "256m" is 256 MiB.
bytes() { if [[ $1 == *m ]]; then echo $((${1%m} * 1024 * 1024)); else echo $(($1 * 1024 * 1024 * 1024)); fi; }

# build_db SHAPE SIZE: the cached snapshot CACHE/SHAPE-SIZE.db (built once).
build_db() {
  local snap=$CACHE/$1-$2.db
  if [[ -f $snap ]]; then echo "$snap"; return; fi
  log "building $snap (etcd 3.5 filled through its gateway) ..."
  local t0=$SECONDS cp pp
  cp=$(port); pp=$(port)
  rm -rf "$WORK/src.etcd"
  SNAPSHOT_COUNT=10000 start_etcd "$WORK/src.etcd" fill "$pp" "$cp"
  python3 "$ROOT/benches/scale_fill.py" "http://127.0.0.1:$cp" "$1" $(($(bytes "$2") * 63 / 64)) >&2
  "$ETCDCTL" --endpoints="http://127.0.0.1:$cp" snapshot save "$snap.tmp" >/dev/null
  stop_etcd
  rm -rf "$WORK/src.etcd"
  chmod 600 "$snap.tmp"
  mv "$snap.tmp" "$snap"
  log "built $snap ($(stat -c %s "$snap") bytes) in $((SECONDS - t0)) s"
  echo "$snap"
}

# cpu_s PID: user + system CPU seconds of a running process so far (0 when not running).
cpu_s() {
  [[ -n ${1:-} ]] && awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# Measurements run in groups: `add TOOL PRE CMD...` queues a command (PRE: a shell snippet run
# before each of its runs, untimed), `run_group DB OP` runs the queue RUNS times in rounds (each
# round runs every queued command once, in order), so that a drift of the machine (page cache,
# the disk's pending discards, other load) falls on every tool of a comparison alike. Each run
# is timed with GNU time (page cache as the previous step left it) and logged with its CPU
# seconds: the command's own, etcd's and the S3 server's (GARAGE_PID). Per tool, RESULTS gets
# "db op tool wall_s rss_mib" (median wall, max RSS).
G_TOOLS=() G_PRES=() G_CMDS=()
add() { # TOOL PRE CMD...
  G_TOOLS+=("$1"); G_PRES+=("$2"); shift 2
  G_CMDS+=("$(printf '%q ' "$@")")
}
run_group() { # DB OP
  local db=$1 op=$2 n=${#G_TOOLS[@]} r i w m u s e0 g0
  local -a walls rss
  for r in $(seq "$RUNS"); do
    for ((i = 0; i < n; i++)); do
      [[ -n ${G_PRES[i]} ]] && eval "${G_PRES[i]}"
      e0=$(cpu_s "$ETCD_PID"); g0=$(cpu_s "${GARAGE_PID:-}")
      if ! eval "/usr/bin/time -f '%e %M %U %S' -o '$WORK/time.txt' ${G_CMDS[i]}" >"$WORK/cmd.log" 2>&1; then
        echo "${G_TOOLS[i]} failed:" >&2; tail -20 "$WORK/cmd.log" >&2; exit 1
      fi
      read -r w m u s <"$WORK/time.txt"
      log "  round $r, ${G_TOOLS[i]}: ${w} s, CPU s: own $(echo "$u + $s" | bc), etcd $(echo "$(cpu_s "$ETCD_PID") - $e0" | bc), S3 server $(echo "$(cpu_s "${GARAGE_PID:-}") - $g0" | bc); load $(cut -d' ' -f1 /proc/loadavg)"
      walls[i]="${walls[i]:-} $w"
      ((m > ${rss[i]:-0})) && rss[i]=$m
    done
  done
  for ((i = 0; i < n; i++)); do
    w=$(printf '%s\n' ${walls[i]} | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    printf '%s\t%s\t%s\t%s\t%.0f\n' "$db" "$op" "${G_TOOLS[i]}" "$w" "$((rss[i] / 1024))" >>"$RESULTS"
    log "$db $op ${G_TOOLS[i]}: ${w} s (median of $RUNS), $((rss[i] / 1024)) MiB"
  done
  G_TOOLS=() G_PRES=() G_CMDS=()
}

# config STORE_DIR CLIENT_PORT [S3_PART_MIB] [LEVEL]: a config file for the member; S3 when a part
# size is given; one file per part size and level (all of a group's files exist at once).
config() {
  local f=$WORK/run/lifeboat-${3:-local}${4:+-level$4}.yaml
  {
    printf 'etcd:\n  endpoints: ["http://127.0.0.1:%s"]\n  dial_timeout: 5s\n  request_timeout: 60s\n' "$2"
    if [[ -n ${3:-} ]]; then
      printf 'storage:\n  backend: s3\n  s3:\n    bucket: %s\n    prefix: %s\n    endpoint: %s\n' \
        "$S3_BUCKET" "scale-$3" "$S3_ENDPOINT"
      printf '    region: %s\n    force_path_style: true\n    insecure: true\n    part_size: %s\n' \
        "${S3_REGION:-garage}" $(($3 * 1024 * 1024))
      printf '    checksum: %s\n' "${S3_CHECKSUM:-when_supported}"
    else
      printf 'storage:\n  backend: local\n  local:\n    path: %s\n' "$1"
    fi
    printf 'compression:\n  level: %s\n' "${LEVEL:-3}"
  } >"$f"
  echo "$f"
}

has() { [[ " $ONLY " == *" $1 "* ]]; }

bench_db() { # SNAPSHOT LABEL
  local snap=$1 db=$2 run=$WORK/run
  rm -rf "$run"; mkdir -p "$run"
  log "== $db: $(stat -c %s "$snap") bytes"
  cat "$snap" >/dev/null 2>&1 || true # same page-cache start for every tool
  if has status; then
    add "etcdctl snapshot status" "" "$ETCDCTL" snapshot status "$snap"
    add "etcd-lifeboat status --skip-hash-check" "" "$LIFEBOAT" status --skip-hash-check "$snap"
    add "etcd-lifeboat status (sha256 too)" "" "$LIFEBOAT" status "$snap"
    run_group "$db" status
  fi
  local pp cp
  pp=$(port); cp=$(port)
  local ic=(--name bench --initial-cluster "bench=http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp")
  if has restore; then
    add "etcdutl snapshot restore" "rm -rf $run/u; sync" "$ETCDUTL" snapshot restore "$snap" --data-dir "$run/u" "${ic[@]}"
    add "cp + fsync (floor)" "rm -f $run/cp.db; sync" sh -c "cp '$snap' '$run/cp.db' && sync '$run/cp.db'"
    add "etcd-lifeboat restore" "rm -rf $run/o; sync" "$LIFEBOAT" restore --snapshot "$snap" --data-dir "$run/o" "${ic[@]}"
    run_group "$db" restore
    rm -rf "$run/u" "$run/cp.db" "$run/o"
  fi
  if has local && { has backup || has verify; }; then
    "$LIFEBOAT" restore --snapshot "$snap" --data-dir "$run/o" "${ic[@]}" >/dev/null 2>&1
    start_etcd "$run/o" bench "$pp" "$cp"
    add "etcdctl snapshot save" "rm -f $run/save.db; rm -rf $run/store; sync" "$ETCDCTL" --endpoints="http://127.0.0.1:$cp" snapshot save "$run/save.db"
    local cfg lv label
    # One row per zstd level in LEVELS; verify and restore below read the last one's backup
    # (the last command of the last round).
    for lv in ${LEVELS:-3}; do
      cfg=$(LEVEL=$lv config "$run/store" "$cp" "" "$lv")
      label="etcd-lifeboat backup, local store"; [[ $lv != 3 ]] && label+=", zstd level $lv"
      add "$label" "rm -f $run/save.db; rm -rf $run/store; sync" "$LIFEBOAT" --config "$cfg" backup --no-progress
    done
    run_group "$db" backup
    rm -f "$run/save.db"
    stop_etcd
    rm -rf "$run/o"
    if has verify; then
      add "etcd-lifeboat verify, local store" "sync" "$LIFEBOAT" --config "$cfg" verify latest
      run_group "$db" verify
      add "etcd-lifeboat restore --from-store, local" "rm -rf $run/o; sync" "$LIFEBOAT" --config "$cfg" restore --from-store latest --data-dir "$run/o" "${ic[@]}"
      run_group "$db" restore
      rm -rf "$run/o"
    fi
    rm -rf "$run/store"
  fi
  if [[ -n ${S3_ENDPOINT:-} ]] && { has backup || has verify; }; then
      # S3: etcd again, on a fresh restore (from the cached snapshot, untimed).
      "$LIFEBOAT" restore --snapshot "$snap" --data-dir "$run/o" "${ic[@]}" >/dev/null 2>&1
      start_etcd "$run/o" bench "$pp" "$cp"
      if ! has local; then
        add "etcdctl snapshot save" "rm -f $run/save.db; sync" "$ETCDCTL" --endpoints="http://127.0.0.1:$cp" snapshot save "$run/save.db"
      fi
      for ps in ${S3_PART_MIB:-8}; do
        cfg=$(config "" "$cp" "$ps")
        add "etcd-lifeboat backup, S3 part ${ps} MiB" "rm -f $run/save.db; sync" "$LIFEBOAT" --config "$cfg" backup --no-progress
      done
      run_group "$db" backup
      rm -f "$run/save.db"
      stop_etcd
      rm -rf "$run/o"
      if has verify; then
        add "etcd-lifeboat verify, S3" "" "$LIFEBOAT" --config "$cfg" verify latest
        run_group "$db" verify
        add "etcd-lifeboat restore --from-store, S3" "rm -rf $run/o; sync" "$LIFEBOAT" --config "$cfg" restore --from-store latest --data-dir "$run/o" "${ic[@]}"
        run_group "$db" restore
        rm -rf "$run/o"
      fi
  fi
  rm -rf "$run"
}

DBS=()
for g in $SIZES; do
  if [[ $g != *m ]] && ((g > 4)); then
    free_gb=$(df -BG --output=avail "$CACHE" | tail -1 | tr -dc 0-9)
    have=0; [[ -f $CACHE/big-$g.db ]] && have=$g
    # Snapshot in the cache + restored dir + saved copy, and 10 GB left.
    if ((free_gb - (g - have) - 2 * g - 1 < 10)); then
      log "skipping ${g} GiB: $free_gb GB free, need $(((g - have) + 2 * g + 1 + 10))"
      continue
    fi
  fi
  DBS+=("$(build_db big "$g"):64KiB-values-$g")
done
if [[ $K8S_GIB != 0 ]]; then DBS+=("$(build_db k8s "$K8S_GIB"):k8s-small-keys-$K8S_GIB"); fi

for d in "${DBS[@]}"; do bench_db "${d%%:*}" "${d##*:}"; done

python3 "$ROOT/benches/scale_table.py" "$RESULTS" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$RUNS"
