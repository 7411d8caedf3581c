#!/usr/bin/env bash
# The benchmark (`make bench`): conductor side by side with its
# peer (a hash-partitioned table whose 16 partitions are postgres_fdw foreign
# tables on 4 other Postgres instances, async_capable on) and with a plain
# local table, on the same generated data, in one run. Writes the figures and
# a plot into docs/BENCHMARKS.md (its own section, between markers; any
# other section of that file is kept) and docs/bench-w6-fanout.svg.
#
#   bench/run.sh                 # full run: 1,000,000 rows, 20 s pgbench runs (~1 h)
#   BENCH_QUICK=1 bench/run.sh   # quick: 100,000 rows, 3 s runs (a few minutes)
#
# Knobs (environment): BENCH_ROWS, BENCH_SECONDS (per throughput run),
# BENCH_RUNS (throughput runs per target), BENCH_QUERY_RUNS (executions of
# W4/W5/W9/W10; 20 times that for the one-client runs of W11 and W15),
# BENCH_SCAN_RUNS (W7), BENCH_LOAD_RUNS (W8), BENCH_W6_ROWS,
# BENCH_W6_SECONDS, BENCH_DELAY_MS, BENCH_SEED, BENCH_NODES (conductor's
# nodes, 4 by default, at most 16: with 16 every shard has a node, and so a
# SQLite database and write lock, of its own), BENCH_PORT_BASE (ports
# BASE..BASE+52 on 127.0.0.1, below the ephemeral range so tests' free ports
# never collide), BENCH_DIR (work dir; default a new /var/tmp dir),
# BENCH_NODE_OPTS (extra conductor-node options, recorded in the doc),
# BENCH_NODE_BIN (another conductor-node build to run, e.g. to compare two),
# BENCH_ONLY (workloads to run, e.g. 'W12 W13 W14'; the load, W8, always
# runs), BENCH_HOLD=1 (after the load, wait until $BENCH_DIR/hold is removed, to
# query the cluster by hand), BENCH_KEEP=1 (keep the data dirs), BENCH_NO_BUILD=1 (use what is built and
# installed), BENCH_NO_DOC=1 (don't touch docs/).
#
# Everything it starts (5 Postgres, 8 nodes, 1 proxy) runs on loopback and
# is stopped on exit, on success, failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

# ---- settings ------------------------------------------------------------------

if [ -n "${BENCH_QUICK:-}" ]; then
    MODE=quick
    ROWS=${BENCH_ROWS:-100000}
    SECONDS_PER_RUN=${BENCH_SECONDS:-3}
    RUNS=${BENCH_RUNS:-3}
    QUERY_RUNS=${BENCH_QUERY_RUNS:-5}
    SCAN_RUNS=${BENCH_SCAN_RUNS:-3}
    LOAD_RUNS=${BENCH_LOAD_RUNS:-2}
    W6_SECONDS=${BENCH_W6_SECONDS:-3}
else
    MODE=full
    ROWS=${BENCH_ROWS:-1000000}
    SECONDS_PER_RUN=${BENCH_SECONDS:-20}
    RUNS=${BENCH_RUNS:-3}
    QUERY_RUNS=${BENCH_QUERY_RUNS:-10}
    SCAN_RUNS=${BENCH_SCAN_RUNS:-5}
    LOAD_RUNS=${BENCH_LOAD_RUNS:-3}
    W6_SECONDS=${BENCH_W6_SECONDS:-10}
fi
W6_ROWS=${BENCH_W6_ROWS:-16000}
DELAY_MS=${BENCH_DELAY_MS:-20}
NODE_OPTIONS=${BENCH_NODE_OPTS:-}   # extra conductor-node options (default: none)
SEED=${BENCH_SEED:-20261126}
CLIENTS=8
THREADS=2
TARGETS=(conductor peer local)

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)
PG_USER=${CONDUCTOR_PG_USER:-postgres}
NODE_BIN=${BENCH_NODE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/conductor-node}

PORT_BASE=${BENCH_PORT_BASE:-27500}
ROUTER_PORT=$PORT_BASE                                   # the router Postgres
SHARD_PORTS=($((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)) $((PORT_BASE + 4)))
PROXY_PORTS=($((PORT_BASE + 11)) $((PORT_BASE + 12)) $((PORT_BASE + 13)) $((PORT_BASE + 14)))
N_NODES=${BENCH_NODES:-4}
[ "$N_NODES" -ge 1 ] && [ "$N_NODES" -le 16 ] || { echo "bench: BENCH_NODES must be 1..16" >&2; exit 1; }
NODE_PORTS=()
for i in $(seq "$N_NODES"); do
    if [ "$i" -le 4 ]; then NODE_PORTS+=($((PORT_BASE + 20 + i))); else NODE_PORTS+=($((PORT_BASE + 36 + i))); fi
done
SLOW_NODE_PORTS=($((PORT_BASE + 31)) $((PORT_BASE + 32)) $((PORT_BASE + 33)) $((PORT_BASE + 34)))

if [ -z "${BENCH_DIR:-}" ]; then
    BENCH_DIR=$(mktemp -d /var/tmp/conductor-bench.XXXXXX)
fi
mkdir -p "$BENCH_DIR"
chmod 0755 "$BENCH_DIR"   # the Postgres user must reach its data dirs inside
OUT=$BENCH_DIR/out
rm -rf "$OUT"
RAW=$OUT/raw
mkdir -p "$RAW"

source "$ROOT/bench/lib.sh"
COMMAND=$(command_line bench/run.sh)
NODE_THREADS=$(node_threads "$N_NODES")

# Whether workload $1 is to run (BENCH_ONLY unset: all of them).
want() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }

build_and_snapshot

# ---- servers ------------------------------------------------------------------------

# The run proper starts here (after the build).
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
START_UTC=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

for p in "$ROUTER_PORT" "${SHARD_PORTS[@]}" "${PROXY_PORTS[@]}" "${NODE_PORTS[@]}" "${SLOW_NODE_PORTS[@]}"; do
    port_free "$p" || die "port $p is in use (another bench running? set BENCH_PORT_BASE)"
done

init_template "5 instances"

