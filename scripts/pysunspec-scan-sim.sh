#!/usr/bin/env bash
# pysunspec2 (the SunSpec Alliance's client) scans every SunSpec device of ped's simulator
# (`ped simulate --devices-only`) and checks the model chains and values it reads, and that
# `ped scan` decodes the same values. Installs its Python packages in the same virtualenv as
# scripts/sunspec-peer.sh and fails loudly when anything is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PED_PEER_VENV:-${TMPDIR:-/tmp}/ped-sunspec-venv}"
if ! "$VENV/bin/python" -c "import pymodbus, sunspec2" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet pymodbus==3.16.1 pysunspec2==1.3.7
fi
"$VENV/bin/python" -c "import sunspec2, tomllib" || { echo "pysunspec-scan-sim: venv $VENV lacks sunspec2 or tomllib (Python >= 3.11)" >&2; exit 1; }
cargo build
exec "$VENV/bin/python" scripts/pysunspec-scan-sim.py target/debug/ped --config site-configs/fontaine-douche.toml "$@"
