#!/usr/bin/env bash
# The soak: faults at random moments (kill -9 and SIGSTOP of workers, kill -9 of the
# coordinator, kill of etcd) during Parquet recoveries and exactly-once Kafka replays, every job
# checked (cli/tests/e2e/distributed.rs, soak_faults_at_random_moments). Not part of CI.
#   scripts/soak.sh                        # 20 faults
#   SOAK_FAULTS=50 REWIND_TEST_SEED=99 scripts/soak.sh
# Needs what scripts/test.sh installs (etcd, tansu); run that once first.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_FAULTS="${SOAK_FAULTS:-20}"
cargo nextest run --profile soak -p rewind-cli --run-ignored only --no-capture \
  -E 'test(soak_faults_at_random_moments)'
