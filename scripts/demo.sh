#!/usr/bin/env bash
# make demo: start the lab and the server (embedded defaults, lab as the only upstream),
# run the seed scenario against it with the official SDK, print its verdict, stop both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE_DIR=${DECLAWD_STATE_DIR:-/var/lib/declawd}
PORT=${DECLAWD_PORT:-8080}
LOGS=$STATE_DIR/logs
mkdir -p "$LOGS"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # Sandboxes and the gateway outlive the server by design; the demo leaves nothing behind.
  $BIN/declawd down --state-dir "$STATE_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

. scripts/start-lab-server.sh
export DECLAW_DOMAIN=localhost:$PORT
DECLAW_API_KEY=$(cat "$STATE_DIR/keys/dev-api-key")
export DECLAW_API_KEY
# Warm pools fill in the background from the start (DECLAWD_WARM_POOL, default auto): give
# them a moment, so the seed's create binds a parked sandbox instead of making one.
for _ in $(seq 1 150); do
  $BIN/declawd sandbox pools --json 2>/dev/null | $BIN/python -c \
    'import json,sys; p=json.load(sys.stdin)["pools"]; sys.exit(0 if all(x["ready"]>=x["target"] for x in p) else 1)' \
    && break
  sleep 0.2
done
echo "==> warm pools"
$BIN/declawd sandbox pools || true
echo "==> seed scenario: examples/network-l4-enforcement"
echo
$BIN/python examples/network-l4-enforcement/main.py
echo
grep -o "created sbx-[0-9a-f]* in [0-9]* ms ([a-z]*" "$LOGS/server.log" | tail -1 | sed 's/^/seed sandbox: /; s/$/)/' || true
echo "Explore: make serve  (the dashboard at http://localhost:${DECLAWD_PORT:-8080}/ and the dev key are printed; Ctrl-C stops everything)"
