#!/usr/bin/env bash
# Latency against shard count (`make bench-shards`): the same rows in one
# distributed table of 16, 64, 256, 1024 and 4096 shards over 4 nodes, and
# for each: count(*), a whole-table scan, a point lookup, and the first
# point lookup of a new session (which loads the table's topology). Writes a
# section of docs/BENCHMARKS.md (between its own markers) and
# docs/bench-shard-count.svg.
#
#   bench/shard_count.sh                 # 1,000,000 rows
#   BENCH_QUICK=1 bench/shard_count.sh   # 100,000 rows, fewer runs
#
# Knobs (environment): BENCH_ROWS, BENCH_SHARD_COUNTS ("16 64 256 1024 4096"),
# BENCH_QUERY_RUNS (count(*) and scan executions per shard count),
# BENCH_SECONDS (point-lookup run), BENCH_SESSIONS (new sessions for the
# first-lookup figure), BENCH_SEED, BENCH_PORT_BASE, BENCH_DIR, BENCH_KEEP=1,
# BENCH_NO_BUILD=1, BENCH_NO_DOC=1 (as in bench/run.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

if [ -n "${BENCH_QUICK:-}" ]; then
    MODE=quick
    ROWS=${BENCH_ROWS:-100000}
    QUERY_RUNS=${BENCH_QUERY_RUNS:-5}
    SECONDS_PER_RUN=${BENCH_SECONDS:-3}
    SESSIONS=${BENCH_SESSIONS:-5}
else
    MODE=full
    ROWS=${BENCH_ROWS:-1000000}
    QUERY_RUNS=${BENCH_QUERY_RUNS:-9}
    SECONDS_PER_RUN=${BENCH_SECONDS:-10}
    SESSIONS=${BENCH_SESSIONS:-9}
fi
SHARD_COUNTS=(${BENCH_SHARD_COUNTS:-16 64 256 1024 4096})
SEED=${BENCH_SEED:-20261126}

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)
PG_USER=${CONDUCTOR_PG_USER:-postgres}
NODE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/conductor-node

PORT_BASE=${BENCH_PORT_BASE:-27600}
ROUTER_PORT=$PORT_BASE
NODE_PORTS=($((PORT_BASE + 21)) $((PORT_BASE + 22)) $((PORT_BASE + 23)) $((PORT_BASE + 24)))

if [ -z "${BENCH_DIR:-}" ]; then
    BENCH_DIR=$(mktemp -d /var/tmp/conductor-bench-shards.XXXXXX)
fi
mkdir -p "$BENCH_DIR"
chmod 0755 "$BENCH_DIR"
OUT=$BENCH_DIR/out
rm -rf "$OUT"
RAW=$OUT/raw
mkdir -p "$RAW"

source "$ROOT/bench/lib.sh"
COMMAND=$(command_line bench/shard_count.sh)
NODE_THREADS=$(node_threads 4)

build_and_snapshot

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
START_UTC=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
for p in "$ROUTER_PORT" "${NODE_PORTS[@]}"; do
    port_free "$p" || die "port $p is in use (another bench running? set BENCH_PORT_BASE)"
done
init_template "the router"
log "starting the router Postgres (127.0.0.1:$ROUTER_PORT) and 4 nodes (${NODE_PORTS[*]})"
start_pg router "$ROUTER_PORT" "-c shared_preload_libraries=conductor"
for i in 1 2 3 4; do start_node "$i" "${NODE_PORTS[$((i - 1))]}"; done

export PGHOST=127.0.0.1 PGUSER=bench PGCONNECT_TIMEOUT=10
COLUMNS_SQL="id bigint NOT NULL, customer_id integer, name text, email text,
    amount numeric(12,2), created timestamptz, flag boolean"
sql="CREATE EXTENSION conductor; CREATE SERVER cluster FOREIGN DATA WRAPPER conductor;"
for i in 1 2 3 4; do
    sql+="SELECT conductor.add_node('cluster', 'node-$i', 'http://127.0.0.1:${NODE_PORTS[$((i - 1))]}');"
done
router postgres -c "CREATE DATABASE conductor"
router conductor -c "$sql" >/dev/null

