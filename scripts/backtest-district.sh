#!/usr/bin/env bash
# `ped backtest` on the district-2025 data set in ../shared (PED_SHARED), for a bounded
# range (default: June and December 2025, a summer and a winter month), then checks the
# summary against the data set's own figures (stats.json) and the baselines. Fails loudly
# when the data is missing. BACKTEST_FROM / BACKTEST_TO / BACKTEST_REPLAN override the range
# and the replan cadence; BACKTEST_OUT the output folder.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${PED_SHARED:-../shared}"
DATA="$SHARED/data/district-2025"
for f in production.csv consumption.csv heat.csv participants.csv plants.csv stats.json; do
  [ -f "$DATA/$f" ] || { echo "backtest-district: $DATA/$f not found (set PED_SHARED)" >&2; exit 1; }
done
OUT="${BACKTEST_OUT:-${TMPDIR:-/tmp}/ped-backtest-district}"
REPLAN="${BACKTEST_REPLAN:-4}"
# The solver's dependencies are built with optimisations in the dev profile: no release build needed.
cargo build --quiet --bin ped
run() {
  local from=$1 to=$2 out=$3
  echo "--- ped backtest --from $from --to $to --replan-every $REPLAN"
  ./target/debug/ped backtest --data "$DATA" --from "$from" --to "$to" \
    --replan-every "$REPLAN" --out "$out" --quiet
  python3 - "$out/summary.json" "$DATA/stats.json" "$from" "$to" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); st = json.load(open(sys.argv[2]))
frm, to = sys.argv[3], sys.argv[4]
sc = {x["name"]: x for x in s["scenarios"]}
need = ["ped", "ped_prorata", "static_keys", "greedy_battery", "no_storage", "dso_prorata"]
missing = [n for n in need if n not in sc]
assert not missing, f"baselines missing: {missing}"
for x in s["scenarios"]:
    assert x["max_balance_error_kwh"] < 1e-6, (x["name"], x["max_balance_error_kwh"])
    assert 0 <= x["self_consumption_rate"] <= 1 and 0 <= x["self_sufficiency"] <= 1, x["name"]
    used = x["allocated_kwh"] + x["allocated_to_storage_kwh"] + x["export_kwh"]
    made = x["pv_kwh"] + x["battery_discharge_kwh"]
    assert abs(used - made) <= 1e-6 * made, (x["name"], used, made)
assert sc["ped"]["self_consumption_rate"] > sc["no_storage"]["self_consumption_rate"], "storage must raise self-consumption"
# The month's pro-rata guarantee of the site's optimised keys (no_worse_than_pro_rata).
assert sc["ped"]["participants_worse_than_dso_prorata"] == 0, ("worse off under ped", sc["ped"]["participants_worse_than_dso_prorata"])
assert s["solve"]["solves"] > 0 and s["solve"]["fallback"] <= s["solve"]["solves"]
# A whole month: the data set's own monthly figures are the oracle (pro rata without
# storage is what stats.json computes; the keys' 0.1 % quantisation may lose a little).
if frm[:7] == to[:7] and frm[8:] == "01":
    m = st["monthly_local_kwh"][frm[5:7]]
    d = sc["dso_prorata"]
    assert abs(d["pv_kwh"] - m["pv"]) < 0.1, (d["pv_kwh"], m["pv"])
    assert abs(d["consumption_kwh"] - m["consumption"]) < 0.1, (d["consumption_kwh"], m["consumption"])
    assert 0.995 * m["self_consumed"] <= d["allocated_kwh"] <= m["self_consumed"] + 0.1, (d["allocated_kwh"], m["self_consumed"])
    print(f"oracle: PV {m['pv']} kWh, consumption {m['consumption']} kWh, pro-rata self-consumed "
          f"{d['allocated_kwh']:.1f} kWh against stats.json {m['self_consumed']}")
print(f"ok: {s['from']} -> {s['to']}: ped SCR {sc['ped']['self_consumption_rate']:.3f} "
      f"(DSO pro rata {sc['dso_prorata']['self_consumption_rate']:.3f}), solves {s['solve']['solves']}, "
      f"p50 {s['solve']['p50_s']:.3f} s, {s['wall_seconds']:.0f} s")
PY
}
if [ -n "${BACKTEST_FROM:-}" ]; then
  run "$BACKTEST_FROM" "${BACKTEST_TO:?set BACKTEST_TO with BACKTEST_FROM}" "$OUT"
else
  run 2025-06-01 2025-06-30 "$OUT/june"
  run 2025-12-01 2025-12-31 "$OUT/december"
fi
