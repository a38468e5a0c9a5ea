# Sourced by the suites that run `ped simulate` and look at it from outside.
# Defines: free_port, wait_http URL SECONDS, start_sim DIR (sets SIM_PID, SIM_URL),
# stop_pids (kills every pid in PIDS). Each pid is one this script started.
PIDS=()

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until URL answers 200 (curl -f), at most SECONDS; fails loudly otherwise.
wait_http() {
  local url=$1 secs=$2 i
  for ((i = 0; i < secs * 5; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "timed out after ${secs}s waiting for $url" >&2
  return 1
}

# Builds ped (debug, like `cargo test`), starts the simulated district on
# 127.0.0.1 with free ports, waits for /ready. PED_SIM_SPEED and PED_SIM_ARGS
# (word-split, e.g. "--start 2025-06-21T11:00:00+02:00") adjust the run.
start_sim() {
  local dir=$1
  cargo build --quiet --bin ped
  local port
  port=$(free_port)
  ./target/debug/ped simulate --ephemeral-ports --listen "127.0.0.1:$port" \
    --out "$dir/out" --speed "${PED_SIM_SPEED:-300}" ${PED_SIM_ARGS:-} >"$dir/ped.log" 2>&1 &
  SIM_PID=$!
  PIDS+=("$SIM_PID")
  SIM_URL="http://127.0.0.1:$port"
  if ! wait_http "$SIM_URL/ready" 120; then
    echo "--- ped log (tail)" >&2; tail -30 "$dir/ped.log" >&2
    return 1
  fi
}

stop_pids() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