log "starting the router Postgres (127.0.0.1:$ROUTER_PORT) and 4 shard Postgres (${SHARD_PORTS[*]})"
start_pg router "$ROUTER_PORT" "-c shared_preload_libraries=conductor"
for i in 1 2 3 4; do start_pg "shard$i" "${SHARD_PORTS[$((i - 1))]}"; done
log "starting $N_NODES nodes (${NODE_PORTS[*]}) and 4 nodes with --delay-ms $DELAY_MS (${SLOW_NODE_PORTS[*]})"
read -r -a NODE_OPTS <<<"$NODE_OPTIONS"
for i in $(seq "$N_NODES"); do start_node "$i" "${NODE_PORTS[$((i - 1))]}" "${NODE_OPTS[@]}"; done
NODE_PIDS=("${CHILD_PIDS[@]}")   # the nodes of the main cluster (W7 reads their CPU time)
for i in 1 2 3 4; do start_node "slow$i" "${SLOW_NODE_PORTS[$((i - 1))]}" --delay-ms "$DELAY_MS" "${NODE_OPTS[@]}"; done
log "starting the delaying proxy (+$DELAY_MS ms) in front of the shard Postgres (${PROXY_PORTS[*]})"
proxy_pairs=()
for i in 0 1 2 3; do proxy_pairs+=("${PROXY_PORTS[$i]}:${SHARD_PORTS[$i]}"); done
python3 "$ROOT/bench/delay_proxy.py" --delay-ms "$DELAY_MS" "${proxy_pairs[@]}" >"$OUT/proxy.log" 2>&1 </dev/null &
CHILD_PIDS+=("$!")
for _ in $(seq 50); do port_free "${PROXY_PORTS[3]}" || break; sleep 0.1; done

# ---- data and targets ---------------------------------------------------------------

COLUMNS_SQL="id bigint NOT NULL, customer_id integer, name text, email text,
    amount numeric(12,2), created timestamptz, flag boolean"

# Peer partition p (0..15) lives on shard Postgres (p % 4) + 1.
peer_server_of() { echo $(($1 % 4 + 1)); }
part_name() { printf 'items_p%02d' "$1"; }

setup_shard_dbs() {
    local i p
    for i in 1 2 3 4; do
        psql_at "${SHARD_PORTS[$((i - 1))]}" postgres -c "CREATE DATABASE shard" -c "CREATE DATABASE shard_w6"
    done
}

# (Re)create the peer's remote tables of one database on every shard instance.
reset_peer_remote() { # shard db
    local db=$1 p sql
    for i in 1 2 3 4; do
        sql=""
        for p in $(seq 0 15); do
            [ "$(peer_server_of "$p")" = "$i" ] || continue
            sql+="DROP TABLE IF EXISTS $(part_name "$p");
                  CREATE TABLE $(part_name "$p") ($COLUMNS_SQL, PRIMARY KEY (id));"
        done
        psql_at "${SHARD_PORTS[$((i - 1))]}" "$db" -c "$sql"
    done
}

setup_peer_db() { # router db, shard db, ports of the 4 servers it connects to
    local db=$1 shard_db=$2
    shift 2
    local ports=("$@") sql i p
    router postgres -c "CREATE DATABASE $db"
    sql="CREATE EXTENSION postgres_fdw;"
    for i in 1 2 3 4; do
        # async_capable: Append runs the partitions' scans concurrently.
        # use_remote_estimate off: it would cost an extra EXPLAIN round trip
        # per foreign table at every planning; ANALYZE keeps local stats instead.
        # fetch_size 1000 (default 100) for big scans; batch_size 1000 for
        # inserts, like conductor's default batch.
        sql+="CREATE SERVER shard$i FOREIGN DATA WRAPPER postgres_fdw OPTIONS (
                  host '127.0.0.1', port '${ports[$((i - 1))]}', dbname '$shard_db',
                  async_capable 'true', use_remote_estimate 'false',
                  fetch_size '1000', batch_size '1000');
              CREATE USER MAPPING FOR bench SERVER shard$i OPTIONS (user 'bench');"
    done
    sql+="CREATE TABLE items ($COLUMNS_SQL) PARTITION BY HASH (id);"
    for p in $(seq 0 15); do
        sql+="CREATE FOREIGN TABLE $(part_name "$p") PARTITION OF items
                  FOR VALUES WITH (MODULUS 16, REMAINDER $p)
                  SERVER shard$(peer_server_of "$p") OPTIONS (table_name '$(part_name "$p")');"
    done
    router "$db" -c "$sql"
}

setup_conductor_db() { # db, node ports...
    local db=$1
    shift
    local sql="CREATE EXTENSION conductor; CREATE SERVER cluster FOREIGN DATA WRAPPER conductor;" i=1 port
    for port in "$@"; do
        sql+="SELECT conductor.add_node('cluster', 'node-$i', 'http://127.0.0.1:$port');"
        i=$((i + 1))
    done
    router postgres -c "CREATE DATABASE $db"
    router "$db" -c "$sql" >/dev/null
}

# Empty `items` of one target (outside any timing).
reset_items() { # target db [shard db]
    case $1 in
        conductor)
            router "$2" -c "DROP FOREIGN TABLE IF EXISTS items" \
                -c "CREATE FOREIGN TABLE items ($COLUMNS_SQL) SERVER cluster" \
                -c "SELECT conductor.create_distributed_table('items', 'id', shard_count => 16)" >/dev/null ;;
        peer) reset_peer_remote "$3" ;;
        local)
            router "$2" -c "DROP TABLE IF EXISTS items" \
                -c "CREATE TABLE items ($COLUMNS_SQL, PRIMARY KEY (id))" ;;
    esac
}

analyze_items() { # target db [shard db]
    case $1 in
        conductor) : ;;   # the FDW keeps no local statistics
        peer)
            for i in 1 2 3 4; do psql_at "${SHARD_PORTS[$((i - 1))]}" "$3" -c "VACUUM ANALYZE"; done
            router "$2" -c "ANALYZE items" ;;
        local) router "$2" -c "VACUUM ANALYZE items" ;;
    esac
}

# ---- setup ----------------------------------------------------------------------------

log "creating databases: conductor, peer, local (+ conductor_w6, peer_w6 behind the delays)"
setup_shard_dbs
setup_conductor_db conductor "${NODE_PORTS[@]}"
setup_conductor_db conductor_w6 "${SLOW_NODE_PORTS[@]}"
setup_peer_db peer shard "${SHARD_PORTS[@]}"
setup_peer_db peer_w6 shard_w6 "${PROXY_PORTS[@]}"
router postgres -c "CREATE DATABASE local"

