#!/usr/bin/env bash
# libfiu's fiu-run, for scripts/torture's fsync scenario (fsync/fdatasync failing at random in
# the server or the uploader). Optional: when it cannot be installed the torture skips that
# scenario and says so, so a failed install warns instead of failing the suite.
set -uo pipefail
if command -v fiu-run >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fiu-utils >/dev/null; }; then
    echo "setup: fiu-utils could not be installed; the torture's fsync scenario will be skipped" >&2
fi
exit 0
