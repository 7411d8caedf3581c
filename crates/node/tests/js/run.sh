#!/usr/bin/env bash
# Runs the official libSQL JS client against a conductor-node at URL.
# Installs @libsql/client (pinned by package-lock.json) on first use; the
# install is idempotent. Usage: run.sh URL [TOKEN]
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/@libsql/client ]; then
  npm ci --no-audit --no-fund >&2
fi
exec node client_test.mjs "$@"
