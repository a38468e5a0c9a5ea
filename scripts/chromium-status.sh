#!/usr/bin/env bash
# ped's status page in a real browser: Debian's headless Chromium loads it from
# `ped simulate`, dumps the DOM after the page's script ran, and takes a
# screenshot; scripts/check-status-dom.py then checks that the page shows the
# numbers /status.json gave just before and just after (PV now, devices up, the
# last period's energies and self-consumption, the plan chart, the keys).
# Installs Chromium if missing, fails loudly, stops what it started.
# PED_STATUS_PNG=path keeps the screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sim-lib.sh

if ! command -v chromium >/dev/null || ! command -v curl >/dev/null || ! fc-list 2>/dev/null | grep -qi dejavu; then
  echo "installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core curl >/dev/null
fi
chromium --version

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ped-chromium.XXXXXX")
trap 'stop_pids; rm -rf "$WORK"' EXIT
fail() { echo "chromium-status: FAILED: $*" >&2; exit 1; }

# Slow enough (a period every 15 s) that the page and /status.json agree on the last period.
# Midday, so that PV is not zero and the PV check compares something.
PED_SIM_SPEED=60 PED_SIM_ARGS="--start 2025-06-21T11:00:00+02:00" start_sim "$WORK"
echo "ped simulate at $SIM_URL"
for _ in $(seq 1 120); do
  curl -fsS "$SIM_URL/status.json" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["last_period"] else 1)' && break
  sleep 1
done

browse() { # output-flag... ; a fresh profile each time
  local profile
  profile=$(mktemp -d "$WORK/profile.XXXXXX")
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1280,1500 --virtual-time-budget=6000 "$@" \
    2>>"$WORK/chromium.log"
}

curl -fsS "$SIM_URL/status.json" >"$WORK/before.json"
browse --dump-dom "$SIM_URL/" >"$WORK/dom.html" || { tail -20 "$WORK/chromium.log" >&2; fail "chromium --dump-dom"; }
curl -fsS "$SIM_URL/status.json" >"$WORK/after.json"
browse --screenshot="$WORK/status.png" "$SIM_URL/" || { tail -20 "$WORK/chromium.log" >&2; fail "chromium --screenshot"; }
[ -s "$WORK/status.png" ] || fail "no screenshot"
if [ -n "${PED_STATUS_PNG:-}" ]; then cp "$WORK/status.png" "$PED_STATUS_PNG"; fi

python3 scripts/check-status-dom.py "$WORK/dom.html" "$WORK/before.json" "$WORK/after.json" "$WORK/status.png"
echo "chromium-status: all checks passed"
