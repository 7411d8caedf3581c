#!/usr/bin/env bash
# The local demo cluster behind `make demo` / `make stop`:
#   PostgreSQL 15 at 127.0.0.1:55432 (database `conductor`, superuser
#   `postgres`, trust auth, loopback only) with the extension installed, and
#   four conductor-node processes at 127.0.0.1:7401-7404.
# Everything lives under ./.cluster/ (data, logs, pid files).
#
# CONDUCTOR_CLUSTER_DIR, CONDUCTOR_PG_PORT and CONDUCTOR_NODE_PORTS (four
# ports, space-separated) put a second cluster beside the demo, and
# PG_CONFIG picks the Postgres installation the extension goes into (the
# demo-build check in scripts/check-demo-build.sh uses all four).
#
#   scripts/cluster.sh start    build, start what isn't running, load the demo data once
#   scripts/cluster.sh stop     stop everything this script started
#   scripts/cluster.sh status   what is running (exit 0 only if all of it)
#   scripts/cluster.sh reset    stop, then delete ./.cluster (data included)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BINDIR=$("$PG_CONFIG" --bindir)
PG_PORT=${CONDUCTOR_PG_PORT:-55432}
read -r -a NODE_PORTS <<<"${CONDUCTOR_NODE_PORTS:-7401 7402 7403 7404}"
[ "${#NODE_PORTS[@]}" -eq 4 ] || { echo "cluster: CONDUCTOR_NODE_PORTS must name 4 ports" >&2; exit 2; }
CLUSTER_DIR=$(realpath -m "${CONDUCTOR_CLUSTER_DIR:-$ROOT/.cluster}")
PG_DIR=$CLUSTER_DIR/pg            # owned by the Postgres user: data/ + postgres.log
NODE_BIN=${CONDUCTOR_NODE_BIN:-$ROOT/target/release/conductor-node}
# The superuser is not named `conductor`: the default search_path
# ("$user", public) would then resolve to the extension's schema, and the
# user's CREATE TABLE would land there instead of in public.
PG_SUPERUSER=postgres
PSQL=("$PG_BINDIR/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER")

log() { echo "cluster: $*"; }
die() { echo "cluster: error: $*" >&2; exit 1; }

# Postgres refuses to run as root: as root, run its programs as the
# unprivileged `postgres` user (created by Debian's postgresql package).
PG_USER=${CONDUCTOR_PG_USER:-postgres}
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        # From /, since the checkout may be unreadable to that user.
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        "$@"
    fi
}

# PG_DIR with symlinks resolved: the Postgres user may not be able to pass
# through the checkout to follow .cluster/pg (see prepare_pg_dir).
pg_real() { readlink -f "$PG_DIR"; }

# rustup puts cargo in ~/.cargo/bin, which a non-login shell may lack.
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# ---- checks -----------------------------------------------------------------

pg_running() {
    [ -f "$PG_DIR/data/postmaster.pid" ] &&
        as_pg "$PG_BINDIR/pg_ctl" -D "$(pg_real)/data" status >/dev/null 2>&1
}

# The pid in node-N.pid, if that process is alive and is a conductor-node
# (a stale pid file must not make us signal some unrelated process).
node_pid() {
    local pidfile=$CLUSTER_DIR/node-$1.pid pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q conductor-node || return 1
    echo "$pid"
}

# GET /health over bash's /dev/tcp: no curl needed on a fresh machine.
node_healthy() {
    local port=$1 status
    status=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port &&
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && head -n1 <&3" 2>/dev/null) || return 1
    [[ $status == *" 200"* ]]
}

# A path as the user should read it: relative to the checkout when inside.
rel() { case $1 in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }

# The GNU build id of an ELF file (what conductor.build_info() reports for
# the library a backend loaded); empty if it has none or readelf is missing.
file_build_id() {
    readelf -n "$1" 2>/dev/null | sed -n 's/^ *Build ID: *\([0-9a-f]*\).*/\1/p' | head -n1
}

