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
# free_port's port is free only when it is chosen: the simulator's own device
# endpoints (or any other process) can take it before ped listens on it, so a
# start that fails with "Address already in use" is tried again on a new port.
start_sim() {
  local dir=$1 port attempt
  cargo build --quiet --bin ped
  for attempt in 1 2 3; do
    port=$(free_port)
    ./target/debug/ped simulate --ephemeral-ports --listen "127.0.0.1:$port" \
      --out "$dir/out" --speed "${PED_SIM_SPEED:-300}" ${PED_SIM_ARGS:-} >"$dir/ped.log" 2>&1 &
    SIM_PID=$!
    SIM_URL="http://127.0.0.1:$port"
    local i
    for ((i = 0; i < 600; i++)); do
      if curl -fsS -o /dev/null --max-time 2 "$SIM_URL/ready" 2>/dev/null; then
        PIDS+=("$SIM_PID")
        return 0
      fi
      kill -0 "$SIM_PID" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$SIM_PID" 2>/dev/null; then
      kill "$SIM_PID" 2>/dev/null || true
      wait "$SIM_PID" 2>/dev/null || true
      echo "timed out after 120s waiting for $SIM_URL/ready" >&2
      break
    fi
    wait "$SIM_PID" 2>/dev/null || true
    if grep -q "Address already in use" "$dir/ped.log" && [ "$attempt" -lt 3 ]; then
      echo "port $port was taken before ped listened on it; trying another" >&2
      continue
    fi
    echo "ped simulate exited before it was ready" >&2
    break
  done
  # ped's own message, not the tail of an error's backtrace
  echo "--- ped log (without backtrace frames)" >&2
  grep -v '^ *[0-9]*: \|^ *at ' "$dir/ped.log" | tail -30 >&2
  return 1
}

stop_pids() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
