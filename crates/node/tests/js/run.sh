#!/usr/bin/env bash
# Runs the official libSQL JS client against a conductor-node at URL.
# Installs @libsql/client (pinned by package-lock.json) on first use; the
# install is idempotent and serialized by a lock, as tests run in parallel.
# Usage: run.sh URL [TOKEN]
set -euo pipefail
cd "$(dirname "$0")"
{
  flock 9
  if [ ! -f node_modules/.conductor-installed ]; then
    npm ci --no-audit --no-fund >&2
    touch node_modules/.conductor-installed
  fi
} 9>.install.lock
exec node client_test.mjs "$@"