print_connect() {
    cat <<EOF

conductor demo cluster is up:
  PostgreSQL 15  127.0.0.1:$PG_PORT  (database conductor, user $PG_SUPERUSER, no password)
  nodes          http://127.0.0.1:${NODE_PORTS[0]} .. http://127.0.0.1:${NODE_PORTS[3]}
  logs           $(rel "$PG_DIR")/postgres.log, $(rel "$CLUSTER_DIR")/node-N.log

Connect with:
  psql -h 127.0.0.1 -p $PG_PORT -U $PG_SUPERUSER conductor

Stop it with: make stop
EOF
}

# ---- start --------------------------------------------------------------------

# What `build` found: whether the extension library, its SQL, or the node
# binary differ from what was installed or running before.
EXT_SO_CHANGED=0
EXT_SQL_CHANGED=0
# The build id of the library `build` just made and a hash of its SQL
# (empty if it did not build).
BUILT_ID=
BUILT_SQL=

# A hash of the extension's SQL files (control file and scripts) in DIR.
ext_sql_hash() { cat "$1"/conductor* | sha256sum | cut -d' ' -f1; }

build() {
    # CONDUCTOR_NO_BUILD=1: use what's already built and installed
    # (for working on this script without waiting for release builds).
    if [ -n "${CONDUCTOR_NO_BUILD:-}" ]; then
        log "CONDUCTOR_NO_BUILD set: not building"
        return
    fi
    log "building conductor-node (release)"
    cargo build --release -p conductor-node
    log "building the extension (release)"
    local pkg=$CLUSTER_DIR/package
    rm -rf "$pkg"
    cargo pgrx package -p conductor --pg-config "$PG_CONFIG" --out-dir "$pkg" >/dev/null
    local libdir sharedir sudo=()
    libdir=$("$PG_CONFIG" --pkglibdir)
    sharedir=$("$PG_CONFIG" --sharedir)/extension
    # Released versions' install scripts (the package has the current one
    # and the upgrade scripts): a database can start at one and upgrade.
    local released
    for released in sql/conductor--*.sql; do
        case $released in sql/conductor--*--*) ;; *) cp "$released" "$pkg$sharedir/" ;; esac
    done
    # The system's Postgres directories need root; a copy of Postgres
    # (PG_CONFIG) may not.
    if [ ! -w "$libdir" ] || [ ! -w "$sharedir" ]; then sudo=(sudo); fi
    BUILT_ID=$(file_build_id "$pkg$libdir/conductor.so")
    BUILT_SQL=$(ext_sql_hash "$pkg$sharedir")
    # Compared with what the cluster was started and loaded with, as
    # recorded then, rather than with the installed files: another install
    # into the same Postgres (another checkout's `make demo` or `make bench`)
    # may have replaced those meanwhile.
    if [ -f "$CLUSTER_DIR/running.build-id" ] && [ -n "$BUILT_ID" ]; then
        [ "$(cat "$CLUSTER_DIR/running.build-id")" = "$BUILT_ID" ] || EXT_SO_CHANGED=1
    else
        cmp -s "$pkg$libdir/conductor.so" "$libdir/conductor.so" || EXT_SO_CHANGED=1
    fi
    if [ -f "$CLUSTER_DIR/loaded.sql-hash" ]; then
        [ "$(cat "$CLUSTER_DIR/loaded.sql-hash")" = "$BUILT_SQL" ] || EXT_SQL_CHANGED=1
    else
        local f
        for f in "$pkg$sharedir"/conductor*; do
            cmp -s "$f" "$sharedir/$(basename "$f")" || EXT_SQL_CHANGED=1
        done
    fi
    # `install` writes a new file (new inode) rather than rewriting the
    # library in place, so backends still running the old build keep a
    # consistent mapping until they exit.
    "${sudo[@]}" install -m 0755 "$pkg$libdir/conductor.so" "$libdir/conductor.so"
    "${sudo[@]}" install -m 0644 "$pkg$sharedir"/conductor* "$sharedir/"
    log "installed the extension (release) into $libdir"
}

