#!/usr/bin/env bash
# Benchmark (not a test): `ferry backup` of N generated photos (default 2,000 × 300 KB) to its
# built-in server, end to end (index, send, verify), then the rerun (nothing to send). Baselines
# in the same run: `rclone copy` to `rclone serve webdav` when rclone is installed, and
# `curl -T` (P8) of the same files to a ferry-server. Prints seconds and ratios.
#   bench/backup.sh
#   N=10000 SIZE=300000 bench/backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
SIZE=${SIZE:-300000}
P=${P:-8}

cargo build --release -q -p ferry -p ferry-server
FERRY=$PWD/target/release/ferry
SERVER=$PWD/target/release/ferry-server
work=$(mktemp -d /tmp/ferry-bench-backup.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

python3 bench/gen_tree.py "$work/photos" "$N" "$SIZE"
find "$work/photos" -type f -exec cat {} + > /dev/null  # warm the page cache alike for all
mb=$(python3 -c "print(f'{$N * $SIZE / 1e6:.0f}')")

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

printf '%-40s %9s %9s\n' "case ($N files, $mb MB)" seconds ratio

t0=$(now)
FERRY_CONFIG=$work/none.toml "$FERRY" --state-dir "$work/state" backup "$work/photos" --now \
    --concurrency "$P" > "$work/ferry.out" 2>/dev/null
t1=$(now)
ferry_s=$(secs "$t0" "$t1")
grep -q "verified $N/$N" "$work/ferry.out" || { cat "$work/ferry.out"; echo "ferry backup did not verify every file" >&2; exit 1; }

t0=$(now)
FERRY_CONFIG=$work/none.toml "$FERRY" --state-dir "$work/state" backup "$work/photos" --now > "$work/rerun.out" 2>/dev/null
t1=$(now)
rerun_s=$(secs "$t0" "$t1")
grep -q "sent 0 " "$work/rerun.out" || { cat "$work/rerun.out"; echo "rerun sent something" >&2; exit 1; }

base_name=""
base_s=""
if command -v rclone >/dev/null; then
    port=$(free_port)
    mkdir -p "$work/webdav"
    rclone serve webdav "$work/webdav" --addr "127.0.0.1:$port" >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
    t0=$(now)
    rclone copy "$work/photos" ":webdav:" --webdav-url "http://127.0.0.1:$port" --transfers "$P" >/dev/null 2>&1
    t1=$(now)
    base_s=$(secs "$t0" "$t1"); base_name="rclone copy → serve webdav (P$P)"
    printf '%-40s %9s %9s\n' "$base_name" "$base_s" 1.00
fi

port=$(free_port)
"$SERVER" serve --data "$work/server" --listen "127.0.0.1:$port" --open >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
t0=$(now)
find "$work/photos" -type f -print0 | xargs -0 -P "$P" -I{} curl -fsS -o /dev/null -T {} "http://127.0.0.1:$port/v1/uploads"
t1=$(now)
curl_s=$(secs "$t0" "$t1")
if [ -z "$base_s" ]; then base_s=$curl_s; fi
printf '%-40s %9s %9.2f\n' "curl -T → ferry-server (P$P, no index)" "$curl_s" "$(python3 -c "print($curl_s/$base_s)")"
printf '%-40s %9s %9.2f\n' "ferry backup (index+send+verify)" "$ferry_s" "$(python3 -c "print($ferry_s/$base_s)")"
printf '%-40s %9s %9.2f\n' "ferry backup rerun (nothing to send)" "$rerun_s" "$(python3 -c "print($rerun_s/$base_s)")"
