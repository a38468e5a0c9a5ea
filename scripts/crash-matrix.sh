#!/usr/bin/env bash
# kill -9 matrix: at least 20 kills at seeded random moments against a daemon
# on the same simulated clock as devices that keep running, then restart and
# check the ledger (tests/daemon_faults/crash_kill9.rs). cargo test runs 3 of them; this runs
# PED_CRASH_RUNS (default 20) for each seed in PED_CRASH_SEEDS (default "7 2026").
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${PED_CRASH_RUNS:-20}"
seeds="${PED_CRASH_SEEDS:-7 2026}"
if [ "$runs" -lt 20 ] && [ -z "${PED_CRASH_ALLOW_FEW:-}" ]; then
  echo "crash-matrix: PED_CRASH_RUNS=$runs < 20" >&2; exit 1
fi
for seed in $seeds; do
  echo "crash-matrix: $runs kills, seed $seed"
  PED_CRASH_RUNS="$runs" PED_CRASH_SEED="$seed" \
    cargo test --test daemon_faults -- --nocapture --test-threads 1 crash_kill9::
done