# ---- metadata -----------------------------------------------------------------------

{
    echo "mode=$MODE"
    echo "command=$COMMAND"
    echo "start_utc=$START_UTC"
    echo "loadavg_start=$LOADAVG_START"
    echo "nproc=$(nproc)"
    echo "mem_total=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "kernel=$(uname -sr)"
    echo "postgres=$(router postgres -At -c 'SELECT version()')"
    echo "pgbench=$(pgbench --version)"
    echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
    echo "python=$(python3 --version 2>&1)"
    echo "node=$("$NODE_BIN" --version 2>/dev/null || echo unknown)${BENCH_NODE_BIN:+ ($NODE_BIN, $(sha256sum "$NODE_BIN" | cut -c1-12))}"
    echo "conductor_ext=$(router conductor -At -c "SELECT extversion FROM pg_extension WHERE extname = 'conductor'") ($EXT_ID)"
    echo "git=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates sql 2>/dev/null || echo ' (with uncommitted changes in src/crates/sql)')"
    echo "rows=$ROWS"
    echo "w6_rows=$W6_ROWS"
    echo "seed=$SEED"
    echo "seconds=$SECONDS_PER_RUN"
    echo "runs=$RUNS"
    echo "query_runs=$QUERY_RUNS"
    echo "scan_runs=$SCAN_RUNS"
    echo "load_runs=$LOAD_RUNS"
    echo "w6_seconds=$W6_SECONDS"
    echo "only=${BENCH_ONLY:-}"
    echo "delay_ms=$DELAY_MS"
    echo "node_options=${NODE_OPTIONS:-(defaults)}"
    echo "nodes=$N_NODES"
    echo "node_threads=${BENCH_NODE_THREADS:-$NODE_THREADS}"
    echo "clients=$CLIENTS"
    echo "threads=$THREADS"
    echo "pg_settings=$(echo "$PG_SETTINGS" | tr -s ' ')"
    echo "jit=$(router postgres -At -c 'SHOW jit')"
    echo "max_parallel_workers_per_gather=$(router postgres -At -c 'SHOW max_parallel_workers_per_gather')"
} >"$OUT/meta.txt"

# ---- W8: bulk load (the last run leaves the dataset in place) -------------------------

log "W8: INSERT ... SELECT of $ROWS rows, $LOAD_RUNS runs per target"
mkdir -p "$RAW/W8"
echo "psql -v rows=$ROWS -v seed=$SEED -f bench/workloads/load.sql <db>  (each run into an empty items; timed with \\timing)" >"$RAW/W8/client.txt"
for run in $(seq "$LOAD_RUNS"); do
    for t in "${TARGETS[@]}"; do
        dir=$RAW/W8/$t
        mkdir -p "$dir"
        if ! guard "$dir/stderr.txt" reset_items "$t" "$t" shard; then
            fail_note "$dir" "$dir/stderr.txt"
            continue
        fi
        if ! timed_psql "$t" bench/workloads/load.sql -v rows="$ROWS" -v seed="$SEED" \
                >>"$dir/times_ms.txt" 2>"$dir/stderr.txt"; then
            fail_note "$dir" "$dir/stderr.txt"
        fi
        log "  W8 run $run $t: $(tail -n1 "$dir/times_ms.txt" 2>/dev/null) ms"
    done
done
for t in "${TARGETS[@]}"; do
    guard "$OUT/analyze-$t.err" analyze_items "$t" "$t" shard || log "ANALYZE failed on $t (see $OUT/analyze-$t.err)"
done
for t in "${TARGETS[@]}"; do
    n=$(router "$t" -At -c "SELECT count(*) FROM items" 2>"$OUT/count-$t.err" || echo "error: $(cat "$OUT/count-$t.err")")
    echo "count_$t=$n" >>"$OUT/meta.txt"
    log "  items in $t: $n"
done

if [ -n "${BENCH_HOLD:-}" ]; then
    # For poking at the loaded cluster by hand: the workloads wait until
    # the hold file is removed (or the script is stopped).
    touch "$BENCH_DIR/hold"
    log "holding: psql -h 127.0.0.1 -p $ROUTER_PORT -U bench conductor|peer|local; rm $BENCH_DIR/hold to go on"
    while [ -e "$BENCH_DIR/hold" ]; do sleep 1; done
fi

# ---- pgbench workloads ----------------------------------------------------------------

# The main cluster's nodes' /stats, one JSON line per node.
node_stats_json() { # [path: /stats, or /lookup/stats for the lookup databases]
    local port path=${1:-/stats}
    for port in "${NODE_PORTS[@]}"; do
        timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port &&
            printf 'GET $path HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && cat <&3 && echo" 2>/dev/null |
            sed -n '/^{/p'
    done
}

# The same, summed: "lock_waits lock_wait_us requests_total".
node_stats() {
    node_stats_json | python3 -c '
import json, sys
t = [0, 0, 0]
for line in sys.stdin:
    v = json.loads(line)
    t[0] += v.get("lock_waits", 0); t[1] += v.get("lock_wait_us", 0); t[2] += v.get("requests_total", 0)
print(*t)'
}

# One pgbench run; its stdout and per-transaction log go to RAW/W/target/runN
# (for conductor also its nodes' /stats before and after).
pgbench_run() { # workload target run db script [pgbench args...]
    local w=$1 t=$2 run=$3 db=$4 script=$5
    shift 5
    local dir=$RAW/$w/$t/run$run
    mkdir -p "$dir"
    if [[ $t == conductor* ]] && [ "$db" = conductor ]; then node_stats >"$dir/node_stats_before.txt" || true; fi
    if ! (cd "$dir" && pgbench -n -p "$ROUTER_PORT" --random-seed="$SEED" --log --log-prefix=tx \
            "$@" -f "$ROOT/bench/workloads/$script" "$db" >stdout.txt 2>stderr.txt); then
        fail_note "$dir" "$dir/stderr.txt"
        return 0
    fi
    if [[ $t == conductor* ]] && [ "$db" = conductor ]; then node_stats >"$dir/node_stats_after.txt" || true; fi
    log "  $w $t run $run: $(grep -E '^tps' "$dir/stdout.txt" | head -1)"
}

