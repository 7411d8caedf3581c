#!/usr/bin/env bash
# Shared by the benchmark scripts (bench/run.sh, bench/shard_count.sh):
# logging, the processes a run starts and their cleanup, the release build
# and a private copy of the Postgres installation, starting Postgres
# instances and nodes, psql helpers. Sourced after the caller has set ROOT,
# BENCH_DIR, OUT, PG_CONFIG, PG_BIN, PG_USER, NODE_BIN and ROUTER_PORT.

log() { printf '%s bench: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# The command as typed, with the BENCH_* settings it ran with (for the doc).
command_line() { # script
    { env | grep -E '^BENCH_[A-Z_]+=' | grep -v '^BENCH_DIR=' || true; } | sort |
        sed -E "s/^([A-Z_]+)=(.*)$/\1='\2'/; s/='([A-Za-z0-9_.-]*)'$/=\1/" | tr '\n' ' '
    printf '%s' "$1"
}

# ---- process bookkeeping and cleanup -----------------------------------------------

CHILD_PIDS=()     # nodes and the proxy (started here, in the background)
PG_DIRS=()        # data dirs of the Postgres instances started here

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        "$@"
    fi
}

cleanup() {
    local rc=$? pid dir
    trap - EXIT INT TERM
    set +e
    log "stopping everything this run started"
    for pid in "${CHILD_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for dir in "${PG_DIRS[@]}"; do
        as_pg "$PG_BIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1
    done
    for pid in "${CHILD_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ -z "${BENCH_KEEP:-}" ]; then
        rm -rf "$BENCH_DIR"/pg-* "$BENCH_DIR"/node-* "$BENCH_DIR"/template "$BENCH_DIR"/pginst
        log "raw results kept in $OUT (data dirs removed)"
    else
        log "everything kept in $BENCH_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- build ------------------------------------------------------------------------

# The servers run from a private copy of the Postgres installation, into
# which the release build of the extension is installed (sets PG_BIN,
# EXT_SO, EXT_ID): the system directories are where a running demo cluster,
# and anyone else's sessions, load conductor.so from, and a benchmark must
# neither replace that build nor have it replaced under its own servers.
# Postgres finds its share and lib dirs relative to its binary, so a copy
# with the same layout is self-contained. With BENCH_NO_BUILD the copy keeps
# the extension already installed in $PG_CONFIG's directories.
build_and_snapshot() {
    command -v pgbench >/dev/null || die "pgbench missing (postgresql-client-15)"
    log "private copy of the Postgres 15 installation in $BENCH_DIR/pginst"
    PG_INST=$BENCH_DIR/pginst
    rm -rf "$PG_INST"
    mkdir -p "$PG_INST/lib/postgresql" "$PG_INST/share/postgresql"
    cp -a "$(cd "$PG_BIN/.." && pwd)" "$PG_INST/lib/postgresql/"
    cp -a "$("$PG_CONFIG" --sharedir)" "$PG_INST/share/postgresql/"
    PG_BIN=$PG_INST/lib/postgresql/$(basename "$(cd "$PG_BIN/.." && pwd)")/bin
    [ "$("$PG_BIN/pg_config" --sharedir)" = "$PG_INST/share/postgresql/$(basename "$("$PG_CONFIG" --sharedir)")" ] ||
        die "the Postgres copy in $PG_INST is not relocatable"
    if [ -z "${BENCH_NO_BUILD:-}" ]; then
        log "building conductor-node (release)"
        cargo build --release -p conductor-node
        log "installing the extension (release) into the copy"
        cargo pgrx install --release -p conductor --pg-config "$PG_BIN/pg_config"
    fi
    [ -x "$NODE_BIN" ] || die "$NODE_BIN missing (run without BENCH_NO_BUILD)"
    [ -f "$("$PG_BIN/pg_config" --sharedir)/extension/conductor.control" ] || die "extension not installed"
    EXT_SO=$("$PG_BIN/pg_config" --pkglibdir)/conductor.so
    EXT_ID="conductor.so $(sha256sum "$EXT_SO" | cut -c1-12), installed $(date -u -r "$EXT_SO" '+%H:%M:%S UTC')"
}

# ---- servers ------------------------------------------------------------------------

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

init_template() { # what it is for (for the log)
    log "initdb (template for $1) in $BENCH_DIR"
    mkdir -p "$BENCH_DIR/template"
    chown "$PG_USER:" "$BENCH_DIR/template" 2>/dev/null || true
    as_pg "$PG_BIN/initdb" -D "$BENCH_DIR/template/data" -U bench -A trust -E UTF8 \
        --locale=C --no-sync >"$OUT/initdb.log"
}

# Same settings for every instance: loopback TCP only; commits don't wait
# for the WAL flush (the nodes' SQLite runs WAL + synchronous=NORMAL, which
# doesn't fsync per commit either); no checkpoint in the middle of a load.
PG_SETTINGS="-c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
-c shared_buffers=256MB -c synchronous_commit=off -c max_wal_size=8GB \
-c checkpoint_timeout=1h -c max_connections=100"

start_pg() { # name port [more postgres options]
    local dir=$BENCH_DIR/pg-$1
    mkdir -p "$dir"
    cp -a "$BENCH_DIR/template/data" "$dir/data"
    chown "$PG_USER:" "$dir"
    PG_DIRS+=("$dir/data")
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 120 \
        -o "-p $2 $PG_SETTINGS ${3:-}" start >/dev/null ||
        { tail -n 20 "$dir/postgres.log" >&2; die "postgres $1 did not start"; }
}

node_healthy() {
    local status
    status=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 &&
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && head -n1 <&3" 2>/dev/null) || return 1
    [[ $status == *" 200"* ]]
}

# Worker threads for each of $1 nodes sharing this machine: its share of the
# cores (at least one; BENCH_NODE_THREADS overrides it). A node's default,
# one per core, is for a node alone on its machine: several on one machine,
# each with a thread per core, spend CPU waking idle threads of their own
# for every request.
node_threads() {
    local share=$(($(nproc) / $1))
    echo $((share > 0 ? share : 1))
}

start_node() { # name port [node options...]
    local name=$1 port=$2 pid
    shift 2
    mkdir -p "$BENCH_DIR/node-$name"
    "$NODE_BIN" --listen "127.0.0.1:$port" --data-dir "$BENCH_DIR/node-$name" \
        --log-level warn --threads "${BENCH_NODE_THREADS:-$NODE_THREADS}" "$@" \
        >"$OUT/node-$name.log" 2>&1 </dev/null &
    pid=$!
    CHILD_PIDS+=("$pid")
    for _ in $(seq 100); do
        node_healthy "$port" && return
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$OUT/node-$name.log" >&2; die "node $name exited"; }
        sleep 0.1
    done
    die "node $name not healthy after 10 s"
}

# ---- SQL helpers --------------------------------------------------------------------

export PGHOST=127.0.0.1 PGUSER=bench PGCONNECT_TIMEOUT=10
psql_at() { # port db [psql args...]
    local port=$1 db=$2
    shift 2
    psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d "$db" "$@"
}
router() { local db=$1; shift; psql_at "$ROUTER_PORT" "$db" "$@"; }

# psql script that runs `sql_file` under \timing and prints "Time: N ms".
timed_psql() { # db sql_file [psql -v args...]
    local db=$1 file=$2
    shift 2
    router "$db" "$@" -c '\timing on' -f "$file" | awk '/^Time:/ {print $2}'
}

fail_note() { # dir message-file
    mkdir -p "$1"
    cp "$2" "$1/FAILED"
    log "FAILED: $1: $(grep -m3 -E 'ERROR|error|FATAL' "$2" | head -c 400 | tr '\n' ' ')"
}

# Runs a setup step with errexit in force (a function called from an `if`
# would run with errexit off), its stderr into a file; returns its status.
guard() { # stderr-file command...
    local err=$1 rc
    shift
    set +e
    ( set -e; "$@" ) 2>"$err"
    rc=$?
    set -e
    return "$rc"
}
