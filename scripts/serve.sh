#!/usr/bin/env bash
# make serve: run the lab and the server (lab mode) in the foreground for exploring: prints
# the dashboard URL and the dev key, runs until Ctrl-C, then stops both and kills every
# sandbox (`declawd down`), as make demo does, so nothing is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE_DIR=${DECLAWD_STATE_DIR:-/var/lib/declawd}
PORT=${DECLAWD_PORT:-8080}
LOGS=$STATE_DIR/logs
URL="http://localhost:$PORT"
mkdir -p "$LOGS"
if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
  echo "something already answers on port $PORT (another make serve or make demo?): stop it first," \
       "or choose another port with DECLAWD_PORT=..." >&2
  exit 1
fi
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping the server and the lab; killing every sandbox of this instance"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # Sandboxes and the gateway outlive the server by design; serve leaves nothing behind.
  $BIN/declawd down --state-dir "$STATE_DIR" >/dev/null 2>&1 || true
  $BIN/declawd lab down --state-dir "$STATE_DIR" >/dev/null 2>&1 || true
  echo "==> stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. scripts/start-lab-server.sh
KEY=$(cat "$STATE_DIR/keys/dev-api-key")
cat <<BANNER

  declawd is running (lab mode: the lab is the only internet its sandboxes see).

  Dashboard   $URL/          sign in with the dev key below
  Dev API key $KEY           (team "default"; also in $STATE_DIR/keys/dev-api-key)
  SDK / CLI   export DECLAW_DOMAIN=localhost:$PORT DECLAW_API_KEY=$KEY
  Logs        $LOGS/server.log, $LOGS/lab.log

  Ctrl-C stops the server and the lab and kills every sandbox.

BANNER
# Until Ctrl-C, or until the server or the lab exits on its own (then say so).
set +e
wait -n "${pids[@]}"
status=$?
set -e
echo "a process exited on its own (status $status); last server log lines:" >&2
tail -20 "$LOGS/server.log" >&2
exit 1