# The exact client command of a workload, for the doc.
client_line() { # workload env-prefix args...
    local w=$1 envp=$2
    shift 2
    mkdir -p "$RAW/$w"
    echo "${envp}pgbench -n --random-seed=$SEED $* <db>" >"$RAW/$w/client.txt"
}

throughput_workload() { # workload script query-mode PGOPTIONS
    local w=$1 script=$2 mode=$3 pgoptions=$4 run t
    local args=(-c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -M "$mode" -D rows="$ROWS")
    client_line "$w" "${pgoptions:+PGOPTIONS='$pgoptions' }" "${args[@]}" -D "run=<0 for the warm-up, then 1..$RUNS>" -f "bench/workloads/$script"
    log "$w: $script, ${args[*]}${pgoptions:+, PGOPTIONS='$pgoptions'}, $RUNS runs per target"
    for t in "${TARGETS[@]}"; do   # warm-up (caches, connections to the shards), not recorded
        PGOPTIONS=$pgoptions pgbench -n -p "$ROUTER_PORT" -c "$CLIENTS" -j "$THREADS" -T 2 \
            -M "$mode" -D rows="$ROWS" -D run=0 -f "bench/workloads/$script" "$t" >/dev/null 2>&1 || true
    done
    for run in $(seq "$RUNS"); do   # targets interleaved, so drift hits all three alike
        for t in "${TARGETS[@]}"; do
            PGOPTIONS=$pgoptions pgbench_run "$w" "$t" "$run" "$t" "$script" "${args[@]}" -D run="$run"
        done
    done
}

# Single client; every transaction's latency is one sample.
latency_workload() { # workload script "targets" db-suffix -t|-T count [-D defines...]
    local w=$1 script=$2 targets=$3 suffix=$4 how=$5 count=$6 t
    shift 6
    local args=(-c 1 -j 1 "$how" "$count" "$@")
    client_line "$w" "" "${args[@]}" -f "bench/workloads/$script"
    log "$w: $script, ${args[*]}"
    for t in $targets; do
        pgbench -n -p "$ROUTER_PORT" -c 1 -t 1 "$@" -f "bench/workloads/$script" "$t$suffix" \
            >/dev/null 2>&1 || true   # warm-up, not recorded
        pgbench_run "$w" "$t" 1 "$t$suffix" "$script" "${args[@]}"
    done
}

want W1 && throughput_workload W1 w1_point.sql simple ""
want W2 && throughput_workload W2 w1_point.sql prepared "-c plan_cache_mode=force_generic_plan"

# W1 and W2 on conductor with its shared statistics on (the default) and
# off (conductor.track_stats), runs interleaved so drift hits both alike:
# what the counting costs.
stats_overhead() { # workload script query-mode PGOPTIONS
    local w=$1-stats script=$2 mode=$3 pgoptions=$4 run setting
    local args=(-c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -M "$mode" -D rows="$ROWS")
    client_line "$w" "PGOPTIONS='$pgoptions -c conductor.track_stats=<on|off>' " "${args[@]}" -D "run=<1..$RUNS>" -f "bench/workloads/$script"
    log "$w: $script with conductor.track_stats on and off, $RUNS runs each"
    for run in $(seq "$RUNS"); do
        for setting in on off; do
            PGOPTIONS="$pgoptions -c conductor.track_stats=$setting" \
                pgbench_run "$w" "$setting" "$run" conductor "$script" "${args[@]}" -D run="$run"
        done
    done
}
# (BENCH_ONLY='W1-stats W2-stats' runs these alone.)
{ want W1 || want W1-stats; } && stats_overhead W1 w1_point.sql simple ""
{ want W2 || want W2-stats; } && stats_overhead W2 w1_point.sql prepared "-c plan_cache_mode=force_generic_plan"
want W3 && throughput_workload W3 w3_in10.sql simple ""
want W4 && latency_workload W4 w4_filter.sql "${TARGETS[*]}" "" -t "$QUERY_RUNS"
want W5 && latency_workload W5-count w5_count.sql "${TARGETS[*]}" "" -t "$QUERY_RUNS"
want W5 && latency_workload W5-sum w5_sum.sql "${TARGETS[*]}" "" -t "$QUERY_RUNS"
want W5 && latency_workload W5-group w5_group.sql "${TARGETS[*]}" "" -t "$QUERY_RUNS"
want W9 && latency_workload W9 w9_topn.sql "${TARGETS[*]}" "" -t "$QUERY_RUNS"
want W10 && latency_workload W10 w10_group_topn.sql "${TARGETS[*]}" "" -t "$QUERY_RUNS"

# An index on one column of every peer partition's remote table (named
# <partition>_<suffix>, analyzed after), or its drop.
peer_indexes() { # create|drop column suffix
    local sql i
    if [ "$1" = create ]; then
        sql="EXECUTE format('CREATE INDEX %I ON %I ($2)', t || '_$3', t); EXECUTE format('ANALYZE %I', t);"
    else
        sql="EXECUTE format('DROP INDEX IF EXISTS %I', t || '_$3');"
    fi
    for i in 1 2 3 4; do
        psql_at "${SHARD_PORTS[$((i - 1))]}" shard -c "DO \$\$ DECLARE t text; BEGIN
            FOR t IN SELECT relname FROM pg_class WHERE relname LIKE 'items_p%' AND relkind = 'r' LOOP
                $sql
            END LOOP; END \$\$" >/dev/null
    done
}

# W4i: W4 again with an index on the filtered column everywhere: a shard
# index on every conductor shard, an index on every partition of the peer
# (on its shard Postgres) and on the local table. Dropped afterwards so the
# scans below measure the same tables as before.
if want W4i; then
log "W4i: indexes on items(customer_id)"
router conductor -c "SELECT conductor.create_shard_index('items', ARRAY['customer_id'], 'bench_customer')" >/dev/null
router local -c "CREATE INDEX bench_customer ON items (customer_id)" -c "ANALYZE items" >/dev/null
peer_indexes create customer_id customer
latency_workload W4i w4_filter.sql "${TARGETS[*]}" "" -t "$QUERY_RUNS"
router conductor -c "SELECT conductor.drop_shard_index('bench_customer')" >/dev/null
router local -c "DROP INDEX bench_customer" >/dev/null
peer_indexes drop customer_id customer
fi

