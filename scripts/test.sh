#!/usr/bin/env bash
# Runs Rewind's whole test suite. Installs what the tests need when it is missing, so it works
# on a fresh machine. The tests start their servers themselves (etcd on free loopback ports, our
# own binaries as processes); this script only makes sure the programs are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Servers and tools the tests use, installed only when missing (Debian packages).
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

cargo nextest run --workspace --no-fail-fast "$@"
