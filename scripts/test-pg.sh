#!/usr/bin/env bash
# A private copy of Debian's PostgreSQL 15 for the end-to-end tests, so that
# `make test` installs its (debug) build of the extension there and never
# over the build the demo cluster runs from the system directories.
#
# Postgres finds its share and lib directories relative to its own binary,
# so a copy with the same layout (lib/postgresql/15, share/postgresql/15) is
# self-contained; `pg_config` of the copy reports the copy's directories,
# which is where `cargo pgrx install --pg-config` then writes.
#
#   scripts/test-pg.sh DIR     make (or refresh) the copy in DIR, print its pg_config
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
DIR=${1:?usage: test-pg.sh DIR}
DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd)

bindir=$("$PG_CONFIG" --bindir)
libroot=$(cd "$bindir/.." && pwd)            # /usr/lib/postgresql/15
shareroot=$("$PG_CONFIG" --sharedir)          # /usr/share/postgresql/15
version=$(basename "$libroot")
copy_bin=$DIR/lib/postgresql/$version/bin

# The copy is remade when the system's postgres binary changes (an upgrade).
stamp=$(stat -c '%i-%s-%Y' "$bindir/postgres")
if [ "$(cat "$DIR/.source" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$DIR/lib" "$DIR/share"
    mkdir -p "$DIR/lib/postgresql" "$DIR/share/postgresql"
    cp -a "$libroot" "$DIR/lib/postgresql/"
    cp -a "$shareroot" "$DIR/share/postgresql/"
    # What the demo installed into the system directories is not ours.
    rm -f "$DIR/lib/postgresql/$version/lib/conductor.so" \
        "$DIR/share/postgresql/$version/extension/conductor"*
    echo "$stamp" >"$DIR/.source"
fi
if [ "$("$copy_bin/pg_config" --sharedir)" != "$DIR/share/postgresql/$version" ]; then
    echo "test-pg: the copy in $DIR is not relocatable (pg_config reports $("$copy_bin/pg_config" --sharedir))" >&2
    exit 1
fi
echo "$copy_bin/pg_config"
