#!/usr/bin/env bash
# The fault matrix of README "Fault matrix": runs every fault suite (one test binary per
# group of rows), prints one line per row and the summary line `N passed, N failed`.
# Fails if a suite the matrix names is missing, if any row fails, or if no row ran.
#
# Env: FAULT_MATRIX_LOG (where libtest's output goes, default: a temp file).
set -uo pipefail
cd "$(dirname "$0")/.."

# The suites the README's table names. Exact names must exist; `prefix_*` needs at least one
# tests/prefix_*.rs. A missing suite is a failure, never a skip: the table would lie.
EXPECTED=(fault_matrix faults_devices control_envelope modbus_loopback slow_writer 'crash_*' 'ledger_*' modbus_rtu_serial revert_timer keys_cli supervision control_safety http_limits http_access keys_paths outbox_faults)

suites=()
missing=()
for want in "${EXPECTED[@]}"; do
    if [[ "$want" == *'*' ]]; then
        found=0
        for f in tests/${want}.rs; do
            [[ -e "$f" ]] || continue
            suites+=("$(basename "$f" .rs)")
            found=1
        done
        [[ $found == 1 ]] || missing+=("tests/${want}.rs")
    elif [[ -e "tests/${want}.rs" ]]; then
        suites+=("$want")
    else
        missing+=("tests/${want}.rs")
    fi
done

log="${FAULT_MATRIX_LOG:-$(mktemp -t fault-matrix.XXXXXX)}"
args=()
for s in "${suites[@]}"; do args+=(--test "$s"); done
echo "fault matrix: suites ${suites[*]:-none}; libtest output in $log"
if [[ ${#suites[@]} -gt 0 ]]; then
    # --no-fail-fast: every suite reports even when an earlier one fails.
    cargo test --no-fail-fast "${args[@]}" -- --test-threads=2 >"$log" 2>&1
    cargo_rc=$?
else
    : >"$log"
    cargo_rc=0
fi

# libtest prints "Running tests/NAME.rs (...)" before each binary and "test NAME ... ok".
awk '
    /Running tests\// { suite = $2; sub(/^tests\//, "", suite); sub(/\.rs$/, "", suite) }
    /^test .* \.\.\. (ok|FAILED|ignored)/ {
        name = $2; res = $NF
        printf "  %-16s %-8s %s\n", suite, (res == "ok" ? "pass" : (res == "FAILED" ? "FAIL" : "skip")), name
    }
' "$log" | tee "$log.rows"

passed=$(grep -c ' pass ' "$log.rows" || true)
failed=$(grep -c ' FAIL ' "$log.rows" || true)
skipped=$(grep -c ' skip ' "$log.rows" || true)
rm -f "$log.rows"

status=0
for m in "${missing[@]}"; do
    echo "MISSING: $m (a row of the fault matrix has no suite)"
    failed=$((failed + 1))
    status=1
done
if [[ $skipped -gt 0 ]]; then
    echo "SKIPPED: $skipped row(s) ignored; the matrix allows none"
    status=1
fi
if [[ $cargo_rc -ne 0 && $failed -eq 0 ]]; then
    echo "cargo test failed before any row ran (build error?):"
    tail -30 "$log"
    failed=$((failed + 1))
fi
[[ $cargo_rc -eq 0 ]] || status=1
[[ $failed -eq 0 ]] || status=1
if [[ $passed -eq 0 ]]; then
    echo "no fault row ran"
    status=1
fi
echo "$passed passed, $failed failed"
exit $status
