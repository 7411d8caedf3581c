#!/usr/bin/env bash
# Whether the README's two commands leave each other alone: runs the demo's
# setup (scripts/cluster.sh start, as `make demo` does), then the end-to-end
# suite's install step (`make ext`, as `make test` does), and checks that a
# new session of the demo's Postgres still loads the optimized build the
# demo installed, byte for byte (its GNU build id).
#
# It never touches a demo cluster the user may be running: its cluster has
# its own directory and free ports, and a copy of Postgres 15
# (scripts/test-pg.sh) stands in for the system's installation that the
# demo installs into; `make ext` is told that copy is the system's. It
# removes all of it when done.
#
# CHECK_SOURCE_CHANGE=1 also checks `make demo` on the running cluster
# after a change in src/: it must rebuild, restart Postgres, say so, and
# new sessions must run the new build; then the change is undone and the
# cluster must come back to the first build. This costs two release builds
# of the extension and edits the checkout while it runs, so `make test`
# does it only under CI (a fresh clone nobody edits).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
WORK=/var/tmp/conductor-demo-check-$(printf '%s' "$ROOT" | md5sum | cut -c1-12)
OUT=$WORK/output.log

say() { echo "check-demo-build: $*"; }
fail() {
    echo "check-demo-build: FAILED: $*" >&2
    if [ -f "$OUT" ]; then
        echo "--- last output of the steps ---" >&2
        tail -n 40 "$OUT" >&2
    fi
    exit 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Five free loopback ports (Postgres + four nodes), none of the demo's.
pick_ports() {
    local p picked=()
    for p in $(shuf -i 20000-29999 -n 200); do
        port_free "$p" && picked+=("$p")
        [ "${#picked[@]}" -eq 5 ] && break
    done
    [ "${#picked[@]}" -eq 5 ] || fail "found no five free ports"
    echo "${picked[*]}"
}

cluster() {
    PG_CONFIG=$SYS_PG_CONFIG CONDUCTOR_CLUSTER_DIR=$WORK/cluster \
        CONDUCTOR_PG_PORT=$PG_PORT CONDUCTOR_NODE_PORTS="$NODE_PORTS" \
        scripts/cluster.sh "$@"
}

cleanup() {
    local status=$?
    if [ -d "$WORK/cluster" ]; then cluster reset >>"$OUT" 2>&1 || true; fi
    if [ -n "${SOURCE_BACKUP:-}" ] && [ -f "$SOURCE_BACKUP" ]; then
        restore_source
    fi
    rm -rf "$WORK"
    exit "$status"
}

if [ -d "$WORK/cluster" ]; then
    say "removing what an interrupted run left in $WORK"
    # Its ports are unknown here; stop by pid files (cluster.sh stop only
    # reads those and the data directory).
    PG_CONFIG=$PG_CONFIG CONDUCTOR_CLUSTER_DIR=$WORK/cluster scripts/cluster.sh reset >/dev/null 2>&1 || true
fi
rm -rf "$WORK"
mkdir -p "$WORK"
PG_PORT='' NODE_PORTS='' SYS_PG_CONFIG=$PG_CONFIG
trap cleanup EXIT
# Exit (running cleanup, which also restores src/) on Ctrl-C or kill.
trap 'exit 130' INT
trap 'exit 143' TERM

read -r PG_PORT NODE_PORTS <<<"$(pick_ports)"
SYS_PG_CONFIG=$(PG_CONFIG=$PG_CONFIG scripts/test-pg.sh "$WORK/system")
SYS_LIB=$("$SYS_PG_CONFIG" --pkglibdir)/conductor.so
PSQL=("$("$SYS_PG_CONFIG" --bindir)/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d conductor -tA)

file_build_id() {
    readelf -n "$1" 2>/dev/null | sed -n 's/^ *Build ID: *\([0-9a-f]*\).*/\1/p' | head -n1
}
# "profile build_id" of what a new session of the demo loads.
loaded_build() {
    "${PSQL[@]}" -c "SELECT profile || ' ' || coalesce(build_id, '') FROM conductor.build_info()"
}
command -v readelf >/dev/null || fail "readelf (binutils) is needed to read build ids"

say "demo setup (scripts/cluster.sh start; Postgres on $PG_PORT, nodes on $NODE_PORTS)"
start=$SECONDS
cluster start >>"$OUT" 2>&1 || fail "the demo's setup failed"
say "  done in $((SECONDS - start)) s"
read -r profile demo_id <<<"$(loaded_build)"
installed_id=$(file_build_id "$SYS_LIB")
[ "$profile" = release ] || fail "the demo runs the $profile build, not release"
[ -n "$installed_id" ] || fail "the installed library has no build id"
[ "$demo_id" = "$installed_id" ] || fail "the demo loads build $demo_id, but installed $installed_id"
# Every shard answers (a scan skips an unreachable node with a warning).
rows=$("${PSQL[@]}" -c "SELECT count(*) FROM users")
[ "$rows" = 100000 ] || fail "the demo's users table has $rows rows, not 100000"
say "  the demo runs the release build $demo_id; users has $rows rows"

say "the end-to-end suite's install step (make ext)"
start=$SECONDS
# EXT_PROFILE= : the tests' default (debug) build, whose build id differs
# from the demo's, so that an install over the demo's library would show.
make --no-print-directory ext PG_CONFIG="$SYS_PG_CONFIG" TEST_PG_DIR="$WORK/test-pg" EXT_PROFILE= \
    >>"$OUT" 2>&1 || fail "make ext failed"
say "  done in $((SECONDS - start)) s"
read -r profile after_id <<<"$(loaded_build)"
[ "$(file_build_id "$SYS_LIB")" = "$installed_id" ] ||
    fail "make ext replaced the demo's library $SYS_LIB (build $(file_build_id "$SYS_LIB"), was $installed_id)"
[ "$profile" = release ] && [ "$after_id" = "$installed_id" ] ||
    fail "after make ext, a new demo session loads the $profile build $after_id, not the release build $installed_id"
# And make ext did install a build that differs from the demo's, so the
# comparison above could have failed.
test_lib=$(find "$WORK/test-pg" -name conductor.so -print -quit)
[ -n "$test_lib" ] || fail "make ext installed no conductor.so under $WORK/test-pg"
test_id=$(file_build_id "$test_lib")
[ "$test_id" != "$installed_id" ] ||
    fail "the tests' build has the demo's build id $test_id: this check could not tell them apart"
say "  after make ext the demo still loads the release build $after_id (the tests' build $test_id went to a copy of its own)"

# Puts the source file back, unless someone edited it meanwhile.
restore_source() {
    if cmp -s "$SOURCE_FILE" "$SOURCE_BACKUP"; then
        :
    elif cmp -s "$SOURCE_FILE" "$SOURCE_EDITED"; then
        cp "$SOURCE_BACKUP" "$SOURCE_FILE"
    else
        local kept
        kept=/var/tmp/$(basename "$SOURCE_FILE").orig.$$
        cp "$SOURCE_BACKUP" "$kept"
        echo "check-demo-build: $SOURCE_FILE was edited during the check; left as it is (the original is in $kept)" >&2
    fi
    rm -f "$SOURCE_BACKUP"
}

if [ -n "${CHECK_SOURCE_CHANGE:-}" ]; then
    SOURCE_FILE=$ROOT/src/api/mod.rs
    SOURCE_BACKUP=$WORK/mod.rs.orig
    SOURCE_EDITED=$WORK/mod.rs.edited
    cp "$SOURCE_FILE" "$SOURCE_BACKUP"
    # A change that alters the library but not its SQL: a new string in a
    # function body.
    sed "s|env!(\"CARGO_PKG_VERSION\").to_string(),|format!(\"{}{}\", env!(\"CARGO_PKG_VERSION\"), \"\"),|" \
        "$SOURCE_BACKUP" >"$SOURCE_EDITED"
    cmp -s "$SOURCE_EDITED" "$SOURCE_BACKUP" && fail "the source edit did not apply"
    cp "$SOURCE_EDITED" "$SOURCE_FILE"
    say "make demo on the running cluster after a change in src/"
    start=$SECONDS
    cluster start >"$WORK/changed.log" 2>&1 || { cat "$WORK/changed.log" >>"$OUT"; fail "make demo after the change failed"; }
    cat "$WORK/changed.log" >>"$OUT"
    say "  done in $((SECONDS - start)) s"
    grep -q "restarting postgres" "$WORK/changed.log" || fail "make demo did not say it restarted postgres"
    read -r profile changed_id <<<"$(loaded_build)"
    [ "$changed_id" != "$installed_id" ] || fail "after the change a new session still loads the old build $installed_id"
    [ "$changed_id" = "$(file_build_id "$SYS_LIB")" ] || fail "a new session loads $changed_id, not the installed build"
    say "  restarted postgres; new sessions run build $changed_id"

    restore_source
    say "make demo after undoing the change"
    start=$SECONDS
    cluster start >"$WORK/reverted.log" 2>&1 || { cat "$WORK/reverted.log" >>"$OUT"; fail "make demo after the revert failed"; }
    cat "$WORK/reverted.log" >>"$OUT"
    say "  done in $((SECONDS - start)) s"
    grep -q "restarting postgres" "$WORK/reverted.log" || fail "make demo did not say it restarted postgres"
    read -r profile reverted_id <<<"$(loaded_build)"
    [ "$reverted_id" = "$(file_build_id "$SYS_LIB")" ] || fail "a new session loads $reverted_id, not the installed build"
    say "  restarted postgres; new sessions run build $reverted_id"
fi

say "ok"
