#!/usr/bin/env bash
# The fault matrix of README "Fault matrix": runs every fault suite (a test binary, or a
# module of one, per group of rows), prints one line per row and the summary line
# `N passed, N failed`.
# Fails if a suite the matrix names is missing, if any row fails, or if no row ran.
#
# Env: FAULT_MATRIX_LOG (where libtest's output goes, default: a temp file).
set -uo pipefail
cd "$(dirname "$0")/.."

# The suites the README's table names. A suite is a test binary, tests/NAME.rs or
# tests/NAME/main.rs, or a module
# of a binary that groups several, tests/THEME/NAME.rs beside tests/THEME/main.rs (its tests
# are named NAME::…). `prefix_*` needs at least one match. A missing suite, or one that runs
# no test, is a failure, never a skip: the table would lie.
EXPECTED=(fault_matrix faults_devices control_envelope modbus_loopback slow_writer 'crash_*' 'ledger_*' modbus_rtu_serial revert_timer keys_cli supervision control_safety http_limits http_access keys_paths outbox_faults)

suites=()       # suite names, as rows name them
binaries=()     # the cargo test targets that hold them, each once
declare -A only # binary -> its modules that are suites, as libtest filters (`NAME::`)
missing=()
add_binary() {
    local b
    for b in "${binaries[@]}"; do [[ "$b" == "$1" ]] && return; done
    binaries+=("$1")
}
for want in "${EXPECTED[@]}"; do
    found=0
    for f in tests/${want}.rs tests/${want}/main.rs tests/*/${want}.rs; do
        [[ -e "$f" ]] || continue
        dir=$(dirname "$f")
        if [[ "$dir" == tests ]]; then
            add_binary "$(basename "$f" .rs)"
        elif [[ "$f" == "tests/${want}/main.rs" ]]; then
            # A whole binary split into modules (tests/NAME/main.rs).
            add_binary "$want"
            suites+=("$want")
            found=1
            continue
        elif [[ -e "$dir/main.rs" && "$(basename "$f")" != main.rs ]]; then
            add_binary "$(basename "$dir")"
            only[$(basename "$dir")]+=" $(basename "$f" .rs)::"
        else
            continue
        fi
        suites+=("$(basename "$f" .rs)")
        found=1
    done
    [[ $found == 1 ]] || missing+=("tests/${want}.rs or tests/*/${want}.rs")
done

log="${FAULT_MATRIX_LOG:-$(mktemp -t fault-matrix.XXXXXX)}"
echo "fault matrix: suites ${suites[*]:-none} (binaries ${binaries[*]:-none}); libtest output in $log"
: >"$log"
cargo_rc=0
# Whole binaries in one run; a binary that groups suites with other modules runs only its
# suites (the others are not the matrix's). --no-fail-fast: every suite reports even when
# an earlier one fails.
whole=()
for b in "${binaries[@]}"; do [[ -n "${only[$b]:-}" ]] || whole+=(--test "$b"); done
if [[ ${#whole[@]} -gt 0 ]]; then
    cargo test --no-fail-fast "${whole[@]}" -- --test-threads=2 >>"$log" 2>&1 || cargo_rc=$?
fi
for b in "${binaries[@]}"; do
    [[ -n "${only[$b]:-}" ]] || continue
    # shellcheck disable=SC2086 # one filter per word
    cargo test --no-fail-fast --test "$b" -- --test-threads=2 ${only[$b]} >>"$log" 2>&1 || cargo_rc=$?
done

# libtest prints "Running tests/NAME.rs (...)" or "Running tests/THEME/main.rs (...)" before
# each binary, and "test NAME ... ok". A row's suite is its binary's NAME (tests/NAME/main.rs
# included), or in a THEME binary its test name's first segment (the module); rows of other
# modules are not the matrix's and are left out.
awk -v want="${suites[*]}" '
    BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) matrix[w[i]] = 1 }
    /Running tests\// {
        path = $2; sub(/^tests\//, "", path)
        if (path ~ /\/main\.rs$/) {
            # A whole binary split into modules is its own suite; in a THEME binary, suites are modules.
            binary = path; sub(/\/main\.rs$/, "", binary)
            if (!(binary in matrix)) binary = ""
        } else { binary = path; sub(/\.rs$/, "", binary) }
    }
    /^test .* \.\.\. (ok|FAILED|ignored)/ {
        name = $2; res = $NF
        suite = binary
        if (suite == "") { suite = name; sub(/::.*/, "", suite) }
        if (!(suite in matrix)) next
        printf "  %-16s %-8s %s\n", suite, (res == "ok" ? "pass" : (res == "FAILED" ? "FAIL" : "skip")), name
    }
' "$log" | tee "$log.rows"

passed=$(grep -c ' pass ' "$log.rows" || true)
failed=$(grep -c ' FAIL ' "$log.rows" || true)
skipped=$(grep -c ' skip ' "$log.rows" || true)
rows_failed=$failed
for s in "${suites[@]}"; do
    awk -v s="$s" '$1 == s { found = 1 } END { exit !found }' "$log.rows" \
        || missing+=("suite $s: no test of it ran")
done
rm -f "$log.rows"

status=0
for m in "${missing[@]}"; do
    echo "MISSING: $m (a row of the fault matrix has no test)"
    failed=$((failed + 1))
    status=1
done
if [[ $skipped -gt 0 ]]; then
    echo "SKIPPED: $skipped row(s) ignored; the matrix allows none"
    status=1
fi
if [[ $cargo_rc -ne 0 && $rows_failed -eq 0 ]]; then
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
