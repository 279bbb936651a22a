#!/usr/bin/env bash
# Garage (a fast S3 server in Rust, crates.io `garage`), single node on loopback, for the S3
# benchmarks (benches/scale.sh; issue 15). moto stays for the functional tests.
#
#   scripts/bench-garage.sh install   cargo install garage --locked into GARAGE_ROOT (cached;
#                                     a big build: ~1 h on a busy 2-core machine)
#   scripts/bench-garage.sh start DIR start it with its data in DIR (single-node layout, a fixed
#                                     key, bucket `lifeboat-bench`); prints the env lines to
#                                     eval: S3_ENDPOINT, S3_BUCKET, S3_REGION,
#                                     AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, GARAGE_PID
#   scripts/bench-garage.sh stop DIR  stop it (the DIR stays; delete it yourself)
# Env: GARAGE_ROOT (default ~/.cache/etcd-lifeboat/garage), GARAGE_PORT (S3 port, default a
#      free one; RPC and admin use the next ones), GARAGE_TARGET_DIR (its cargo target dir),
#      GARAGE_COMPRESSION (Garage's `compression_level`: "none", the default here, or a zstd
#      level; Garage's own default is 1). Backups are zstd or age already: compressing each
#      block again costs Garage CPU for nothing (docs/storage.md, "Garage").
# Loopback only; the key and RPC secret are fixed test values, never use this setup elsewhere.
set -euo pipefail

GARAGE_ROOT=${GARAGE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/garage}
GARAGE=$GARAGE_ROOT/bin/garage
# Test-only credentials (Garage key ids are GK + 24 hex digits, secrets 64 hex digits).
KEY_ID=GK0123456789abcdef01234567
KEY_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
RPC_SECRET=c3ea8cb80333d04e208d136698b1a01ae370d463f0d435ab2177510b3478bf44
BUCKET=lifeboat-bench
REGION=garage

garage_install() {
  if [[ -x $GARAGE ]]; then return 0; fi
  mkdir -p "$GARAGE_ROOT"
  CARGO_TARGET_DIR=${GARAGE_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/garage-target} \
    cargo install garage --locked --root "$GARAGE_ROOT"
}

garage_start() { # DIR
  local dir=$1 port
  [[ -x $GARAGE ]] || { echo "no $GARAGE: run $0 install" >&2; return 1; }
  port=${GARAGE_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  mkdir -p "$dir/meta" "$dir/data"
  chmod 700 "$dir"
  cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
compression_level = $(c=${GARAGE_COMPRESSION:-none}; [[ $c == none ]] && echo '"none"' || echo "$c")
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$RPC_SECRET"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((port + 2))"
EOF
  chmod 600 "$dir/garage.toml"
  local g=("$GARAGE" -c "$dir/garage.toml")
  "${g[@]}" server >"$dir/garage.log" 2>&1 &
  echo $! >"$dir/garage.pid"
  for _ in $(seq 100); do "${g[@]}" status >/dev/null 2>&1 && break; sleep 0.3; done
  local node
  node=$("${g[@]}" node id -q 2>/dev/null | cut -c1-64)
  "${g[@]}" layout assign -z dc1 -c 10G "$node" >/dev/null
  "${g[@]}" layout apply --version 1 >/dev/null
  "${g[@]}" key import --yes -n lifeboat-bench "$KEY_ID" "$KEY_SECRET" >/dev/null
  "${g[@]}" bucket create "$BUCKET" >/dev/null
  "${g[@]}" bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID" >/dev/null
  cat <<EOF
export S3_ENDPOINT=http://127.0.0.1:$port S3_BUCKET=$BUCKET S3_REGION=$REGION
export AWS_ACCESS_KEY_ID=$KEY_ID AWS_SECRET_ACCESS_KEY=$KEY_SECRET GARAGE_PID=$(cat "$dir/garage.pid")
EOF
}

garage_stop() { # DIR
  local pid
  pid=$(cat "$1/garage.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case ${1:-} in
  install) garage_install ;;
  start) garage_start "${2:?DIR}" ;;
  stop) garage_stop "${2:?DIR}" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
  esac
fi
