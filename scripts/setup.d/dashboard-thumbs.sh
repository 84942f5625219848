#!/usr/bin/env bash
# Debian's heif-thumbnailer, which the dashboard runs as a child process (with a timeout) to
# make thumbnails of HEIC/HEIF photos, keeping a C decoder out of the daemon. Optional: without
# it HEIC photos show a placeholder, so a failed install warns instead of failing the suite.
set -uo pipefail
if command -v heif-thumbnailer >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends heif-thumbnailer >/dev/null; }; then
    echo "setup: heif-thumbnailer could not be installed; the dashboard shows placeholders for HEIC photos" >&2
fi
exit 0