{
    echo "mode=$MODE"
    echo "command=$COMMAND"
    echo "start_utc=$START_UTC"
    echo "loadavg_start=$LOADAVG_START"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "postgres=$(router postgres -At -c 'SELECT version()')"
    echo "conductor_ext=$(router conductor -At -c "SELECT extversion FROM pg_extension WHERE extname = 'conductor'") ($EXT_ID)"
    echo "git=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates sql 2>/dev/null || echo ' (with uncommitted changes in src/crates/sql)')"
    echo "rows=$ROWS"
    echo "shard_counts=${SHARD_COUNTS[*]}"
    echo "query_runs=$QUERY_RUNS"
    echo "seconds=$SECONDS_PER_RUN"
    echo "sessions=$SESSIONS"
    echo "seed=$SEED"
} >"$OUT/meta.txt"

# A new session: the library load, then three point lookups on keys of the
# table, each under \timing (the first one reads the table's topology from
# the catalog and opens the connection to its node).
new_session_sql() { # table
    echo "\\timing on"
    echo "LOAD 'conductor';"
    for k in 11 22 33; do echo "SELECT id, name FROM $1 WHERE id = $k;"; done
}

# The same new sessions on a local table of the same rows: what any
# Postgres table's first query in a session costs (catalog caches).
log "local table: load $ROWS rows, $SESSIONS new sessions"
router conductor -c "CREATE TABLE items_local ($COLUMNS_SQL, PRIMARY KEY (id))" >/dev/null
sed 's/INSERT INTO items /INSERT INTO items_local /' bench/workloads/load.sql |
    router conductor -v rows="$ROWS" -v seed="$SEED" -f - >/dev/null
router conductor -c "VACUUM ANALYZE items_local" >/dev/null
mkdir -p "$RAW/local"
for s in $(seq "$SESSIONS"); do
    new_session_sql items_local | router conductor -f - | awk '/^Time:/ {print $2}' | tr '\n' ' ' >>"$RAW/local/sessions.txt"
    echo >>"$RAW/local/sessions.txt"
done

for n in "${SHARD_COUNTS[@]}"; do
    dir=$RAW/$n
    mkdir -p "$dir"
    log "$n shards: create and load $ROWS rows"
    router conductor -c "DROP FOREIGN TABLE IF EXISTS items" \
        -c "CREATE FOREIGN TABLE items ($COLUMNS_SQL) SERVER cluster" \
        -c '\timing on' \
        -c "SELECT conductor.create_distributed_table('items', 'id', shard_count => $n)" |
        awk '/^Time:/ {print $2}' >"$dir/create_ms.txt"
    timed_psql conductor bench/workloads/load.sql -v rows="$ROWS" -v seed="$SEED" >"$dir/load_ms.txt"
    count=$(router conductor -At -c "SELECT count(*) FROM items")
    [ "$count" = "$ROWS" ] || die "$n shards: count(*) = $count, expected $ROWS"

    router conductor -c "SELECT count(*) FROM items" >/dev/null   # warm-up
    for _ in $(seq "$QUERY_RUNS"); do
        timed_psql conductor bench/workloads/w5_count.sql >>"$dir/count_ms.txt"
        timed_psql conductor bench/workloads/w7_scan.sql >>"$dir/scan_ms.txt"
    done

    mkdir -p "$dir/lookup"
    (cd "$dir/lookup" && pgbench -n -p "$ROUTER_PORT" --random-seed="$SEED" --log --log-prefix=tx \
        -c 1 -j 1 -T "$SECONDS_PER_RUN" -D rows="$ROWS" -f "$ROOT/bench/workloads/w1_point.sql" \
        conductor >stdout.txt 2>stderr.txt) || die "$n shards: pgbench failed: $(cat "$dir/lookup/stderr.txt")"

    for s in $(seq "$SESSIONS"); do
        new_session_sql items | router conductor -f - | awk '/^Time:/ {print $2}' | tr '\n' ' ' >>"$dir/sessions.txt"
        echo >>"$dir/sessions.txt"
    done
    log "  $n shards: create $(cat "$dir/create_ms.txt") ms, load $(cat "$dir/load_ms.txt") ms," \
        "count(*) $(sort -n "$dir/count_ms.txt" | tr '\n' ' ')ms"
done

echo "end_utc=$(date -u '+%Y-%m-%d %H:%M:%S UTC')" >>"$OUT/meta.txt"
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.txt"
if [ -z "${BENCH_NO_DOC:-}" ]; then
    python3 bench/shard_count_report.py "$OUT" "$ROOT/docs/BENCHMARKS.md" "$ROOT/docs/bench-shard-count.svg"
    log "wrote docs/BENCHMARKS.md and docs/bench-shard-count.svg"
else
    python3 bench/shard_count_report.py "$OUT" "$OUT/BENCHMARKS.md" "$OUT/bench-shard-count.svg"
    log "wrote $OUT/BENCHMARKS.md"
fi
