#!/usr/bin/env bash
# Checks deploy/systemd/ped.service with systemd's own tools: `systemd-analyze
# verify` (syntax, directives, the binary exists) and `systemd-analyze security
# --offline` (the hardening: its exposure score must stay "OK", at most 2.0).
# The unit is checked as shipped except ExecStart's path, pointed at the
# binary cargo builds here. (No Docker engine runs on CI machines: the
# Dockerfile is checked by tests/deploy_files.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null; then
  echo "installing Debian's systemd (for systemd-analyze)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
systemd-analyze --version | head -1
cargo build --quiet --bin ped
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ped-deploy.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
grep -q '^ExecStart=/usr/local/bin/ped ' deploy/systemd/ped.service
sed "s#^ExecStart=/usr/local/bin/ped #ExecStart=$PWD/target/debug/ped #" deploy/systemd/ped.service >"$WORK/ped.service"
out=$(systemd-analyze verify "$WORK/ped.service" 2>&1) || { echo "$out" >&2; exit 1; }
# verify also warns without failing: any output is a finding.
[ -z "$out" ] || { echo "systemd-analyze verify: $out" >&2; exit 1; }
echo "systemd-analyze verify: clean"
systemd-analyze security --offline=true "$WORK/ped.service" >"$WORK/security.txt" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for ped.service: \([0-9.]*\).*/\1/p' "$WORK/security.txt")
[ -n "$score" ] || { cat "$WORK/security.txt" >&2; echo "no exposure score" >&2; exit 1; }
echo "systemd-analyze security: exposure $score (0 = fully locked down, 10 = unprotected)"
python3 -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)" ||
  { grep '✗' "$WORK/security.txt" >&2; echo "exposure $score above 2.0" >&2; exit 1; }
# The same unit with its hardening removed must score worse: the check can fail.
grep -v -E '^(Protect|Private|Restrict|NoNewPrivileges|SystemCall|Capability|MemoryDeny|LockPersonality|DevicePolicy|RemoveIPC|ProcSubset|DynamicUser)' \
  "$WORK/ped.service" >"$WORK/bare.service"
bare=$(systemd-analyze security --offline=true "$WORK/bare.service" 2>&1 | sed -n 's/.*Overall exposure level for bare.service: \([0-9.]*\).*/\1/p')
python3 -c "import sys; sys.exit(0 if float('$bare') > 2.0 else 1)" || { echo "control: unhardened unit scored $bare" >&2; exit 1; }
echo "control: the unit without its hardening scores $bare"
echo "deploy-check: all checks passed"
