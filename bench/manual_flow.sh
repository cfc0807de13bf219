#!/usr/bin/env bash
# The manual flow mmdemo replaces, written by hand: start `vllm serve` in its own process group,
# poll /health with curl every second, send the requests one by one with curl, kill the group and
# wait until every process of it is gone. Prints "mark NAME EPOCHREALTIME" at each step.
# usage: manual_flow.sh PORT PAYLOAD_DIR LOG_FILE -- vllm serve MODEL FLAGS...
set -u
port=$1 payloads=$2 log=$3
shift 4
base="http://127.0.0.1:$port"
mark() { echo "mark $1 $EPOCHREALTIME"; }

mark launch
setsid "$@" >"$log" 2>&1 &
pid=$!
echo "pid $pid"
until curl -sf "$base/health" >/dev/null; do
  kill -0 "$pid" 2>/dev/null || { echo "vllm serve exited before it was ready" >&2; exit 3; }
  sleep 1
done
mark ready

failed=0
for payload in "$payloads"/*.json; do
  curl -sf "$base/v1/chat/completions" -H 'Content-Type: application/json' \
    --data-binary "@$payload" >/dev/null || failed=$((failed + 1))
done
mark demos

kill -TERM -- "-$pid"
wait "$pid"
# vLLM's workers outlive the API server by seconds: done when the whole group is gone.
for _ in $(seq 150); do
  pgrep -g "$pid" >/dev/null || break
  sleep 0.1
done
pkill -KILL -g "$pid" 2>/dev/null
mark gone
echo "failed $failed"