# ---- W7: whole-table scan: rows/s and the backend's peak memory growth ----------------

if want W7; then
log "W7: COPY (SELECT * FROM items) TO '/dev/null', $SCAN_RUNS runs per target"
mkdir -p "$RAW/W7"
echo "psql: one session per target: a point lookup (warm-up), VmHWM and CPU time, then $SCAN_RUNS x bench/workloads/w7_scan.sql under \\timing, VmHWM and CPU time again" >"$RAW/W7/client.txt"
# The backend's own figures, read by itself: peak RSS, and CPU time of all
# its threads (utime + stime, fields 14-15 of /proc/self/stat, in ticks).
HWM_SQL="SELECT substring(pg_read_file('/proc/self/status') from 'VmHWM:\\s+(\\d+)') AS hwm"
CPU_SQL="SELECT split_part(substring(pg_read_file('/proc/self/stat') from '\\) (.*)\$'), ' ', 12)::bigint
              + split_part(substring(pg_read_file('/proc/self/stat') from '\\) (.*)\$'), ' ', 13)::bigint AS cpu"
# CPU ticks per thread name of the backend ("postgres" is Postgres' own
# thread; conductor's I/O threads are "conductor-io").
THREADS_SQL="SELECT string_agg(name || '=' || ticks, ',' ORDER BY name) AS threads FROM (
    SELECT substring(st from '\\((.*)\\)') AS name,
           sum(split_part(substring(st from '\\) (.*)\$'), ' ', 12)::bigint
             + split_part(substring(st from '\\) (.*)\$'), ' ', 13)::bigint) AS ticks
      FROM (SELECT pg_read_file('/proc/self/task/' || tid || '/stat') AS st
              FROM pg_ls_dir('/proc/self/task') AS tid) AS t
     GROUP BY 1) AS x"
# CPU ticks of the storage side, printed from inside the session (psql \!):
# conductor's 4 nodes; the peer's 4 shard postmasters and their children.
storage_pids() { # target
    case $1 in
        conductor) echo "${NODE_PIDS[*]}" ;;
        peer) for i in 1 2 3 4; do head -1 "$BENCH_DIR/pg-shard$i/data/postmaster.pid"; done | tr '\n' ' ' ;;
        local) ;;
    esac
}
echo "clk_tck=$(getconf CLK_TCK)" >>"$OUT/meta.txt"
for t in "${TARGETS[@]}"; do
    dir=$RAW/W7/$t
    mkdir -p "$dir"
    {
        echo "SELECT id FROM items WHERE id = 1;"
        echo "$HWM_SQL \\gset"
        echo "\\echo HWM_BEFORE :hwm"
        echo "$CPU_SQL \\gset"
        echo "\\echo CPU_BEFORE :cpu"
        echo "$THREADS_SQL \\gset"
        echo "\\echo THREADS_BEFORE :threads"
        echo "\\! echo STORAGE_CPU_BEFORE \$($ROOT/bench/cpu_ticks.sh $(storage_pids "$t"))"
        echo "\\timing on"
        for _ in $(seq "$SCAN_RUNS"); do cat bench/workloads/w7_scan.sql; done
        echo "\\timing off"
        echo "\\! echo STORAGE_CPU_AFTER \$($ROOT/bench/cpu_ticks.sh $(storage_pids "$t"))"
        echo "$CPU_SQL \\gset"
        echo "\\echo CPU_AFTER :cpu"
        echo "$THREADS_SQL \\gset"
        echo "\\echo THREADS_AFTER :threads"
        echo "$HWM_SQL \\gset"
        echo "\\echo HWM_AFTER :hwm"
    } >"$dir/session.sql"
    if router "$t" -At -f "$dir/session.sql" >"$dir/out.txt" 2>"$dir/stderr.txt"; then
        awk '/^Time:/ {print $2}' "$dir/out.txt" >"$dir/times_ms.txt"
        awk '/^(HWM|CPU|STORAGE_CPU|THREADS)_/ {print $1, $2}' "$dir/out.txt" >"$dir/stats.txt"
        log "  W7 $t: $(tr '\n' ' ' <"$dir/times_ms.txt")ms; $(tr '\n' ' ' <"$dir/stats.txt")"
    else
        fail_note "$dir" "$dir/stderr.txt"
    fi
done
fi

# ---- W6: fan-out under latency ---------------------------------------------------------

W6_CUSTOMER=42

if want W6; then
log "W6: $W6_ROWS rows behind +$DELAY_MS ms per round trip (conductor_w6, peer_w6)"
w6_setup() { # target
    if [ "$1" = conductor ]; then
        reset_items conductor conductor_w6
    else
        reset_items peer peer_w6 shard_w6
    fi
    timed_psql "${1}_w6" bench/workloads/load.sql -v rows="$W6_ROWS" -v seed="$SEED" >/dev/null
    [ "$1" = conductor ] || analyze_items peer peer_w6 shard_w6
}
# Four keys on four different shards in both systems (and, for the peer, on
# four different servers, its best case: partitions of one server share a
# connection and don't overlap).
w6_keys_conductor() {
    router conductor_w6 -At -F ' ' -c "
        SELECT i, conductor.shard_for('items', i::bigint), s.node_id
          FROM generate_series(1, 400) i
          JOIN conductor.shards s ON s.table_name = 'items'::regclass
                                 AND s.shard_id = conductor.shard_for('items', i::bigint)
         ORDER BY i" >"$OUT/w6_conductor_keys.txt"
}
W6_TARGETS=""
: >"$OUT/w6_conductor_keys.txt"
for t in conductor peer; do
    if guard "$OUT/w6-setup-$t.err" w6_setup "$t"; then
        W6_TARGETS+="$t "
    else
        for w in W6-1 W6-4 W6-16; do fail_note "$RAW/$w/$t/run1" "$OUT/w6-setup-$t.err"; done
    fi
done
case $W6_TARGETS in
    *conductor*) guard "$OUT/w6-keys.err" w6_keys_conductor || die "W6: shard_for failed: $(cat "$OUT/w6-keys.err")" ;;
