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
echo "==> seed scenario: examples/network-l4-enforcement"
echo
$BIN/python examples/network-l4-enforcement/main.py
echo
echo "Explore: make serve  (the dashboard at http://localhost:${DECLAWD_PORT:-8080}/ and the dev key are printed; Ctrl-C stops everything)"
