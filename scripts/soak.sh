#!/usr/bin/env bash
# Soak: 1,000 participants and 200 simulated devices (scripts/gen-large-site.py), polled at
# 1 Hz *real* time, while the simulated clock runs a week at SOAK_SPEED× (default 1440: a day
# a minute, so a settlement period every 0.63 s and the week in 7 minutes). Polling stays at
# 1 Hz because that is the load a gateway carries; the fast clock makes the periods, plans
# and key files of a week come in minutes. Measured and checked:
#   - memory flat: peak RSS in the last tenth ≤ 1.5 × peak RSS in the second tenth (the
#     first tenth is warm-up);
#   - poll lag does not grow: ped_device_reads_total per device per second in the last tenth
#     ≥ 0.9 × the second tenth's (the first is warm-up), and ≥ 0.8/s (1 Hz holds);
#   - every period closed: each of the week's local days has 96 rows in every producer's
#     key file, contiguous (ped_periods_closed_total is printed too).
# Env: SOAK_SPEED, SOAK_DAYS (default 7), SOAK_PROFILE (release or debug), SOAK_KEEP=1
# keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
speed="${SOAK_SPEED:-1440}"
days="${SOAK_DAYS:-7}"
tmp="$(mktemp -d -t ped-soak.XXXXXX)"
pid=""
cleanup() {
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    [[ "${SOAK_KEEP:-0}" == 1 ]] && echo "kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT

# The binary as deployed (the Dockerfile's) by default. SOAK_PROFILE=debug runs the debug
# build: its period closing is ~10x slower, which is the point when checking that a slow
# consumer (or disk) does not slow polling down.
if [[ "${SOAK_PROFILE:-release}" == debug ]]; then
    cargo build --quiet --bin ped
    ped=target/debug/ped
else
    cargo build --quiet --release --bin ped
    ped=target/release/ped
fi
python3 scripts/gen-large-site.py "$tmp/site.toml" --participants 1000 --devices 200
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# From 23:00 the evening before the first day until the day after the last has a key
# file: periods close in order, so the week is then complete (the duration is a backstop).
stop_dir="$tmp/out/keys/$(python3 -c "import datetime; print(datetime.date(2025, 6, 16) + datetime.timedelta(days=$days))")"
"$ped" simulate --site "$tmp/site.toml" --start 2025-06-15T23:00:00+02:00 \
    --duration "$((days + 1))d" --speed "$speed" --poll-ms 1000 --ephemeral-ports \
    --listen "127.0.0.1:$port" --out "$tmp/out" >"$tmp/ped.log" 2>&1 &
pid=$!
echo "soak: pid $pid, ${days} simulated days at ${speed}x, 1 Hz polling, metrics on 127.0.0.1:$port"

# One sample every 2 s: real seconds, RSS (kB), reads summed over devices, periods closed.
python3 - "$pid" "$port" "$tmp/samples.tsv" "$stop_dir" <<'PY'
import os, signal, sys, time, urllib.request
pid, port, out, stop_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
t0 = time.monotonic()
with open(out, "w") as f:
    f.write("t\trss_kb\treads\tperiods\n")
    while os.path.exists(f"/proc/{pid}") and not os.path.isdir(stop_dir):
        try:
            rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
            reads = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("ped_device_reads_total"))
            periods = next(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("ped_periods_closed_total"))
            f.write(f"{time.monotonic() - t0:.1f}\t{rss}\t{reads:.0f}\t{periods:.0f}\n")
            f.flush()
        except (OSError, StopIteration, ValueError):
            pass  # not up yet, or exiting
        if time.monotonic() - t0 > 1500:
            sys.exit("soak: no end after 1500 s")
        time.sleep(2)
if os.path.exists(f"/proc/{pid}"):
    os.kill(pid, signal.SIGTERM)
PY
set +e
wait "$pid"
rc=$?
pid=""
set -e
[[ $rc -eq 0 ]] || { echo "ped simulate failed (exit $rc):"; tail -30 "$tmp/ped.log"; exit 1; }
[[ -d "$stop_dir" ]] || { echo "ped simulate stopped before the week was closed"; tail -30 "$tmp/ped.log"; exit 1; }

python3 - "$tmp" "$days" 200 <<'PY'
import csv, datetime, pathlib, sys
tmp, days, devices = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rows = [dict((k, float(v)) for k, v in r.items()) for r in csv.DictReader(open(tmp / "samples.tsv"), delimiter="\t")]
if len(rows) < 10:
    sys.exit(f"soak: only {len(rows)} samples")
T = rows[-1]["t"]
def window(a, b):
    w = [r for r in rows if a * T <= r["t"] <= b * T]
    if len(w) < 2:
        sys.exit(f"soak: fewer than 2 samples between {a:.0%} and {b:.0%} of the run")
    return w[0], w[-1]
def rate(a, b):
    s, e = window(a, b)
    return (e["reads"] - s["reads"]) / max(e["t"] - s["t"], 1e-9) / devices
def peak(a, b):
    # RSS swings by ±20 % between samples (allocation bursts at each period close):
    # compare the peaks of two windows, not two single samples.
    return max(r["rss_kb"] for r in rows if a * T <= r["t"] <= b * T)
rss_start, rss_end = rows[0]["rss_kb"], rows[-1]["rss_kb"]
rss_warm, rss_last = peak(0.1, 0.2), peak(0.9, 1.0)
rss_max = max(r["rss_kb"] for r in rows)
r_first, r_last = rate(0.1, 0.2), rate(0.9, 1.0)
periods = rows[-1]["periods"]
print(f"soak: real {T:.0f} s, {len(rows)} samples")
print(f"soak: RSS start {rss_start/1024:.1f} MiB, end {rss_end/1024:.1f} MiB, max {rss_max/1024:.1f} MiB; peak in the second tenth {rss_warm/1024:.1f} MiB, in the last tenth {rss_last/1024:.1f} MiB ({rss_last/rss_warm:.2f}x)")
print(f"soak: reads per device per second: second tenth {r_first:.3f}, last tenth {r_last:.3f}")
print(f"soak: periods closed (metric, last scrape, a few periods before the stop) {periods:.0f}")
fail = []
if rss_last > 1.5 * rss_warm:
    fail.append(f"memory grew: last-tenth peak {rss_last} kB > 1.5 x second-tenth peak {rss_warm} kB")
if r_last < 0.9 * r_first:
    fail.append(f"poll rate fell from {r_first:.3f} to {r_last:.3f} per device per s")
if r_first < 0.8:
    fail.append(f"1 Hz polling not held: {r_first:.3f} per device per s")
first = datetime.date(2025, 6, 16)
closed = 0
for d in range(days):
    day = first + datetime.timedelta(days=d)
    files = sorted((tmp / "out" / "keys" / day.isoformat()).glob("*.csv"))
    if len(files) != 8:
        fail.append(f"{day}: {len(files)} key files, expected 8 producers")
        continue
    for f in files:
        lines = f.read_text().splitlines()[1:]
        stamps = [datetime.datetime.fromisoformat(l.split(";")[0]) for l in lines]
        gaps = [b - a for a, b in zip(stamps, stamps[1:]) if b - a != datetime.timedelta(minutes=15)]
        if len(stamps) != 96 or gaps:
            fail.append(f"{f.name}: {len(stamps)} rows, {len(gaps)} gaps")
    closed += 96
print(f"soak: {closed} periods of {days} full days in every producer's key file")
for f in fail:
    print("FAIL:", f)
print(f"soak: {1 if not fail else 0} passed, {1 if fail else 0} failed")
sys.exit(1 if fail else 0)
PY