esac
router peer_w6 -At -F ' ' -c "SELECT id, tableoid::regclass FROM items WHERE id <= 400 ORDER BY id" \
    >"$OUT/w6_peer_keys.txt"
read -r -a W6_KEYS <<<"$(awk '
    FILENAME == ARGV[1] { cshard[$1] = $2; cnode[$1] = $3; have = 1; next }
    {
        id = $1; p = substr($2, 8) + 0; srv = p % 4
        if (n == 4 || (have && !(id in cshard))) next
        if (have && (cs[cshard[id]] || cn[cnode[id]])) next
        if (pp[p] || ps[srv]) next
        cs[cshard[id]] = cn[cnode[id]] = pp[p] = ps[srv] = 1
        keys[++n] = id
    }
    END { for (i = 1; i <= n; i++) printf "%s ", keys[i] }' "$OUT/w6_conductor_keys.txt" "$OUT/w6_peer_keys.txt")"
[ "${#W6_KEYS[@]}" -eq 4 ] || die "W6: could not find 4 keys on 4 shards (got: ${W6_KEYS[*]})"
echo "w6_keys=${W6_KEYS[*]}" >>"$OUT/meta.txt"
for pair in "W6-1 w6_1shard.sql" "W6-4 w6_4shards.sql" "W6-16 w6_16shards.sql"; do
    read -r w script <<<"$pair"
    latency_workload "$w" "$script" "$W6_TARGETS" "_w6" -T "$W6_SECONDS" \
        -D k1="${W6_KEYS[0]}" -D k2="${W6_KEYS[1]}" -D k3="${W6_KEYS[2]}" -D k4="${W6_KEYS[3]}" \
        -D c="$W6_CUSTOMER"
done
fi

# ---- W11: joins on the shard key ---------------------------------------------------------

# orders and order_lines, both keyed by customer_id: conductor co-locates
# them (colocate_with); the peer hash-partitions both by customer_id into 16
# postgres_fdw partitions each, partition p of both on shard Postgres
# (p % 4) + 1, and joins them partitionwise (enable_partitionwise_join and
# enable_partitionwise_aggregate on, so postgres_fdw can push each
# partition pair's join to its server); local holds plain tables.
W11_CUSTOMERS=$((ROWS / 100))
ORDERS_SQL="customer_id integer NOT NULL, order_id bigint NOT NULL, amount integer, created timestamptz"
LINES_SQL="customer_id integer NOT NULL, order_id bigint NOT NULL, line_no integer NOT NULL, sku text, qty integer"
w11_setup() { # target
    local sql p
    case $1 in
        conductor)
            router conductor \
                -c "CREATE FOREIGN TABLE orders ($ORDERS_SQL) SERVER cluster OPTIONS (primary_key 'customer_id, order_id')" \
                -c "SELECT conductor.create_distributed_table('orders', 'customer_id', shard_count => 16)" \
                -c "CREATE FOREIGN TABLE order_lines ($LINES_SQL) SERVER cluster OPTIONS (primary_key 'customer_id, order_id, line_no')" \
                -c "SELECT conductor.create_distributed_table('order_lines', 'customer_id', colocate_with => 'orders')" >/dev/null ;;
        peer)
            for i in 1 2 3 4; do
                sql=""
                for p in $(seq 0 15); do
                    [ "$(peer_server_of "$p")" = "$i" ] || continue
                    sql+="CREATE TABLE $(printf 'orders_p%02d' "$p") ($ORDERS_SQL, PRIMARY KEY (customer_id, order_id));
                          CREATE TABLE $(printf 'order_lines_p%02d' "$p") ($LINES_SQL, PRIMARY KEY (customer_id, order_id, line_no));"
                done
                psql_at "${SHARD_PORTS[$((i - 1))]}" shard -c "$sql"
            done
            sql="CREATE TABLE orders ($ORDERS_SQL) PARTITION BY HASH (customer_id);
                 CREATE TABLE order_lines ($LINES_SQL) PARTITION BY HASH (customer_id);"
            for p in $(seq 0 15); do
                for t in orders order_lines; do
                    sql+="CREATE FOREIGN TABLE $(printf '%s_p%02d' "$t" "$p") PARTITION OF $t
                              FOR VALUES WITH (MODULUS 16, REMAINDER $p)
                              SERVER shard$(peer_server_of "$p") OPTIONS (table_name '$(printf '%s_p%02d' "$t" "$p")');"
                done
            done
            sql+="ALTER DATABASE peer SET enable_partitionwise_join = on;
                  ALTER DATABASE peer SET enable_partitionwise_aggregate = on;"
            router peer -c "$sql" ;;
        local)
            router local -c "CREATE TABLE orders ($ORDERS_SQL, PRIMARY KEY (customer_id, order_id))" \
                -c "CREATE TABLE order_lines ($LINES_SQL, PRIMARY KEY (customer_id, order_id, line_no))" ;;
    esac
    timed_psql "$1" bench/workloads/w11_load.sql -v customers="$W11_CUSTOMERS" -v seed="$SEED" >/dev/null
    case $1 in
        peer)
            for i in 1 2 3 4; do psql_at "${SHARD_PORTS[$((i - 1))]}" shard -c "VACUUM ANALYZE"; done
            router peer -c "ANALYZE orders" -c "ANALYZE order_lines" ;;
        local) router local -c "VACUUM ANALYZE orders" -c "VACUUM ANALYZE order_lines" ;;
    esac
}
if want W11; then
    log "W11: orders ($((W11_CUSTOMERS * 10)) rows) JOIN order_lines ($((W11_CUSTOMERS * 40)) rows) on customer_id, $W11_CUSTOMERS customers"
    echo "w11_customers=$W11_CUSTOMERS" >>"$OUT/meta.txt"
    W11_TARGETS=""
    for t in "${TARGETS[@]}"; do
        if guard "$OUT/w11-setup-$t.err" w11_setup "$t"; then
            W11_TARGETS+="$t "
        else
            for w in W11-point W11-scan W11-one W11-all; do fail_note "$RAW/$w/$t/run1" "$OUT/w11-setup-$t.err"; done
        fi
    done
    # A single-client point lookup (W1's query), the one-customer join's
    # yardstick under the same client settings.
    latency_workload W11-point w11_point.sql "$W11_TARGETS" "" -t "$((QUERY_RUNS * 20))" -D rows="$ROWS"
    # One customer's orders alone: the same read path as the join's
    # (a one-shard scan of several rows), without the join.
    latency_workload W11-scan w11_scan_one.sql "$W11_TARGETS" "" -t "$((QUERY_RUNS * 20))" -D customers="$W11_CUSTOMERS"
    latency_workload W11-one w11_join_one.sql "$W11_TARGETS" "" -t "$((QUERY_RUNS * 20))" -D customers="$W11_CUSTOMERS"
    latency_workload W11-all w11_join_all.sql "$W11_TARGETS" "" -t "$QUERY_RUNS"
    for t in $W11_TARGETS; do
        router "$t" -c "EXPLAIN (VERBOSE, COSTS OFF) $(sed 's/:c$/42/; s/:c;/42;/; /^\\set/d' bench/workloads/w11_join_one.sql)" \
            -c "EXPLAIN (VERBOSE, COSTS OFF) $(cat bench/workloads/w11_join_all.sql)" >"$OUT/explain-w11-$t.txt" 2>&1 || true
    done