# The Postgres user must be able to reach PG_DIR. A checkout under a private
# home (e.g. /root, mode 0700) isn't reachable: then keep the data in
# /var/tmp and leave a symlink at .cluster/pg.
prepare_pg_dir() {
    if [ -e "$PG_DIR" ]; then return; fi
    mkdir -p "$PG_DIR"
    if [ "$(id -u)" -eq 0 ]; then
        chown "$PG_USER:" "$PG_DIR"
        if ! as_pg test -w "$PG_DIR"; then
            rmdir "$PG_DIR"
            local alt
            alt=/var/tmp/conductor-cluster-$(printf '%s' "$CLUSTER_DIR" | md5sum | cut -c1-12)
            log "$PG_USER can't reach $CLUSTER_DIR; keeping Postgres data in $alt"
            mkdir -p "$alt"
            chown "$PG_USER:" "$alt"
            chmod 0700 "$alt"
            ln -sfn "$alt" "$PG_DIR"
        fi
    fi
}

start_pg() {
    if pg_running; then
        log "postgres already running on 127.0.0.1:$PG_PORT"
        return
    fi
    prepare_pg_dir
    if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
        log "initdb $PG_DIR/data"
        # -A trust: no password; safe because it only listens on loopback.
        as_pg "$PG_BINDIR/initdb" -D "$(pg_real)/data" -U "$PG_SUPERUSER" -A trust \
            -E UTF8 --locale=C >"$CLUSTER_DIR/initdb.log"
    fi
    log "starting postgres on 127.0.0.1:$PG_PORT"
    # No Unix socket (unix_socket_directories=''): only TCP on loopback, and
    # no socket path length limit to trip over in deep checkouts.
    as_pg "$PG_BINDIR/pg_ctl" -D "$(pg_real)/data" -l "$(pg_real)/postgres.log" -w -t 60 \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c shared_preload_libraries=conductor" \
        start >/dev/null ||
        { tail -n 20 "$PG_DIR/postgres.log" >&2; die "postgres did not start"; }
    rename_old_superuser
    if [ -z "$("${PSQL[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'conductor'")" ]; then
        "${PSQL[@]}" -d postgres -c "CREATE DATABASE conductor"
    fi
}

# Data dirs made by earlier versions of this script have the superuser
# `conductor`: rename it (with its objects) to PG_SUPERUSER. A role can't
# rename itself while connected, so through a temporary superuser.
rename_old_superuser() {
    local psql_old=("$PG_BINDIR/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1)
    if "${PSQL[@]}" -d postgres -tAc "SELECT 1" >/dev/null 2>&1 ||
        ! "${psql_old[@]}" -U conductor -tAc "SELECT 1" >/dev/null 2>&1; then
        return
    fi
    log "renaming the superuser conductor to $PG_SUPERUSER"
    "${psql_old[@]}" -U conductor -c "CREATE ROLE conductor_rename SUPERUSER LOGIN"
    "${psql_old[@]}" -U conductor_rename -c "ALTER ROLE conductor RENAME TO $PG_SUPERUSER"
    "${psql_old[@]}" -U "$PG_SUPERUSER" -c "DROP ROLE conductor_rename"
}

# The README's session: as the superuser with the default search_path, a
# new table must land in public.
check_search_path() {
    local schema
    schema=$("${PSQL[@]}" -d conductor -tAc "SELECT current_schema()")
    [ "$schema" = public ] ||
        die "a table created as $PG_SUPERUSER in database conductor would land in schema '$schema', not public"
}

start_node() {
    local i=$1 port=${NODE_PORTS[$(($1 - 1))]} pid
    if pid=$(node_pid "$i"); then
        log "node-$i already running (pid $pid, port $port)"
        return
    fi
    # A node stopped a moment ago may still be finishing its requests: give
    # the port up to 10 s to become free, and say who holds it otherwise.
    local waited
    for waited in $(seq 100); do
        port_free "$port" && break
        sleep 0.1
    done
    if ! port_free "$port"; then
        die "port $port (node-$i) is in use by another process: $(port_owner "$port")"
    fi
    mkdir -p "$CLUSTER_DIR/node-$i"
    log "starting node-$i on 127.0.0.1:$port"
    local logfile=$CLUSTER_DIR/node-$i.log offset=0
    [ -f "$logfile" ] && offset=$(wc -c <"$logfile")
    # The four nodes share this machine: each gets its share of the cores
    # as worker threads (a node's default, one per core, is for a node alone
    # on its machine). CONDUCTOR_NODE_THREADS overrides it.
    local threads=$(($(nproc) / 4))
    # setsid: its own session, so a Ctrl-C in this terminal later doesn't
    # reach it; it runs until `make stop`.
    setsid "$NODE_BIN" --listen "127.0.0.1:$port" --data-dir "$CLUSTER_DIR/node-$i" \
        --threads "${CONDUCTOR_NODE_THREADS:-$((threads > 0 ? threads : 1))}" \
        >>"$logfile" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$CLUSTER_DIR/node-$i.pid"
    # Up once /health answers. Until the child has exec'd, its command line
    # is still this script's, so node_pid would not know it yet: whether it
    # exited is asked of the process itself (kill -0), and `wait` gives its
    # exit status.
    local timeout=${CONDUCTOR_NODE_START_TIMEOUT:-30} deadline status
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if node_healthy "$port"; then
            if node_pid "$i" >/dev/null; then return; fi
            # Something else answers on the port (checked free above).
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            status=0
            wait "$pid" || status=$?
            # Only what this start wrote, not an earlier run's log.
            tail -c +"$((offset + 1))" "$logfile" | tail -n 20 >&2
            die "node-$i exited at startup with status $status (its output is above; log: $(rel "$logfile"))"
        fi
        sleep 0.1
    done
    tail -c +"$((offset + 1))" "$logfile" | tail -n 20 >&2
    if node_healthy "$port" && ! node_pid "$i" >/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        die "port $port (node-$i) answers for another process: $(port_owner "$port")"
    fi
    # Not left running half-started: the next start begins afresh.
    kill -TERM "$pid" 2>/dev/null || true
    die "node-$i (pid $pid) did not answer GET /health on 127.0.0.1:$port within ${timeout} s, so it was stopped (CONDUCTOR_NODE_START_TIMEOUT sets the wait; its output is above; log: $(rel "$logfile"))"
}

# Whether nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Who listens on a port, as far as ss can tell.
port_owner() {
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -E 's/.*users:\(\(("[^"]*",pid=[0-9]+).*/\1/' | head -n1
}

load_demo() {
    # Marker written only after demo.sql ran to the end, so a half-loaded
    # cluster is noticed rather than silently reused.
    if [ -f "$CLUSTER_DIR/demo-loaded" ]; then return; fi
    if [ -n "$("${PSQL[@]}" -d conductor -tAc "SELECT 1 FROM pg_extension WHERE extname = 'conductor'")" ]; then
        die "the extension exists but the demo data didn't finish loading; run 'scripts/cluster.sh reset' and 'make demo' again"
    fi
    log "loading scripts/demo.sql"
    local i vars=()
    for i in 1 2 3 4; do vars+=(-v "node${i}_url=http://127.0.0.1:${NODE_PORTS[$((i - 1))]}"); done
    "${PSQL[@]}" -d conductor -v ON_ERROR_STOP=1 "${vars[@]}" -f scripts/demo.sql
    touch "$CLUSTER_DIR/demo-loaded"
    echo "${BUILT_SQL:-$(ext_sql_hash "$("$PG_CONFIG" --sharedir)/extension")}" >"$CLUSTER_DIR/loaded.sql-hash"
}

cmd_start() {
    mkdir -p "$CLUSTER_DIR"
    build
    if [ "$EXT_SQL_CHANGED" = 1 ] && [ -f "$CLUSTER_DIR/demo-loaded" ]; then
        # The catalog the demo database was created with no longer matches
        # the extension; the demo's data is sample data, loaded afresh
        # rather than upgraded.
        log "the extension's SQL changed since the demo was loaded: resetting the demo cluster (its data included)"
        cmd_reset
        mkdir -p "$CLUSTER_DIR"
    elif [ "$EXT_SO_CHANGED" = 1 ] && pg_running; then
        log "restarting postgres: it now loads the build just installed"
        as_pg "$PG_BINDIR/pg_ctl" -D "$(pg_real)/data" -m fast -w stop >/dev/null
    fi
    start_pg
    local i bin_id
    bin_id=$(sha256sum "$NODE_BIN" 2>/dev/null | cut -c1-16)
    for i in 1 2 3 4; do
        if node_pid "$i" >/dev/null && [ "$(cat "$CLUSTER_DIR/node-$i.bin" 2>/dev/null)" != "$bin_id" ]; then
            log "restarting node-$i: it now runs the conductor-node just built"
            stop_node "$i"
        fi
        start_node "$i"
        echo "$bin_id" >"$CLUSTER_DIR/node-$i.bin"
    done
    load_demo
    check_search_path
    check_build
    print_connect
}

# A new session of the demo loads the library just installed: say which
# build it is, and fail if it is not the one just built (e.g. Postgres loads
# from another directory than the one PG_CONFIG names, or something else
# installed over it meanwhile).
check_build() {
    local row profile loaded expected what
    # to_jsonb: a catalog loaded by an older build may lack build_id.
    row=$("${PSQL[@]}" -d conductor -tAc \
        "SELECT b.profile || ' ' || coalesce(to_jsonb(b)->>'build_id', '') FROM conductor.build_info() b") ||
        die "could not ask the demo which build it runs"
    read -r profile loaded <<<"$row"
    if [ -n "$BUILT_ID" ]; then
        expected=$BUILT_ID what="the build just made"
    else
        expected=$(file_build_id "$("$PG_CONFIG" --pkglibdir)/conductor.so")
        what="the installed $("$PG_CONFIG" --pkglibdir)/conductor.so"
    fi
    if [ -n "$expected" ] && [ "$loaded" != "$expected" ]; then
        die "a new session of the demo loads build ${loaded:-(one without a build id)}, not $what ($expected)"
    fi
    echo "$loaded" >"$CLUSTER_DIR/running.build-id"
    log "the demo runs the $profile build of the extension${loaded:+ (build id $loaded)}"
}

# ---- stop / status / reset ------------------------------------------------------

# Stop node i (SIGTERM, up to 5 s to exit cleanly, then SIGKILL); true if
# it was running.
stop_node() {
    local pid
    if pid=$(node_pid "$1"); then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        log "stopped node-$1 (pid $pid)"
        rm -f "$CLUSTER_DIR/node-$1.pid"
        return 0
    fi
    rm -f "$CLUSTER_DIR/node-$1.pid"
    return 1
}

cmd_stop() {
    local i stopped=0
    for i in 1 2 3 4; do
        if stop_node "$i"; then stopped=1; fi
    done
    if pg_running; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$(pg_real)/data" -m fast -w stop >/dev/null
        log "stopped postgres"
        stopped=1
    fi
    [ "$stopped" = 1 ] || log "nothing was running"
}

cmd_status() {
    local i pid ok=0
    if pg_running; then
        log "postgres  up    127.0.0.1:$PG_PORT"
    else
        log "postgres  down"; ok=1
    fi
    for i in 1 2 3 4; do
        if pid=$(node_pid "$i"); then
            log "node-$i    up    127.0.0.1:${NODE_PORTS[$((i - 1))]} (pid $pid)"
        else
            log "node-$i    down"; ok=1
        fi
    done
    return $ok
}

cmd_reset() {
    cmd_stop
    # .cluster/pg may be a symlink to /var/tmp (see prepare_pg_dir).
    if [ -L "$PG_DIR" ]; then rm -rf "$(readlink "$PG_DIR")"; fi
    rm -rf "$CLUSTER_DIR"
    log "removed $(rel "$CLUSTER_DIR")"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    *) echo "usage: $0 start|stop|status|reset" >&2; exit 2 ;;
esac
