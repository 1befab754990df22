# Sourced by demo.sh and serve.sh (needs BIN, STATE_DIR, PORT, LOGS and the `pids` array):
# start the lab and the lab-mode server in the background, their pids in `pids` (the
# server's first), and wait until the server answers /health (exit 1 with its log if not).
echo "==> lab (simulated internet): log in $LOGS/lab.log"
$BIN/declawd lab serve --state-dir "$STATE_DIR" >"$LOGS/lab.log" 2>&1 &
pids+=($!)
echo "==> server on localhost:$PORT (lab mode): log in $LOGS/server.log"
$BIN/declawd server --lab --port "$PORT" --state-dir "$STATE_DIR" >"$LOGS/server.log" 2>&1 &
pids=($! "${pids[@]}")
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "server exited; last log lines:"; tail -30 "$LOGS/server.log"; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null || { echo "server did not become healthy"; tail -30 "$LOGS/server.log"; exit 1; }
