#!/usr/bin/env bash
# The read path through Postgres, conductor only, per wire encoding: W7
# (whole-table COPY of `items`) with the backend's CPU time, and W1 (point
# lookups, pgbench) with TPS and latency percentiles. Unlike bench/run.sh it
# never installs anything: it runs a Postgres whose bin directory already has
# the extension (the tests' private copy that `make ext` installs into) and
# the release conductor-node, all on private ports and a temp directory.
#
#   make ext node EXT_PROFILE=--release && cargo build --release -p conductor-node
#   PG_BIN=<bin directory of the private Postgres copy that make ext installs into> bench/read_path_pg.sh
#
# Environment: ROWS (1000000), ENCODINGS ("json protobuf": values of
# conductor.wire_encoding, each in its own sessions), SCANS (3), RUNS (3
# pgbench runs of DURATION (8) seconds each per encoding, interleaved), CLIENTS (8),
# PORT (55432; nodes on PORT+1..PORT+4), DIR (temp directory, kept).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=${PG_BIN:?set PG_BIN to the bin directory of a Postgres 15 with the extension}
NODE_BIN=${NODE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/conductor-node}
ROWS=${ROWS:-1000000}
ENCODINGS=${ENCODINGS:-json protobuf}
SCANS=${SCANS:-3}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${DURATION:-8}
CLIENTS=${CLIENTS:-8}
PORT=${PORT:-55432}
PG_USER=${CONDUCTOR_PG_USER:-postgres}
DIR=${DIR:-$(mktemp -d /var/tmp/read_path_pg.XXXXXX)}
chmod 755 "$DIR"
[ "$(id -u)" -ne 0 ] || chown "$PG_USER:" "$DIR"

as_pg() { if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u "$PG_USER" -- "$@"); else "$@"; fi; }
log() { echo "[read_path_pg] $*" >&2; }
NODE_PIDS=()
cleanup() {
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

log "dir $DIR; load average $(cut -d' ' -f1-3 /proc/loadavg)"
as_pg "$PG_BIN/initdb" -D "$DIR/data" -U bench -A trust -E UTF8 --locale=C --no-sync >"$DIR/initdb.log"
as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 120 -o "-p $PORT \
-c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c shared_buffers=256MB \
-c synchronous_commit=off -c max_wal_size=8GB -c checkpoint_timeout=1h" start >/dev/null
for i in 1 2 3 4; do
    mkdir -p "$DIR/node-$i"
    "$NODE_BIN" --listen "127.0.0.1:$((PORT + i))" --data-dir "$DIR/node-$i" --log-level warn \
        >"$DIR/node-$i.log" 2>&1 &
    NODE_PIDS+=($!)
done
sleep 1
psql_() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U bench "$@"; }
setup="CREATE EXTENSION conductor; CREATE SERVER cluster FOREIGN DATA WRAPPER conductor;"
for i in 1 2 3 4; do
    setup+="SELECT conductor.add_node('cluster', 'node-$i', 'http://127.0.0.1:$((PORT + i))');"
done
setup+="CREATE FOREIGN TABLE items (id bigint NOT NULL, customer_id integer, name text,
    email text, amount numeric(12,2), created timestamptz, flag boolean) SERVER cluster;
    SELECT conductor.create_distributed_table('items', 'id', shard_count => 16);"
psql_ -d postgres -c "$setup" >/dev/null
t0=$(date +%s.%N)
psql_ -d postgres -v rows="$ROWS" -v seed=20261126 -f "$ROOT/bench/workloads/load.sql" >/dev/null
log "loaded $ROWS rows in $(echo "$(date +%s.%N) - $t0" | bc) s"

# W7: per encoding, one session: a lookup (warm-up), the backend's CPU
# ticks, SCANS timed COPYs, CPU ticks again.
for enc in $ENCODINGS; do
    out=$(PGOPTIONS="-c conductor.wire_encoding=$enc" psql_ -d postgres -At <<SQL
SELECT count(*) FROM items WHERE id = 1;
SELECT 'cpu ' || (split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 12)::bigint
             + split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 13)::bigint);
\timing on
$(for _ in $(seq "$SCANS"); do echo "COPY (SELECT * FROM items) TO '/dev/null';"; done)
\timing off
SELECT 'cpu ' || (split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 12)::bigint
             + split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 13)::bigint);
SQL
)
    echo "$out" | python3 -c '
import re, statistics, sys
enc, rows, scans = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
text = sys.stdin.read()
cpu = [int(c) for c in re.findall(r"^cpu (\d+)", text, re.M)]
ms = [float(t) for t in re.findall(r"^Time: ([\d.]+) ms", text, re.M)]
med = statistics.median(ms)
print(f"W7 {enc}: scans (ms) {ms}; median {med:.0f} ms = {rows / med * 1000:.0f} rows/s; "
      f"backend CPU {(cpu[1] - cpu[0]) / 100 / scans / (rows / 1e6):.2f} s per 1M rows")
' "$enc" "$ROWS" "$SCANS"
done

# W1: pgbench point lookups, runs interleaved across encodings.
for run in $(seq "$RUNS"); do
    for enc in $ENCODINGS; do
        rm -f "$DIR"/w1log*
        res=$(cd "$DIR" && PGOPTIONS="-c conductor.wire_encoding=$enc" "$PG_BIN/pgbench" -n \
            -h 127.0.0.1 -p "$PORT" -U bench --random-seed=20261126 -c "$CLIENTS" -j 2 \
            -T "$SECONDS_PER_RUN" -M simple -D rows="$ROWS" --log --log-prefix=w1log \
            -f "$ROOT/bench/workloads/w1_point.sql" postgres 2>&1) || { echo "$res" >&2; exit 1; }
        tps=$(echo "$res" | awk '/^tps/ {print $3; exit}')
        cat "$DIR"/w1log* | awk '{print $3}' | sort -n >"$DIR/lat"
        n=$(wc -l <"$DIR/lat")
        p50=$(sed -n "$(((n + 1) / 2))p" "$DIR/lat")
        p99=$(sed -n "$(((n * 99 + 99) / 100))p" "$DIR/lat")
        echo "W1 $enc run $run: $tps TPS, p50 ${p50} us, p99 ${p99} us ($n transactions, $CLIENTS clients)"
    done
done
log "load average $(cut -d' ' -f1-3 /proc/loadavg)"
