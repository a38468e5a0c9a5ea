#!/usr/bin/env bash
# ped's Modbus client against an independently written SunSpec peer: pymodbus 3.16.1
# serving an image built from the official SunSpec JSON (../shared/reference), scanned
# by our discovery and decoding. Installs its Python packages in a virtualenv and fails
# loudly when anything is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${PED_SHARED:-../shared}"
PEER="$SHARED/reference/sunspec_peer_check.py"
[ -f "$PEER" ] || { echo "sunspec-peer: $PEER not found (set PED_SHARED)" >&2; exit 1; }
VENV="${PED_PEER_VENV:-${TMPDIR:-/tmp}/ped-sunspec-venv}"
if ! "$VENV/bin/python" -c "import pymodbus, sunspec2" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet pymodbus==3.16.1 pysunspec2==1.3.7
fi
# The peer checks itself first (pysunspec2 scanning pymodbus): if that fails, the peer is broken, not ped.
"$VENV/bin/python" "$PEER" --models "$SHARED/reference/sunspec-models" >/dev/null
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$VENV/bin/python" "$PEER" --serve --port "$PORT" --models "$SHARED/reference/sunspec-models" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null; then break; fi
  sleep 0.1
done
# One peer, one register image: the tests write to it, so they run one at a time.
PED_SUNSPEC_PEER="127.0.0.1:$PORT" cargo test --features peer-tests --test sunspec_peer -- --test-threads=1
