#!/usr/bin/env bash
# CPU time per transaction of a pgbench workload, split by process kind, on
# a cluster held by `BENCH_HOLD=1 bench/run.sh` (run it in another shell
# with the same BENCH_DIR and BENCH_PORT_BASE). On a machine whose cores are
# all busy, throughput is bounded by this figure rather than by latency, so
# it tells where a target's time goes and compares builds on a noisy
# machine better than TPS does.
#
#   bench/cpu_per_transaction.sh conductor bench/workloads/w12_update.sql
#   bench/cpu_per_transaction.sh peer bench/workloads/w14_read_update.sql 10
#
# Counted from /proc (utime + stime): the router Postgres (its postmaster's
# own time and that of its exited children: pgbench's backends exit before
# the second reading), and for conductor the main nodes, for the peer the
# four shard Postgres. pgbench itself is not counted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${1:?target: conductor, peer or local}
workload=${2:?a pgbench script}
[ -f "$workload" ] || workload=$ROOT/$workload
seconds=${3:-5}
BENCH_DIR=${BENCH_DIR:?set BENCH_DIR to the held benchmark dir}
PORT_BASE=${BENCH_PORT_BASE:-27500}
ROWS=${BENCH_ROWS:-100000}
TICK=$(getconf CLK_TCK)

postmaster() { head -1 "$BENCH_DIR/pg-$1/data/postmaster.pid"; }

# The node processes listening on the main cluster's ports (4 by default).
node_pids() {
    local i
    for i in $(seq 1 16); do
        local port
        if [ "$i" -le 4 ]; then port=$((PORT_BASE + 20 + i)); else port=$((PORT_BASE + 36 + i)); fi
        pgrep -f -- "--listen 127.0.0.1:$port " || true
    done
}

# Ticks of the router (with its children) and of the target's servers.
ticks() {
    local router others=0 pid f
    read -ra f < <(cut -d' ' -f14-17 "/proc/$(postmaster router)/stat")
    router=$((f[0] + f[1] + f[2] + f[3]))
    case $target in
        conductor) for pid in $(node_pids); do
                read -ra f < <(cut -d' ' -f14-15 "/proc/$pid/stat")
                others=$((others + f[0] + f[1]))
            done ;;
        peer) for i in 1 2 3 4; do
                read -ra f < <(cut -d' ' -f14-17 "/proc/$(postmaster "shard$i")/stat")
                others=$((others + f[0] + f[1] + f[2] + f[3]))
            done ;;
    esac
    echo "$router $others"
}

read -r router0 others0 < <(ticks)
out=$(pgbench -h 127.0.0.1 -p "$PORT_BASE" -U bench -n -c 8 -j 2 -T "$seconds" -M simple \
    -D rows="$ROWS" -D run=$((RANDOM % 8000 + 1000)) -f "$workload" "$target" 2>&1) ||
    { echo "$out" >&2; exit 1; }
sleep 1 # the backends exit and are reaped
read -r router1 others1 < <(ticks)
tx=$(awk '/actually processed/ {print $NF}' <<<"$out")
tps=$(awk '/^tps/ {print $3}' <<<"$out")
[ "${tx:-0}" -gt 0 ] || { echo "$out" >&2; exit 1; }
awk -v t="$target" -v w="$(basename "$workload" .sql)" -v tps="$tps" -v tx="$tx" -v tick="$TICK" \
    -v r=$((router1 - router0)) -v o=$((others1 - others0)) 'BEGIN {
    us = 1e6 / tick / tx
    printf "%s %s: %.0f TPS, CPU per transaction: router %.0f us", t, w, tps, r * us
    if (t != "local")
        printf ", %s %.0f us, total %.0f us", (t == "peer" ? "shards" : "nodes"), o * us, (r + o) * us
    printf "\n"
}'
