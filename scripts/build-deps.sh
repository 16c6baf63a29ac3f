#!/usr/bin/env bash
# What building Rewind needs besides Rust, installed only when missing (Debian packages): protoc
# (etcd-client and our gRPC API generate code with it), pkg-config and the OpenSSL headers (the
# bundled librdkafka is built with TLS for Kafka's SSL/SASL). Root or sudo is needed to install.
# Arguments name more packages that are missing, to install in the same go (scripts/test.sh).
set -euo pipefail
need=("$@")
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
