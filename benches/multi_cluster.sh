#!/usr/bin/env bash
# Memory of one daemon serving many clusters (issue 15, "many clusters"): RSS of
# `etcd-lifeboat daemon` idle with 1, 10 and 50 clusters.
#
# MEMBERS single-member etcd clusters run on loopback (default 10, each with 100 keys of
# 1 KiB). With N clusters, cluster j uses etcd j % MEMBERS: up to MEMBERS every cluster has an
# etcd of its own; beyond, clusters share etcd servers (same etcd cluster id) but each has its
# own store directory (storage omitted in the entry: <store root>/<name>) and its own
# election key. Per N:
#   1. start the daemon (empty stores: every cluster takes its catch-up backup at once),
#      wait until /readyz is 200 (every cluster has a fresh backup), note VmHWM: the
#      start-up peak with N concurrent backups; stop it (SIGTERM);
#   2. start it again on the same stores (fresh backups, schedule yearly: no backup runs),
#      wait SETTLE seconds (catalog refreshes every REFRESH), read VmRSS and VmHWM from
#      /proc/PID/status: the idle figures; stop it.
# Prints a table: clusters, idle VmRSS, idle VmHWM, idle RSS added per cluster over the
# 1-cluster daemon, start-up VmHWM, threads.
#
# Usage: benches/multi_cluster.sh            (COUNTS="1 10 50" by default)
# Env:   COUNTS, MEMBERS=10, SETTLE=20, REFRESH=30s, ELECTION=false (true: leader election
#        on, one lease and keep-alive stream per cluster), LIFEBOAT=binary (default the debug
#        build under CARGO_TARGET_DIR or target/; build it first), ETCD=/usr/bin/etcd,
#        ETCDCTL=/usr/bin/etcdctl, WORK=dir (scratch; default a temp dir, removed).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${COUNTS:-"1 10 50"}
MEMBERS=${MEMBERS:-10}
SETTLE=${SETTLE:-20}
REFRESH=${REFRESH:-30s}
ELECTION=${ELECTION:-false}
LIFEBOAT=${LIFEBOAT:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/etcd-lifeboat}
ETCD=${ETCD:-/usr/bin/etcd}
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}
[ -x "$LIFEBOAT" ] || { echo "no binary $LIFEBOAT; cargo build first or set LIFEBOAT" >&2; exit 1; }
OWN_WORK=0
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d); OWN_WORK=1; fi
mkdir -p "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "$OWN_WORK" = 1 ] && rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The etcd servers.
EPS=()
for i in $(seq 0 $((MEMBERS - 1))); do
    cp=$(free_port); pp=$(free_port)
    "$ETCD" --name "m$i" --data-dir "$WORK/etcd$i" \
        --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
        --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
        --initial-cluster "m$i=http://127.0.0.1:$pp" --initial-cluster-token "bench$i" \
        > "$WORK/etcd$i.log" 2>&1 &
    PIDS+=($!)
    EPS+=("http://127.0.0.1:$cp")
done
for ep in "${EPS[@]}"; do
    for _ in $(seq 100); do
        ETCDCTL_API=3 "$ETCDCTL" --endpoints "$ep" endpoint health >/dev/null 2>&1 && break
        sleep 0.2
    done
    # A hundred keys of 1 KiB, so that backups are real.
    head -c 1024 /dev/zero | tr '\0' v > "$WORK/value"
    for k in $(seq 100); do ETCDCTL_API=3 "$ETCDCTL" --endpoints "$ep" put "k$k" "$(cat "$WORK/value")" >/dev/null; done
done

status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

write_config() { # N PORT FILE
    local n=$1 port=$2 f=$3
    {
        echo "storage: {backend: local, local: {path: $WORK/store-$n}}"
        echo "schedule: {cron: \"0 0 0 1 1 *\"}"
        echo "verify: {cron: \"\"}"
        echo "leader_election: {enabled: $ELECTION, lease_ttl: 15s}"
        echo "http: {listen: \"127.0.0.1:$port\", max_backup_age: 1h}"
        echo "clusters:"
        for j in $(seq 0 $((n - 1))); do
            echo "  - {name: c$j, etcd: {endpoints: [\"${EPS[$((j % MEMBERS))]}\"]}}"
        done
    } > "$f"
}

start_daemon() { # CONFIG PORT LOG -> sets DPID
    "$LIFEBOAT" --config "$1" daemon --refresh-interval "$REFRESH" > "$3" 2>&1 &
    DPID=$!
    PIDS+=("$DPID")
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$2/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "daemon did not start: $(tail -5 "$3")" >&2
    exit 1
}

stop_daemon() {
    kill -TERM "$DPID"
    wait "$DPID" 2>/dev/null || true
}

printf '%-9s %-15s %-15s %-19s %-17s %s\n' clusters "idle VmRSS MiB" "idle VmHWM MiB" "idle MiB/cluster" "start VmHWM MiB" threads
BASE=""
BASE_N=""
for n in $COUNTS; do
    port=$(free_port)
    cfg="$WORK/config-$n.yaml"
    write_config "$n" "$port" "$cfg"
    # 1. Start-up with catch-up backups of every cluster.
    start_daemon "$cfg" "$port" "$WORK/daemon-$n-a.log"
    ok=0
    for _ in $(seq 600); do
        if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [ "$ok" = 1 ] || { echo "N=$n: not ready after 120 s: $(curl -s "http://127.0.0.1:$port/readyz" | head -c 600)" >&2; exit 1; }
    start_hwm=$(status_kib "$DPID" VmHWM)
    stop_daemon
    # 2. Idle.
    start_daemon "$cfg" "$port" "$WORK/daemon-$n-b.log"
    sleep "$SETTLE"
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || echo "N=$n: idle daemon not ready" >&2
    rss=$(status_kib "$DPID" VmRSS)
    hwm=$(status_kib "$DPID" VmHWM)
    threads=$(status_kib "$DPID" Threads)
    stop_daemon
    if [ -z "$BASE" ]; then
        BASE=$rss; BASE_N=$n; per="-"
    else
        per=$(awk -v a="$rss" -v b="$BASE" -v n="$n" -v m="$BASE_N" 'BEGIN {printf "%.2f", (a - b) / 1024 / (n - m)}')
    fi
    printf '%-9s %-15s %-15s %-19s %-17s %s\n' "$n" "$(mib "$rss")" "$(mib "$hwm")" "$per" "$(mib "$start_hwm")" "$threads"
done
