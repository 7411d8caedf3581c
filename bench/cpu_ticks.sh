#!/usr/bin/env bash
# CPU time (utime + stime, in clock ticks) of the given processes and of
# their direct children, summed. bench/run.sh calls it from inside a psql
# session (\!) around the W7 scans: conductor's nodes, or the peer's shard
# postmasters (whose children include the backends serving postgres_fdw).
set -euo pipefail
total=0
for pid in "$@"; do
    for p in "$pid" $(ps --ppid "$pid" -o pid= || true); do
        t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
done
echo "$total"
