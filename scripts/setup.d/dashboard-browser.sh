#!/usr/bin/env bash
# The dashboard's browser test (crates/ferry/tests/dashboard_browser.rs): Debian's Chromium,
# Playwright for Python pinned in a venv at .tools/dashboard-browser (it drives /usr/bin/chromium
# and downloads no browser of its own), and axe-core pinned from npm for the accessibility check.
# Idempotent and quick when all three are there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PLAYWRIGHT=1.65.2
AXE=4.14.1
dir=.tools/dashboard-browser
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! "$dir/bin/python" -c "import playwright, sys; from importlib.metadata import version; sys.exit(version('playwright') != '$PLAYWRIGHT')" 2>/dev/null; then
    mkdir -p .tools
    rm -rf "$dir/bin" "$dir/lib" "$dir/pyvenv.cfg"
    # A minimal Debian has python3 without its venv module (ensurepip): add it when missing.
    if ! python3 -m venv "$dir" >/dev/null 2>&1; then
        rm -rf "$dir/bin" "$dir/lib" "$dir/pyvenv.cfg"
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv "$dir"
    fi
    "$dir/bin/pip" install -q "playwright==$PLAYWRIGHT"
fi
if [ "$(node -p "require('./$dir/node_modules/axe-core/package.json').version" 2>/dev/null)" != "$AXE" ]; then
    npm install --no-audit --no-fund --no-save --prefix "$dir" "axe-core@$AXE" >/dev/null
fi
