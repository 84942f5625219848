#!/usr/bin/env bash
# Installs the npm peers of ferry-server's interop test and benchmark (tus-js-client, @tus/server,
# @tus/file-store) into crates/server/interop/node_modules, exactly as package-lock.json pins them.
# Idempotent: skips `npm ci` when node_modules was installed from the same lockfile.
set -euo pipefail
cd "$(dirname "$0")/../../crates/server/interop"
stamp=node_modules/.ferry-lock-stamp
if [ -f "$stamp" ] && [ -f node_modules/tus-js-client/package.json ] && cmp -s package-lock.json "$stamp"; then
    exit 0
fi
npm ci --no-audit --no-fund
cp package-lock.json "$stamp"
