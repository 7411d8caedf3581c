#!/usr/bin/env bash
# conductor-node benchmark: point selects/s and single-row inserts/s over
# keep-alive HTTP (wrk, 2 threads, 8 connections) against a release build on
# loopback, then the node's peak RSS while a 1,000,000-row table is read
# through /v3/cursor.
#
#   bench/node/run.sh            # DURATION=10s ROWS=100000 by default
#
# Prints the figures; docs/BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
ROWS=${ROWS:-100000}
SCAN_ROWS=${SCAN_ROWS:-1000000}
PORT=${PORT:-7455}
export ROWS

# BIN=path skips the build (e.g. while others hold cargo's lock).
if [ -z "${BIN:-}" ]; then
  cargo build --release -p conductor-node
  BIN=${CARGO_TARGET_DIR:-target}/release/conductor-node
fi
DATA=$(mktemp -d /tmp/conductor-node-bench.XXXXXX)
NODE_PID=
cleanup() {
  if [ -n "$NODE_PID" ]; then kill -TERM "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT

start_node() {
  "$BIN" --listen 127.0.0.1:$PORT --data-dir "$DATA" --log-level warn "$@" &
  NODE_PID=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && return; sleep 0.05; done
  echo "node did not start" >&2; exit 1
}
stop_node() { kill -TERM "$NODE_PID"; wait "$NODE_PID" || true; NODE_PID=; }
sql() { # run one statement on a self-closing stream
  curl -fsS "http://127.0.0.1:$PORT/v2/pipeline" -H 'Content-Type: application/json' \
    -d "{\"baton\":null,\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"$1\"}},{\"type\":\"close\"}]}" >/dev/null
}

echo "== load before: $(cat /proc/loadavg)"
echo "== machine: $(nproc) CPUs, $(grep 'model name' /proc/cpuinfo | head -1 | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; $(wrk --version 2>&1 | head -1)"
start_node
sql "CREATE TABLE kv(id INTEGER PRIMARY KEY, v TEXT NOT NULL)"
sql "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $ROWS) INSERT INTO kv SELECT i, 'value-' || i FROM c"
sql "CREATE TABLE ins(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)"

# Runs wrk and adds the CPU time the node and wrk spent per request (from
# /proc/PID/stat and /usr/bin/time): that cost does not depend on what else
# the machine is running, unlike requests/s.
bench() { # bench NAME LUA
  local c0 c1 out n w
  echo "== $1: wrk -t2 -c8 -d$DURATION -s bench/node/$2 http://127.0.0.1:$PORT/v2/pipeline"
  c0=$(awk '{print $14+$15}' /proc/$NODE_PID/stat)
  out=$( { /usr/bin/time -f "WRKCPU %U %S" wrk -t2 -c8 -d"$DURATION" -s bench/node/$2 "http://127.0.0.1:$PORT/v2/pipeline"; } 2>&1)
  c1=$(awk '{print $14+$15}' /proc/$NODE_PID/stat)
  echo "$out" | grep -v WRKCPU
  n=$(echo "$out" | grep -oE '^ *[0-9]+ requests' | grep -oE '[0-9]+')
  w=$(echo "$out" | grep WRKCPU | awk '{printf "%d", ($2+$3)*1e6}')
  awk -v c="$((c1-c0))" -v n="$n" -v w="$w" -v hz="$(getconf CLK_TCK)" -v la="$(cut -d' ' -f1-3 /proc/loadavg)" \
    'BEGIN { printf "  CPU per request: node %.1f us, wrk %.1f us; load average after: %s\n", c*1e6/hz/n, w/n, la }'

}
bench "point selects" select.lua
bench "single-row inserts" insert.lua
curl -fsS "http://127.0.0.1:$PORT/v2/pipeline" -H 'Content-Type: application/json' \
  -d '{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"SELECT count(*) FROM ins"}},{"type":"close"}]}'; echo "  <- rows inserted"

echo "== cursor scan of $SCAN_ROWS rows: peak RSS (VmHWM) of the node"
sql "CREATE TABLE big(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL)"
sql "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $SCAN_ROWS) INSERT INTO big SELECT i, i * 7, 'some text for row ' || i, i / 3.0 FROM c"
stop_node
start_node   # fresh process, so VmHWM reflects only the scan
echo "  before scan: $(grep VmHWM /proc/$NODE_PID/status)"
START=$(date +%s.%N)
curl -fsS -N "http://127.0.0.1:$PORT/v3/cursor" -H 'Content-Type: application/json' \
  -d '{"baton":null,"batch":{"steps":[{"stmt":{"sql":"SELECT * FROM big"}}]}}' | wc -lc | awk '{print "  received " $1 " lines, " $2 " bytes"}'
END=$(date +%s.%N)
echo "  after scan:  $(grep VmHWM /proc/$NODE_PID/status)  (scan took $(echo "$END - $START" | bc) s)"