fi

# ---- W15: lookup by a non-key column through a virtual index ------------------------------

# SELECT … FROM items WHERE email = $1 for an existing email (sharded by id,
# so the key says nothing about where it is). conductor three ways: without
# any index on email (every shard read in full), with a shard index alone
# (conductor.create_shard_index: the local SQLite index a virtual index
# also creates, every shard still visited; one client only), and with
# conductor.create_virtual_index('items', ARRAY['email'], true). The peer and the
# local table get an ordinary index on email (on every partition's remote
# table), their natural best setup, before any W15 run. All dropped after,
# so W12-W14 write to the tables they would have met without W15.
W15_ARGS=(-M prepared -D rows="$ROWS" -D seed="$SEED")
W15_TX=$((QUERY_RUNS * 40))   # one-client transactions per configuration, both scripts
W15_COUNT_TX=$QUERY_RUNS      # transactions of the shard count

# 8 clients, runs interleaved over the "label:db" pairs given.
w15_throughput() { # "label:db ..."
    local pairs=$1 args=(-c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" "${W15_ARGS[@]}") pair run
    for pair in $pairs; do   # warm-up, not recorded
        pgbench -n -p "$ROUTER_PORT" -c "$CLIENTS" -j "$THREADS" -T 2 "${W15_ARGS[@]}" \
            -f bench/workloads/w15_email.sql "${pair#*:}" >/dev/null 2>&1 || true
    done
    for run in $(seq "$RUNS"); do
        for pair in $pairs; do
            pgbench_run W15 "${pair%%:*}" "$run" "${pair#*:}" w15_email.sql "${args[@]}"
        done
    done
}

# One client, every transaction a sample: the email lookup (script 0 in
# pgbench's log) and its yardstick, the key lookup (script 1), drawn at
# random in one run, so both meet the same moment of a noisy machine.
w15_one() { # label db
    local scripts=(-f bench/workloads/w15_email.sql -f bench/workloads/w15_key.sql)
    pgbench -n -p "$ROUTER_PORT" -c 1 -t 4 "${W15_ARGS[@]}" "${scripts[@]}" "$2" >/dev/null 2>&1 || true
    pgbench_run W15-one "$1" 1 "$2" w15_key.sql@1 -c 1 -j 1 -t "$W15_TX" "${W15_ARGS[@]}" \
        -f "$ROOT/bench/workloads/w15_email.sql@1"
}

# The nodes' shard reads and virtual-index lookups, summed: "statements
# lookups". A shard read is one statement on a node's shard database
# (a cursor, or a one-request read); a virtual-index lookup is a request to
# a node's lookup database (GET /lookup/stats).
node_reads() {
    { node_stats_json; node_stats_json /lookup/stats | sed 's/^/L/'; } | python3 -c '
import json, sys
t = [0, 0]
for line in sys.stdin:
    if line.startswith("L"):
        r = json.loads(line[1:]).get("requests", {})
        t[1] += r.get("/v2/pipeline", 0) + r.get("/v3/pipeline", 0) + r.get("/v3-protobuf/pipeline", 0)
    else:
        t[0] += json.loads(line).get("statements_executed", 0)
print(*t)'
}

# The shards each lookup reads, counted at the nodes: with
# conductor.max_requests_per_node = 16 every shard read is a request of its
# own with its one statement (at the default 1, a node's shards share one
# read transaction, whose BEGIN and COMMIT would count too).
w15_shards() { # label [script]
    local dir=$RAW/W15-shards/$1 script=${2:-w15_email.sql}
    mkdir -p "$dir"
    echo "$W15_COUNT_TX" >"$dir/transactions.txt"
    node_reads >"$dir/before.txt"
    if ! PGOPTIONS='-c conductor.max_requests_per_node=16' pgbench -n -p "$ROUTER_PORT" --random-seed="$SEED" \
            -c 1 -j 1 -t "$W15_COUNT_TX" "${W15_ARGS[@]}" -f "bench/workloads/$script" conductor \
            >"$dir/stdout.txt" 2>"$dir/stderr.txt"; then
        fail_note "$dir" "$dir/stderr.txt"
        return 0
    fi
    node_reads >"$dir/after.txt"
    log "  W15 shards $1: $(paste -d' ' "$dir/before.txt" "$dir/after.txt" |
        awk -v n="$W15_COUNT_TX" '{printf "%.2f shard reads, %.2f lookup requests per query", ($3 - $1) / n, ($4 - $2) / n}')"
}

w15_explain() { # label db
    router "$2" -c "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF, SUMMARY OFF)
        SELECT id, customer_id, name, email, amount, created, flag FROM items
         WHERE email = substr(md5('$SEED:email:42'), 1, 16) || '@example.com'" >"$OUT/explain-w15-$1.txt" 2>&1 || true
}

