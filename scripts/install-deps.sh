#!/usr/bin/env bash
# Installs what building and testing conductor needs, and only what is
# missing, so a second run takes seconds:
#   - Debian packages: PostgreSQL 15 server + headers, clang/libclang (pgrx's
#     bindgen), a C toolchain, wrk, and Node.js with npm unless present.
#   - cargo-pgrx 0.18.1 (must match the pgrx version in Cargo.toml).
#   - `cargo pgrx init` pointed at Debian's Postgres 15 (no download).
# The Rust toolchain itself is expected to be there (rustup).
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGRX_VERSION=0.18.1
PACKAGES=(
    postgresql-15              # the server the extension loads into (initdb, postgres)
    postgresql-server-dev-15   # headers + pg_config for pgrx
    libclang-dev clang         # bindgen, used by pgrx-pg-sys
    pkg-config libssl-dev      # common -sys crate needs (cargo-pgrx build)
    build-essential            # cc, make
    wrk                        # HTTP load for bench/node (make bench)
)

log() { echo "install-deps: $*"; }

# apt needs root; use sudo only when we aren't.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi

# --- Debian packages --------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
# Node.js and npm run the official @libsql/client test against
# conductor-node (crates/node/tests/official_client.rs). Any install that
# provides both commands will do (Debian's, or NodeSource's whose nodejs
# bundles npm); Debian's packages only when one is missing.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    missing+=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
    log "Debian packages present"
fi

# --- Rust toolchain ---------------------------------------------------------
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"   # a non-login shell may not have ~/.cargo/bin on PATH
fi
if ! command -v cargo >/dev/null; then
    log "cargo not found: install Rust (rustup) first"
    exit 1
fi

# --- cargo-pgrx -------------------------------------------------------------
if cargo pgrx --version 2>/dev/null | grep -qx "cargo-pgrx $PGRX_VERSION"; then
    log "cargo-pgrx $PGRX_VERSION present"
else
    log "cargo install cargo-pgrx $PGRX_VERSION (takes several minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked </dev/null
fi

# --- cargo pgrx init ----------------------------------------------------------
# Only registers Debian's pg_config; `--pg15 download` is never used (no
# network but package registries).
PGRX_CONFIG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if [ -f "$PGRX_CONFIG" ] && grep -q '^pg15[[:space:]]*=' "$PGRX_CONFIG"; then
    log "cargo pgrx init: pg15 already configured"
else
    log "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG" </dev/null
fi
