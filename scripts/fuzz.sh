#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and fails on a crash.
# The corpus lives in fuzz/corpus/<target>/ (seeds committed as seed-*, the rest kept
# between runs on the same machine); a crash leaves its input in fuzz/artifacts/<target>/.
#
# Env: FUZZ_SECONDS (per target, default 60), FUZZ_TARGETS (default: every target),
#      FUZZ_JOBS (libFuzzer workers per target, default 1: CI has 2 shared cores).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
# libFuzzer needs nightly-only flags (-Z sanitizer, coverage passes); this stable
# toolchain accepts them with RUSTC_BOOTSTRAP. No sanitizer: ped is safe Rust, and the
# point is panics (overflow, index, unwrap), which debug assertions (-a) turn on.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi
seconds="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-1}"
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
[[ -n "$targets" ]] || { echo "no fuzz target found"; exit 1; }

cargo fuzz build -s none -a
passed=0
failed=0
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "=== fuzz $t for ${seconds}s (corpus: $(ls "corpus/$t" | wc -l) inputs)"
    par=()
    # -jobs=1 would still fork a worker that logs to a file; only ask for it when > 1.
    [[ "$jobs" -gt 1 ]] && par=(-jobs="$jobs" -workers="$jobs")
    if cargo fuzz run -s none -a "$t" "corpus/$t" -- \
        -max_total_time="$seconds" "${par[@]}" \
        -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" 2>"artifacts/$t.log"; then
        grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "artifacts/$t.log" | sed "s/^/  $t /" || true
        echo "  $t: no crash ($(ls "corpus/$t" | wc -l) corpus inputs)"
        passed=$((passed + 1))
    else
        echo "  $t: CRASH — input(s) in fuzz/artifacts/$t/:"
        ls "artifacts/$t" || true
        grep -E "panicked|ERROR|SUMMARY" "artifacts/$t.log" | head -20 || true
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
