#!/usr/bin/env bash
# Benchmark (not a test): Ferry's transfer engine against `curl -T` uploading the same bytes to
# the same local ferry-server, in the same run. Prints seconds, MB/s and the ratio per case:
#   one big file (default 2 GB) over each protocol, and many small files (default 2,000 × 50 KB).
#   bench/transfer.sh
#   BIG_MB=512 SMALL_N=500 BIG_PROTOS=ietf SMALL_PROTOS=ietf bench/transfer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIG_MB=${BIG_MB:-2048}
SMALL_N=${SMALL_N:-2000}
SMALL_KB=${SMALL_KB:-50}
CONCURRENCY=${CONCURRENCY:-4}
BIG_PROTOS=${BIG_PROTOS:-plain tus ietf}
SMALL_PROTOS=${SMALL_PROTOS:-plain ietf}

cargo build --release -q -p ferry-server -p ferry-transfer
SERVER=$PWD/target/release/ferry-server
RUN=$PWD/target/release/ferry-transfer-run
work=$(mktemp -d /tmp/ferry-bench-transfer.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SERVER" serve --data "$work/server" --listen "127.0.0.1:$port" --open >/dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port/v1/uploads"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

mkdir -p "$work/big" "$work/small"
# Distinct bytes per run so the server's dedup never short-cuts a case.
head -c $((BIG_MB << 20)) /dev/urandom > "$work/big/big.bin"
python3 - "$work/small" "$SMALL_N" "$SMALL_KB" <<'PY'
import os, sys
d, n, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(d, f"s{i:06d}"), "wb") as f:
        f.write(os.urandom(kb * 1024))
PY
cat "$work/big/big.bin" "$work/small"/* > /dev/null  # warm the page cache alike for all

printf '%-26s %9s %9s %9s\n' case seconds MB/s ratio
mb_big=$BIG_MB
mb_small=$(( SMALL_N * SMALL_KB / 1024 ))

t0=$(now); curl -fsS -o /dev/null -T "$work/big/big.bin" "$url"; t1=$(now)
curl_big=$(secs "$t0" "$t1")
printf '%-26s %9s %9.1f %9s\n' "curl -T big" "$curl_big" "$(python3 -c "print($mb_big/$curl_big)")" 1.00

for proto in $BIG_PROTOS; do
    # The server deduplicates the stored object, not the transfer: every round sends all bytes.
    rm -f "$work/db-$proto"*
    t0=$(now)
    "$RUN" --db "$work/db-$proto" --ext bench --resource-dir "$work/big" --enqueue-to "$url" \
        --prefer "$proto" >/dev/null
    t1=$(now)
    s=$(secs "$t0" "$t1")
    printf '%-26s %9s %9.1f %9.2f\n' "ferry $proto big" "$s" "$(python3 -c "print($mb_big/$s)")" \
        "$(python3 -c "print($s/$curl_big)")"
done

t0=$(now)
ls "$work/small" | xargs -P "$CONCURRENCY" -I{} curl -fsS -o /dev/null -T "$work/small/{}" "$url"
t1=$(now)
curl_small=$(secs "$t0" "$t1")
printf '%-26s %9s %9.1f %9s\n' "curl -T small x$SMALL_N (P$CONCURRENCY)" "$curl_small" \
    "$(python3 -c "print($mb_small/$curl_small)")" 1.00
for proto in $SMALL_PROTOS; do
    rm -f "$work/dbs-$proto"*
    t0=$(now)
    "$RUN" --db "$work/dbs-$proto" --ext bench --resource-dir "$work/small" --enqueue-to "$url" \
        --prefer "$proto" --concurrency "$CONCURRENCY" >/dev/null
    t1=$(now)
    s=$(secs "$t0" "$t1")
    printf '%-26s %9s %9.1f %9.2f\n' "ferry $proto small x$SMALL_N" "$s" \
        "$(python3 -c "print($mb_small/$s)")" "$(python3 -c "print($s/$curl_small)")"
done
echo "(ferry times include hashing every file once to create its job, and the pre-pass)"
