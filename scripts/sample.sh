#!/usr/bin/env bash
# The README's first command: installs what building needs when it is missing
# (scripts/build-deps.sh), then recovers the bundled sample (examples/archive) into sample-out/
# with `rewind run`, no servers. Extra arguments go to `rewind run` (e.g. --workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
exec cargo run --release -p rewind-cli -- run --source examples/archive --org TN-demo \
  --start 2024-04-01 --end 2024-04-02 --dest sample-out "$@"
