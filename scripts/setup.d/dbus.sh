#!/usr/bin/env bash
# dbus-daemon, for ferry-conditions' tests: they serve fake NetworkManager, UPower and logind
# services on a private bus. Installs only when it is missing.
set -euo pipefail
if command -v dbus-daemon >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dbus >/dev/null
command -v dbus-daemon >/dev/null