if want W15; then
    log "W15: SELECT … FROM items WHERE email = \$1 (prepared), indexes on email on the peer and local"
    router local -c "CREATE INDEX bench_email ON items (email)" -c "ANALYZE items" >/dev/null
    peer_indexes create email email
    echo "w15_count_tx=$W15_COUNT_TX" >>"$OUT/meta.txt"
    client_line W15 "" -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" "${W15_ARGS[@]}" -f bench/workloads/w15_email.sql
    client_line W15-one "" -c 1 -j 1 -t "$W15_TX" "${W15_ARGS[@]}" \
        -f bench/workloads/w15_email.sql@1 -f bench/workloads/w15_key.sql@1
    mkdir -p "$RAW/W15-shards"
    echo "PGOPTIONS='-c conductor.max_requests_per_node=16' pgbench -n --random-seed=$SEED -c 1 -j 1 -t $W15_COUNT_TX ${W15_ARGS[*]} -f bench/workloads/w15_email.sql (or w15_key.sql) conductor, the nodes' GET /stats before and after" \
        >"$RAW/W15-shards/client.txt"

    # Without any index on email.
    w15_throughput "conductor:conductor peer:peer local:local"
    for t in "${TARGETS[@]}"; do w15_one "$t" "$t"; done
    w15_shards conductor
    for t in "${TARGETS[@]}"; do w15_explain "$t" "$t"; done

    # A shard index alone.
    router conductor -c "SELECT conductor.create_shard_index('items', ARRAY['email'], 'bench_email')" >/dev/null
    w15_one conductor-shard-index conductor
    w15_shards conductor-shard-index
    router conductor -c "SELECT conductor.drop_shard_index('bench_email')" >/dev/null

    # The virtual index.
    log "W15: CALL conductor.create_virtual_index('items', ARRAY['email'], true)"
    if guard "$OUT/w15-vindex.err" router conductor -c '\timing on' \
            -c "CALL conductor.create_virtual_index('items', ARRAY['email'], true)" >"$OUT/w15-vindex.out"; then
        echo "w15_build_ms=$(awk '/^Time:/ {print $2}' "$OUT/w15-vindex.out" | tail -1)" >>"$OUT/meta.txt"
        echo "w15_index=$(router conductor -At -F ' ' -c "SELECT index_name, status, entries FROM conductor.virtual_indexes")" >>"$OUT/meta.txt"
        log "  $(tail -n 2 "$OUT/meta.txt" | tr '\n' ' ')"
        w15_throughput "conductor-virtual-index:conductor"
        w15_one conductor-virtual-index conductor
        w15_shards conductor-virtual-index
        w15_shards key w15_key.sql
        w15_explain conductor-virtual-index conductor
        router conductor -c "SELECT conductor.drop_virtual_index(index_name) FROM conductor.virtual_indexes" >/dev/null
    else
        for w in W15 W15-one; do fail_note "$RAW/$w/conductor-virtual-index/run1" "$OUT/w15-vindex.err"; done
        fail_note "$RAW/W15-shards/conductor-virtual-index" "$OUT/w15-vindex.err"
    fi

    router local -c "DROP INDEX bench_email" >/dev/null
    peer_indexes drop email email
fi

# ---- W12-W14: OLTP writes --------------------------------------------------------------

# Last of the workloads on the main dataset: they change rows (W12, W14) and
# add rows (W13, as many as each target manages), which the reads above
# must not see.
want W12 && throughput_workload W12 w12_update.sql simple ""
want W13 && throughput_workload W13 w13_insert.sql simple ""
want W14 && throughput_workload W14 w14_read_update.sql simple ""

# ---- EXPLAIN of every query, for the doc --------------------------------------------------

log "EXPLAIN of each workload query"
explain_all() { # db file
    local k=42 ks="11, 22, 33, 44, 55, 66, 77, 88, 99, 110"
    router "$1" -c "EXPLAIN (VERBOSE, COSTS OFF) SELECT id, customer_id, name, email, amount, created, flag FROM items WHERE id = $k" \
        -c "EXPLAIN (VERBOSE, COSTS OFF) SELECT id, customer_id, name, email, amount, created, flag FROM items WHERE id IN ($ks)" \
        -c "EXPLAIN (VERBOSE, COSTS OFF) SELECT id, customer_id, name, amount FROM items WHERE customer_id > 5000 AND customer_id <= 6000" \
        -c "EXPLAIN (VERBOSE, COSTS OFF) SELECT sum(amount) FROM items" \
        -c "EXPLAIN (VERBOSE, COSTS OFF) $(cat "$ROOT/bench/workloads/w9_topn.sql")" \
        -c "EXPLAIN (VERBOSE, COSTS OFF) $(cat "$ROOT/bench/workloads/w10_group_topn.sql")" \
        -c "EXPLAIN (VERBOSE, COSTS OFF) UPDATE items SET amount = amount + 1 WHERE id = $k" \
        -c "EXPLAIN (VERBOSE, COSTS OFF) INSERT INTO items (id, customer_id, name, email, amount, created, flag) VALUES ($ROWS + 1, 42, 'new', 'new@example.com', 1.00, timestamptz '2024-06-01 00:00:00+00', true)" >"$2" 2>&1 || true
}
for t in "${TARGETS[@]}"; do explain_all "$t" "$OUT/explain-$t.txt"; done
router conductor -c "PREPARE p(bigint) AS SELECT id, name FROM items WHERE id = \$1" \
    -c "SET plan_cache_mode = force_generic_plan" \
    -c "EXPLAIN (VERBOSE, COSTS OFF) EXECUTE p(42)" >"$OUT/explain-conductor-generic.txt" 2>&1 || true
router conductor_w6 -c "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT id, name FROM items WHERE customer_id = $W6_CUSTOMER" \
    >"$OUT/explain-conductor-w6-16.txt" 2>&1 || true
router peer_w6 -c "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT id, name FROM items WHERE customer_id = $W6_CUSTOMER" \
    >"$OUT/explain-peer-w6-16.txt" 2>&1 || true

# ---- report -------------------------------------------------------------------------------

echo "end_utc=$(date -u '+%Y-%m-%d %H:%M:%S UTC')" >>"$OUT/meta.txt"
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.txt"
if [ -z "${BENCH_NO_DOC:-}" ]; then
    python3 bench/report.py "$OUT" "$ROOT/docs/BENCHMARKS.md" "$ROOT/docs/bench-w6-fanout.svg"
    log "wrote docs/BENCHMARKS.md and docs/bench-w6-fanout.svg"
else
    python3 bench/report.py "$OUT" "$OUT/BENCHMARKS.md" "$OUT/bench-w6-fanout.svg"
    log "wrote $OUT/BENCHMARKS.md"
fi
