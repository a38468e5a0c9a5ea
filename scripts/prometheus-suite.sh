#!/usr/bin/env bash
# ped under a real Prometheus (Debian's package, which ships promtool):
#  1. the deploy/prometheus files: check config, check rules, test rules;
#  2. `promtool check metrics` on ped's /metrics must print nothing;
#  3. a gateway Prometheus (deploy/prometheus/prometheus.yml with its rules)
#     scrapes `ped simulate` every 2 s; every PromQL expression of the
#     Grafana dashboards must return data; every rule must evaluate cleanly;
#  4. deploy/prometheus/federation.yml, run as the central Prometheus, federates
#     the gateway and remote-writes into a third Prometheus (remote-write
#     receiver, the role VictoriaMetrics or Mimir play): both must hold ped's series.
# Installs what it lacks, fails loudly, stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sim-lib.sh

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v curl >/dev/null; then
  echo "installing Debian's prometheus package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus curl >/dev/null
fi
prometheus --version 2>&1 | head -1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ped-prom.XXXXXX")
trap 'stop_pids; rm -rf "$WORK"' EXIT
fail() { echo "prometheus-suite: FAILED: $*" >&2; exit 1; }

echo "--- 1. deploy/prometheus and deploy/grafana files"
promtool check config deploy/prometheus/prometheus.yml
promtool check config deploy/prometheus/federation.yml
promtool check rules deploy/prometheus/rules.yml
(cd deploy/prometheus && promtool test rules rules.test.yml)
python3 deploy/grafana/gen-dashboards.py --check
for f in deploy/grafana/dashboards/*.json; do python3 -m json.tool "$f" >/dev/null || fail "$f is not JSON"; done

echo "--- 2. promtool check metrics on ped simulate"
start_sim "$WORK"
echo "ped simulate at $SIM_URL (pid $SIM_PID)"
curl -fsS "$SIM_URL/metrics" >"$WORK/metrics.txt"
lint=$(promtool check metrics <"$WORK/metrics.txt" 2>&1) || fail "promtool check metrics exited non-zero: $lint"
[ -z "$lint" ] || fail "promtool check metrics reports: $lint"
families=$(grep -c '^# TYPE ped_' "$WORK/metrics.txt")
echo "promtool check metrics: nothing to report on $families families"
SITE=$(sed -n 's/^ped_build_info{.*site="\([^"]*\)".*/\1/p' "$WORK/metrics.txt" | head -1)
[ -n "$SITE" ] || fail "no site label on ped_build_info"

start_prom() { # name port config [extra flags...]
  local name=$1 port=$2 cfg=$3; shift 3
  prometheus --config.file="$cfg" --storage.tsdb.path="$WORK/$name-data" \
    --web.listen-address="127.0.0.1:$port" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  wait_http "http://127.0.0.1:$port/-/ready" 60 || { tail -20 "$WORK/$name.log" >&2; fail "$name did not start"; }
}
# Number of series an instant query returns (0 on error).
count_series() {
  curl -fsS --max-time 10 "http://127.0.0.1:$1/api/v1/query" --data-urlencode "query=$2" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))' 2>/dev/null || echo 0
}
wait_series() { # port query seconds
  local i
  for ((i = 0; i < $3; i++)); do
    [ "$(count_series "$1" "$2")" -gt 0 ] && return 0
    sleep 1
  done
  return 1
}

