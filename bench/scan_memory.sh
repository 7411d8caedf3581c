#!/usr/bin/env bash
# Streaming memory check: load N rows (default 10,000,000) into a
# 16-shard table over four nodes, scan them (count(*), sum(length(email)),
# a whole-row scan) and report the scanning backend's peak RSS growth
# (VmHWM from /proc/<backend pid>/status) over an idle backend; fails if it
# is 64 MB or more. Takes several minutes (the load dominates).
#
#   bench/scan_memory.sh            # 10M rows
#   ROWS=2000000 bench/scan_memory.sh
#   NO_BUILD=1 bench/scan_memory.sh # skip installing the extension / building the node
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
if [[ -z "${NO_BUILD:-}" ]]; then
    sudo_flag=""
    [[ "$(id -u)" == 0 ]] || sudo_flag="--sudo"
    cargo pgrx install -p conductor --pg-config "$PG_CONFIG" $sudo_flag
    cargo build -p conductor-node
fi
CONDUCTOR_SCAN_MEMORY_ROWS="${ROWS:-10000000}" \
    cargo test -p conductor-e2e --test memory -- --ignored --nocapture scan_memory_is_bounded_10m
