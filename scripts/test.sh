#!/usr/bin/env bash
# Runs Rewind's whole test suite. Installs what the tests need when it is missing, so it works
# on a fresh machine. Today the suite needs no server (the embedded mode); the etcd, S3 and
# Kafka launchers of later issues install and start their servers here too.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

cargo nextest run --workspace --no-fail-fast "$@"
