#!/usr/bin/env bash
# Fetches kubectl (with its built-in kustomize) from Debian's unstable suite into
# ${XDG_CACHE_HOME:-~/.cache}/etcd-lifeboat/kubectl/ and prints its version. The deploy tests
# (tests/deploy_manifests.rs) render every kustomization of deploy/ with it.
#
# How: `apt-get download` through a PRIVATE apt dir (its own sources list naming the unstable
# suite of the mirror the host's own apt sources use, its own state, cache and lists dirs), then
# `dpkg -x`. The host's apt sources and package state are never changed, nothing is installed.
# Idempotent: does nothing but print the version when kubectl is already unpacked.
#
#   scripts/fetch-kubectl.sh            binary: ~/.cache/etcd-lifeboat/kubectl/usr/bin/kubectl
set -euo pipefail

DEST="${XDG_CACHE_HOME:-$HOME/.cache}/etcd-lifeboat/kubectl"
BIN="$DEST/usr/bin/kubectl"

if [ ! -x "$BIN" ]; then
  # The mirror: the first non-security URI of the host's own sources (deb822, then one-line).
  MIRROR="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -v -- '-security' | head -1 || true)"
  if [ -z "$MIRROR" ]; then
    MIRROR="$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -e 's/\[[^]]*\] *//' | awk '{print $2}' | grep -v -- '-security' | head -1 || true)"
  fi
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
  KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$KEYRING" ] || { echo "fetch-kubectl: $KEYRING missing (Debian package debian-archive-keyring)" >&2; exit 1; }

  APTDIR="$(mktemp -d)"
  trap 'rm -rf "$APTDIR" "$DEST.tmp"' EXIT
  mkdir -p "$APTDIR/state/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/etc/preferences.d" "$APTDIR/debs"
  # apt's downloads run as the user _apt when it exists: let it write the private dirs.
  if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
    chmod 0755 "$APTDIR"
    chown -R _apt "$APTDIR/state/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
  fi
  echo "deb [signed-by=$KEYRING] $MIRROR unstable main" >"$APTDIR/etc/sources.list"
  : >"$APTDIR/etc/preferences"
  # An empty dpkg status: the candidate is unstable's kubectl, whatever kubectl the host has
  # installed (a higher-versioned one, e.g. Google Cloud SDK's, would otherwise win).
  : >"$APTDIR/status"
  APTOPT=(-o "Dir::State=$APTDIR/state" -o "Dir::State::status=$APTDIR/status"
          -o "Dir::Cache=$APTDIR/cache" -o "Dir::Etc::SourceList=$APTDIR/etc/sources.list"
          -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::Etc::Preferences=$APTDIR/etc/preferences"
          -o "Dir::Etc::PreferencesParts=$APTDIR/etc/preferences.d" -o "APT::Get::List-Cleanup=false")
  echo "fetch-kubectl: fetching kubectl from $MIRROR unstable (private apt dir $APTDIR)"
  apt-get "${APTOPT[@]}" update -qq
  CANDIDATE="$(apt-cache "${APTOPT[@]}" policy kubectl | awk '/Candidate:/ {print $2}')"
  case "$CANDIDATE" in
    ""|"(none)") echo "fetch-kubectl: no kubectl package in $MIRROR unstable" >&2; exit 1 ;;
  esac
  echo "fetch-kubectl: unstable's kubectl: $CANDIDATE"
  (cd "$APTDIR/debs" && apt-get "${APTOPT[@]}" download -qq "kubectl=$CANDIDATE")
  rm -rf "$DEST.tmp"
  mkdir -p "$DEST.tmp"
  for deb in "$APTDIR"/debs/*.deb; do dpkg -x "$deb" "$DEST.tmp"; done
  [ -x "$DEST.tmp/usr/bin/kubectl" ] || { echo "fetch-kubectl: the package has no usr/bin/kubectl" >&2; exit 1; }
  rm -rf "$DEST"
  mv "$DEST.tmp" "$DEST"
fi

echo "fetch-kubectl: $BIN"
"$BIN" version --client
