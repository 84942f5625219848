#!/usr/bin/env bash
# Benchmark (not a test): ferry-server vs @tus/server + @tus/file-store under the same
# tus-js-client load, plus `curl -T` into ferry-server as the single-request baseline.
#   small: COUNT uploads of SIZE bytes at concurrency CONC (default 1000 × 1 MiB × 16)
#   large: one upload of LARGE_MB MiB (default 2048)
# Prints throughput, the ratios the issue sets goals for, and each server's peak RSS (VmHWM).
# A null tus endpoint (stores nothing) shows the ceiling the node client allows on the machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
COUNT=${COUNT:-1000}
SIZE=${SIZE:-1048576}
CONC=${CONC:-16}
LARGE_MB=${LARGE_MB:-2048}

bash scripts/setup.d/server-interop.sh >/dev/null
# FERRY_SERVER_BIN: a binary already built (bench/run passes its own); else build release.
bin=${FERRY_SERVER_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet -p ferry-server
    bin="$root/target/release/ferry-server"
fi
bench="$root/crates/server/bench"
work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "generating ${LARGE_MB} MiB test file..." >&2
head -c $((LARGE_MB * 1024 * 1024)) /dev/urandom > "$work/large.bin"

# start NAME CMD...: runs a server whose first stdout line is `listening on URL`; sets pid, base.
start() {
    local name=$1
    shift
    rm -rf "$work/data-$name"
    mkfifo "$work/fifo-$name"
    "$@" > "$work/fifo-$name" 2>"$work/err-$name" &
    pid=$!
    local line
    read -r line < "$work/fifo-$name"
    rm -f "$work/fifo-$name"
    base=${line#listening on }
}
stop() {
    kill "$pid" 2>/dev/null || true
    # Give a graceful shutdown 5 s, then SIGKILL: a benchmark must not leave servers behind.
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
}
peak_rss_mb() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status"; }

ferry() { RUST_LOG=warn exec "$bin" serve --open --listen 127.0.0.1:0 --data "$work/data-ferry"; }
tusd() { exec node "$bench/tus-server.mjs" "$work/data-tus"; }
nulld() { exec node "$bench/null-tus-server.mjs"; }
run_server() { # NAME FN PATH
    local name=$1 fn=$2 path=$3
    mkdir -p "$work/data-$name"
    start "$name" "$fn"
    node "$bench/load.js" small "$base$path" "$COUNT" "$SIZE" "$CONC" > "$work/$name-small.json"
    echo "$(peak_rss_mb)" > "$work/$name-small.rss"
    stop
    start "$name" "$fn"
    node "$bench/load.js" large "$base$path" "$work/large.bin" > "$work/$name-large.json"
    echo "$(peak_rss_mb)" > "$work/$name-large.rss"
    stop
    rm -rf "$work/data-$name"
}

echo "ferry-server..." >&2
run_server ferry ferry /v1/uploads
echo "@tus/server..." >&2
run_server tus tusd /files
echo "null tus endpoint (the load's own ceiling)..." >&2
run_server null nulld /files
echo "curl -T into ferry-server (plain PUT)..." >&2
mkdir -p "$work/data-ferry"
start ferry ferry
curl -sS -o /dev/null -w '{"seconds": %{time_total}, "bytes": %{size_upload}}\n' \
    -T "$work/large.bin" "$base/v1/uploads" > "$work/curl-large.json"
echo "$(peak_rss_mb)" > "$work/curl-large.rss"
stop

node -e '
const fs = require("fs"), w = process.argv[1];
const j = (f) => JSON.parse(fs.readFileSync(`${w}/${f}.json`, "utf8"));
const r = (f) => fs.readFileSync(`${w}/${f}.rss`, "utf8").trim();
const mbps = (x) => x.bytes / 1e6 / x.seconds;
const rows = [
  ["ferry-server", "small", j("ferry-small"), r("ferry-small")],
  ["@tus/server", "small", j("tus-small"), r("tus-small")],
  ["ferry-server", "large", j("ferry-large"), r("ferry-large")],
  ["@tus/server", "large", j("tus-large"), r("tus-large")],
  ["curl -T → ferry", "large", j("curl-large"), r("curl-large")],
  ["null endpoint", "small", j("null-small"), r("null-small")],
  ["null endpoint", "large", j("null-large"), r("null-large")],
];
console.log("server            load    seconds     MB/s  peak RSS MB");
for (const [n, l, x, rss] of rows)
  console.log(`${n.padEnd(17)} ${l.padEnd(6)} ${x.seconds.toFixed(2).padStart(8)} ${mbps(x).toFixed(1).padStart(8)} ${rss.padStart(12)}`);
const small = mbps(j("ferry-small")) / mbps(j("tus-small"));
const large = mbps(j("ferry-large")) / mbps(j("tus-large"));
const curl = mbps(j("ferry-large")) / mbps(j("curl-large"));
console.log(`small uploads: ferry / @tus/server = ${small.toFixed(2)}x (goal >= 2x)`);
console.log(`large upload:  ferry / @tus/server = ${large.toFixed(2)}x`);
console.log(`large upload:  ferry (tus-js-client) / curl -T = ${(curl * 100).toFixed(0)}% (goal >= 90%)`);
' "$work"