echo "--- 3. gateway Prometheus scraping ped, the dashboards' expressions"
GW=$(free_port)
ped_port=${SIM_URL##*:}
# 2 s: a debug build of ped renders its ~3,700 series in 0.1-0.5 s on a loaded
# machine, and a scrape may not take longer than the interval.
sed -e 's/^\(  *\)scrape_interval: 15s/\1scrape_interval: 2s/' \
    -e 's/^\(  *\)evaluation_interval: 15s/\1evaluation_interval: 2s/' \
    -e "s#127.0.0.1:9464#127.0.0.1:$ped_port#" \
    -e "s#^  - rules.yml#  - $PWD/deploy/prometheus/rules.yml#" \
    deploy/prometheus/prometheus.yml >"$WORK/gateway.yml"
grep -q "127.0.0.1:$ped_port" "$WORK/gateway.yml" || fail "gateway config: ped target not substituted"
grep -q "scrape_interval: 2s" "$WORK/gateway.yml" || fail "gateway config: interval not substituted"
promtool check config "$WORK/gateway.yml" >/dev/null
start_prom gateway "$GW" "$WORK/gateway.yml"
wait_series "$GW" 'ped_device_up' 60 || fail "gateway Prometheus never scraped ped"
# Rates over 15 s and increases need several samples, and a few settlement
# periods (3 s each at --speed 300) must have closed.
wait_series "$GW" 'increase(ped_periods_closed_total[1m]) >= 4' 90 || fail "fewer than 4 periods closed in the scraped data"
sleep 15
python3 scripts/promql-dashboards.py "http://127.0.0.1:$GW" "$SITE" deploy/grafana/dashboards/*.json
# The check itself must be able to fail: a dashboard with a misspelt metric.
printf '{"title":"control","panels":[{"title":"typo","targets":[{"expr":"ped_device_upp{site=~\\"$site\\"}"}]}]}' >"$WORK/control.json"
if python3 scripts/promql-dashboards.py "http://127.0.0.1:$GW" "$SITE" "$WORK/control.json" >/dev/null 2>&1; then
  fail "promql-dashboards.py accepted an expression without data"
fi

value_of() { # port query -> first value
  curl -fsS --max-time 10 "http://127.0.0.1:$1/api/v1/query" --data-urlencode "query=$2" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'
}
echo "scrape of ped: $(value_of "$GW" 'scrape_samples_scraped{job="ped"}') samples," \
  "max duration $(value_of "$GW" 'max_over_time(scrape_duration_seconds{job="ped"}[1m])') s over the last minute"
echo "--- rules loaded by the gateway"
curl -fsS "http://127.0.0.1:$GW/api/v1/rules" | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
for r in rules:
    kind, name, health, state = r["type"], r["name"], r.get("health"), r.get("state", "")
    print(f"  {kind:9} {name:40} {health} {state}")
if len(rules) < 10 or bad:
    sys.exit(f"rules not healthy: {bad} (of {len(rules)})")
'
for rec in site:ped_pv_power_watts:sum site:ped_devices_up:ratio site:ped_device_errors:rate5m; do
  [ "$(count_series "$GW" "$rec")" -gt 0 ] || fail "recording rule $rec has no data"
done
# The simulated district writes plans and key files: these alerts may not even
# be pending (ALERTS has pending ones too). Device alerts are left out: under
# CI load a poll may time out now and then.
[ "$(count_series "$GW" 'ALERTS{alertname=~"PedPlanStale|PedKeyFilesNotWritten"}')" -eq 0 ] ||
  fail "an alert is pending or firing on a healthy simulated district"

echo "--- 4. federation.yml: central Prometheus federating the gateway, remote-write to a store"
STORE=$(free_port)
CENTRAL=$(free_port)
printf 'global:\n  scrape_interval: 1m\n' >"$WORK/store.yml"
start_prom store "$STORE" "$WORK/store.yml" --web.enable-remote-write-receiver
sed -e 's/^\(  *\)scrape_interval: 60s/\1scrape_interval: 2s/' \
    -e 's/^\(  *\)evaluation_interval: 60s/\1evaluation_interval: 2s/' \
    -e 's/^\(  *\)scrape_timeout: 30s/\1scrape_timeout: 2s/' \
    -e "s#gateway-fontaine-douche.example:9090#127.0.0.1:$GW#" \
    -e "s#gateway-gresilles.example:9090#127.0.0.1:$(free_port)#" \
    -e "s#http://victoriametrics.example:8428/api/v1/write#http://127.0.0.1:$STORE/api/v1/write#" \
    deploy/prometheus/federation.yml >"$WORK/central.yml"
grep -q "127.0.0.1:$GW" "$WORK/central.yml" || fail "central config: gateway not substituted"
grep -q "127.0.0.1:$STORE/api/v1/write" "$WORK/central.yml" || fail "central config: store not substituted"
start_prom central "$CENTRAL" "$WORK/central.yml"
q='ped_device_up{district="fontaine-douche",gateway="fontaine-douche-gw1",job="ped"}'
wait_series "$CENTRAL" "$q" 60 || fail "central Prometheus has no federated ped series ($q)"
wait_series "$CENTRAL" 'site:ped_devices_up:ratio{district="fontaine-douche"}' 30 || fail "central lacks the gateway's recording rules"
# The second gateway of the example does not exist here: its target must be down, not missing.
# Prometheus spreads its targets' first scrapes over the interval, so the dead
# target's first `up` may come after the live one's series (a single look
# failed once under load): wait for it like the others.
wait_series "$CENTRAL" 'up{job="ped-federate",district="gresilles"} == 0' 30 || fail "the unreachable gateway is not reported down"
wait_series "$STORE" "$q" 60 || fail "the store received no ped series by remote-write"
n_central=$(count_series "$CENTRAL" '{__name__=~"ped_.+",district="fontaine-douche"}')
n_store=$(count_series "$STORE" '{__name__=~"ped_.+",district="fontaine-douche"}')
echo "federated ped series: central $n_central, long-term store $n_store"
[ "$n_store" -gt 1000 ] || fail "the store holds only $n_store ped series"

echo "prometheus-suite: all checks passed"
