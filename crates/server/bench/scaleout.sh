#!/usr/bin/env bash
# Benchmark (not a test): ferry-server's scale-out mode under the same tus-js-client load as
# bench/run.sh (load.js small: COUNT uploads of SIZE bytes at concurrency CONC, one PATCH each):
#   1. one instance on SQLite + a local folder (serve --data D --listen 127.0.0.1:0 --open)
#   2. one instance on PostgreSQL + S3 (SeaweedFS), a fresh database and bucket prefix
#   3. two instances on PostgreSQL + S3 (another fresh database and prefix) behind nginx
#      balancing round-robin per request (so an upload's creation and its PATCH often reach
#      different instances), keep-alive to both, no request or response buffering
# Prints one table: seconds, MiB/s and uploads/s (and their ratio to case 1), the peak RSS
# (VmHWM) and CPU seconds of every ferry-server (and of nginx), and the objects stored as the
# database and the store count them. Fails (exit 1, after the table) if any upload failed or
# the counts are not COUNT.
#
#   crates/server/bench/scaleout.sh            COUNT=500 SIZE=1048576 CONC=16 unless set
#   crates/server/bench/scaleout.sh --quick    COUNT=60 SIZE=262144 CONC=8 (a smoke run)
#
# Engines: with FERRY_TEST_PG_URL (an admin URL) and the AWS_* variables set (`. DIR/env` after
# `scripts/scaleout start DIR`) it uses those, creating databases bench_* and prefixes bench-*
# in FERRY_TEST_S3_URL's bucket and removing them at exit; otherwise it installs (if missing)
# and starts PostgreSQL + SeaweedFS in a temporary folder and stops them at exit.
# FERRY_SERVER_BIN: a ferry-server binary already built (else cargo build --release).
# PROXY=nginx|node: the balancer (default nginx, installed with apt-get when missing and root;
# node = bench/rr-proxy.js, a per-request round-robin proxy, used when nginx cannot be had).
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
bench="$root/crates/server/bench"

quick=0
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "scaleout bench: unknown argument $arg (only --quick)" >&2; exit 2 ;;
    esac
done
if [ "$quick" = 1 ]; then
    COUNT=${COUNT:-60}; SIZE=${SIZE:-262144}; CONC=${CONC:-8}
else
    COUNT=${COUNT:-500}; SIZE=${SIZE:-1048576}; CONC=${CONC:-16}
fi
PROXY=${PROXY:-nginx}

die() { echo "scaleout bench: $*" >&2; exit 1; }
say() { echo "$*" >&2; }

bash scripts/setup.d/server-interop.sh >/dev/null
bin=${FERRY_SERVER_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet -p ferry-server
    bin="${CARGO_TARGET_DIR:-$root/target}/release/ferry-server"
fi
[ -x "$bin" ] || die "no ferry-server binary at $bin"
psql_bin=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n1 || true)

work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-scaleout-bench.XXXXXX")"
engines=""          # our own engines' folder (under /tmp: the postgres user must reach it)
pids=()             # every process we started and have not stopped yet
dbs=()              # databases we created on engines we did not start
prefixes=()         # bucket prefixes we wrote to on engines we did not start
cleanup() {
    local p
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [ -n "$engines" ]; then
        scripts/scaleout stop "$engines" >/dev/null
        rm -rf "$engines"
    else
        for p in "${dbs[@]}"; do
            "$psql_bin" -X -q "$FERRY_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $p" >/dev/null 2>&1
        done
        for p in "${prefixes[@]}"; do s3 delete "$p" >/dev/null; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Signed S3 requests (SigV4, path style) with python's standard library, as scripts/scaleout.
#   s3 count PREFIX   keys under PREFIX/objects/      s3 delete PREFIX   deletes keys under PREFIX/
s3() {
    python3 - "$@" <<'EOF'
import datetime, hashlib, hmac, os, sys, urllib.error, urllib.parse, urllib.request
import xml.etree.ElementTree as ET
mode, prefix = sys.argv[1], sys.argv[2]
endpoint = os.environ["AWS_ENDPOINT_URL"].rstrip("/")
key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
region = os.environ.get("AWS_REGION", "us-east-1")
bucket = os.environ["FERRY_TEST_S3_URL"][len("s3://"):].split("/", 1)[0]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
q = lambda s, safe="-_.~": urllib.parse.quote(s, safe=safe)

def request(method, path, query=()):
    amz = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(b"").hexdigest()
    uri = q(path, "/-_.~")
    qs = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(query))
    h = {"host": urllib.parse.urlsplit(endpoint).netloc, "x-amz-content-sha256": payload, "x-amz-date": amz}
    names = sorted(h)
    canonical = "\n".join([method, uri, qs, "".join(f"{n}:{h[n]}\n" for n in names), ";".join(names), payload])
    scope = f"{amz[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (amz[:8], region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers = {"x-amz-content-sha256": payload, "x-amz-date": amz,
               "Authorization": f"AWS4-HMAC-SHA256 Credential={key}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={sig}"}
    req = urllib.request.Request(endpoint + uri + ("?" + qs if qs else ""), method=method, headers=headers)
    with opener.open(req, timeout=30) as r:
        return r.read()

def keys(under):
    token = None
    while True:
        query = [("list-type", "2"), ("prefix", under)] + ([("continuation-token", token)] if token else [])
        root = ET.fromstring(request("GET", f"/{bucket}", query))
        yield from (e.text for e in root.iterfind("{*}Contents/{*}Key"))
        if root.findtext("{*}IsTruncated") != "true":
            return
        token = root.findtext("{*}NextContinuationToken")

if mode == "count":
    print(sum(1 for _ in keys(f"{prefix}/objects/")))
elif mode == "delete":
    n = 0
    for k in list(keys(f"{prefix}/")):
        request("DELETE", f"/{bucket}/{k}")
        n += 1
    print(n)
EOF
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rand_hex() { od -An -N6 -tx1 /dev/urandom | tr -d ' \n'; }

# ---- engines ------------------------------------------------------------------------------
if [ -z "${FERRY_TEST_PG_URL:-}" ]; then
    bash scripts/setup.d/scaleout.sh
    scripts/scaleout available || die "PostgreSQL / SeaweedFS not installed (scripts/setup.d/scaleout.sh failed)"
    engines="$(mktemp -d /tmp/ferry-bench-engines.XXXXXX)"
    say "starting PostgreSQL + SeaweedFS in $engines..."
    scripts/scaleout start "$engines" >&2
    # shellcheck disable=SC1091
    . "$engines/env"
else
    [ -n "${AWS_ENDPOINT_URL:-}" ] && [ -n "${FERRY_TEST_S3_URL:-}" ] \
        || die "FERRY_TEST_PG_URL is set but AWS_ENDPOINT_URL / FERRY_TEST_S3_URL are not (. DIR/env)"
    say "using the engines at $FERRY_TEST_PG_URL and $AWS_ENDPOINT_URL"
fi
[ -n "$psql_bin" ] || die "psql not found"
# A fresh database and bucket prefix: sets DB_URL, DB_NAME, STORE, PREFIX.
fresh_pg_s3() {
    local r
    r=$(rand_hex)
    DB_NAME=bench_$r
    PREFIX=bench-$r
    "$psql_bin" -X -q -v ON_ERROR_STOP=1 "$FERRY_TEST_PG_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null
    if [ -z "$engines" ]; then dbs+=("$DB_NAME"); prefixes+=("$PREFIX"); fi
    DB_URL="${FERRY_TEST_PG_URL%/*}/$DB_NAME"
    STORE="${FERRY_TEST_S3_URL%/}/$PREFIX"
}
pg_count() { "$psql_bin" -X -q -A -t -v ON_ERROR_STOP=1 "$DB_URL" -c "$1"; }
sqlite_count() {
    python3 -c 'import sqlite3, sys; c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True); print(c.execute(sys.argv[2]).fetchone()[0])' "$1" "$2"
}

# ---- processes ----------------------------------------------------------------------------
# start NAME CMD...: runs a server whose first stdout line is `listening on URL`; sets PID, BASE.
start() {
    local name=$1 line="" i
    shift
    "$@" >"$work/out-$name" 2>"$work/err-$name" &
    PID=$!
    pids+=("$PID")
    for i in $(seq 600); do
        line=$(head -n1 "$work/out-$name" 2>/dev/null || true)
        [ -n "$line" ] && break
        if ! kill -0 "$PID" 2>/dev/null; then
            tail -n 20 "$work/err-$name" >&2
            die "$name exited before it listened"
        fi
        sleep 0.05
    done
    [ -n "$line" ] || die "$name did not listen within 30 s"
    BASE=${line#listening on }
}
# stop PID: SIGTERM, 5 s for a graceful shutdown, then SIGKILL.
stop() {
    local p=$1 i keep=()
    kill "$p" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for i in "${pids[@]}"; do [ "$i" = "$p" ] || keep+=("$i"); done
    pids=("${keep[@]}")
}
# proc_line LABEL PID: `LABEL peak_rss_kib cpu_seconds` of a running process.
proc_line() {
    local rss ticks
    rss=$(awk '/^VmHWM/ { print $2 }' "/proc/$2/status")
    ticks=$(sed 's/^.*) //' "/proc/$2/stat" | awk '{ print $12 + $13 }')
    echo "$1 $rss $(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }')"
}
ferry() { # DATA [extra serve flags]
    local data=$1
    shift
    RUST_LOG=warn exec "$bin" serve --open --listen 127.0.0.1:0 --data "$data" "$@"
}

problems=()
# load CASE ENDPOINT: the tus-js-client load; its JSON in CASE.json, a failure noted.
load() {
    local rc=0
    node "$bench/load.js" small "$2/v1/uploads" "$COUNT" "$SIZE" "$CONC" >"$work/$1.json" 2>"$work/$1.load-err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$work/$1.load-err" >&2
        problems+=("case $1: load.js exited $rc ($(grep -m1 . "$work/$1.load-err" | cut -c1-200))")
        [ -s "$work/$1.json" ] || echo '{"seconds": 0, "bytes": 0, "uploads": 0, "failed": -1}' >"$work/$1.json"
    fi
}
# check CASE DB_OBJECTS STORE_OBJECTS UNFINISHED LEFTOVER_PARTIALS
check() {
    echo "$2 $3 $4 $5" >"$work/$1.counts"
    [ "$2" = "$COUNT" ] || problems+=("case $1: $2 objects in the database, expected $COUNT")
    [ "$3" = "$COUNT" ] || problems+=("case $1: $3 objects in the store, expected $COUNT")
    [ "$4" = 0 ] || problems+=("case $1: $4 uploads left unfinished")
}
# Warnings and errors the servers logged (RUST_LOG=warn), shown after the table.
note_log() { # CASE NAME
    local n
    n=$(grep -c . "$work/err-$2" || true)
    if [ "$n" -gt 0 ]; then
        {
            echo "case $1, $2: $n line(s) on stderr, first ones:"
            head -n 5 "$work/err-$2" | cut -c1-300 | sed 's/^/    /'
        } >>"$work/notes"
    fi
}
partials() { find "$@" -type f 2>/dev/null | wc -l; }

say "load: $COUNT uploads of $SIZE bytes at concurrency $CONC (tus-js-client, one PATCH each)"

# ---- case 1: SQLite + local folder ---------------------------------------------------------
say "case 1: one ferry-server on SQLite + a local folder..."
start ferry1 ferry "$work/data1"
load 1 "$BASE"
proc_line ferry "$PID" >"$work/1.procs"
stop "$PID"
note_log 1 ferry1
check 1 "$(sqlite_count "$work/data1/meta.db" 'SELECT count(*) FROM objects')" \
    "$(find "$work/data1/blobs/objects" -type f | wc -l)" \
    "$(sqlite_count "$work/data1/meta.db" 'SELECT count(*) FROM uploads WHERE object_id IS NULL')" \
    "$(partials "$work/data1/partial")"
rm -rf "$work/data1"

# ---- case 2: PostgreSQL + S3, one instance -------------------------------------------------
say "case 2: one ferry-server on PostgreSQL + S3..."
fresh_pg_s3
start ferry2 ferry "$work/data2" --database "$DB_URL" --store "$STORE"
load 2 "$BASE"
proc_line ferry "$PID" >"$work/2.procs"
stop "$PID"
note_log 2 ferry2
check 2 "$(pg_count 'SELECT count(*) FROM objects')" "$(s3 count "$PREFIX")" \
    "$(pg_count 'SELECT count(*) FROM uploads WHERE object_id IS NULL')" "$(partials "$work/data2/partial")"
rm -rf "$work/data2"

# ---- case 3: PostgreSQL + S3, two instances behind a per-request round-robin proxy ----------
if [ "$PROXY" = nginx ] && ! PATH="$PATH:/usr/sbin:/sbin" command -v nginx >/dev/null; then
    say "nginx missing: installing it (apt-get)..."
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
    # Installing nginx starts its system service unless policy-rc.d forbids it: forbid it for
    # the install when nothing else does (the bench runs its own nginx, in the foreground).
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ] && $sudo sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d' 2>/dev/null; then
        made_policy=1
    fi
    install=($sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx)
    "${install[@]}" >/dev/null 2>&1 || { $sudo apt-get update -qq >/dev/null 2>&1 && "${install[@]}" >/dev/null 2>&1; } || true
    if [ "$made_policy" = 1 ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
fi
nginx_bin=$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx || true)
if [ "$PROXY" = nginx ] && [ -z "$nginx_bin" ]; then
    say "nginx cannot be had: using bench/rr-proxy.js (node) instead"
    PROXY=node
fi

say "case 3: two ferry-servers on PostgreSQL + S3 behind $PROXY (round-robin per request)..."
fresh_pg_s3
start ferry3a ferry "$work/data3a" --database "$DB_URL" --store "$STORE"
pid_a=$PID base_a=$BASE
start ferry3b ferry "$work/data3b" --database "$DB_URL" --store "$STORE"
pid_b=$PID base_b=$BASE
proxy_pid=""
if [ "$PROXY" = nginx ]; then
    mkdir -p "$work/nginx"
    user_line=""
    # As root nginx's workers would run as nobody, who cannot enter the temporary folder.
    if [ "$(id -u)" -eq 0 ]; then user_line="user root root;"; fi
    for attempt in 1 2 3; do
        port=$(free_port)
        cat >"$work/nginx/nginx.conf" <<EOF
$user_line
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    log_format bench '\$request_method \$uri \$status \$upstream_addr \$upstream_http_location';
    access_log $work/nginx/access.log bench buffer=256k;
    client_body_temp_path $work/nginx/client_body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream ferry {
        server ${base_a#http://};
        server ${base_b#http://};
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port;
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host \$http_host;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
        location / { proxy_pass http://ferry; }
    }
}
EOF
        "$nginx_bin" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
            >"$work/out-nginx" 2>"$work/err-nginx" &
        proxy_pid=$!
        pids+=("$proxy_pid")
        for _ in $(seq 100); do
            kill -0 "$proxy_pid" 2>/dev/null || break
            curl -s -o /dev/null "http://127.0.0.1:$port/" && break
            sleep 0.05
        done
        if kill -0 "$proxy_pid" 2>/dev/null && curl -s -o /dev/null "http://127.0.0.1:$port/"; then break; fi
        stop "$proxy_pid"
        proxy_pid=""
        cat "$work/nginx/error.log" >&2 2>/dev/null || true
        [ "$attempt" -lt 3 ] || die "nginx did not start (log above)"
    done
    proxy_base="http://127.0.0.1:$port"
else
    start rr-proxy node "$bench/rr-proxy.js" "$base_a" "$base_b"
    proxy_pid=$PID
    proxy_base=$BASE
fi
load 3 "$proxy_base"
{
    proc_line ferry-a "$pid_a"
    proc_line ferry-b "$pid_b"
    if [ "$PROXY" = nginx ]; then
        proc_line nginx-master "$proxy_pid"
        for w in $(pgrep -P "$proxy_pid" || true); do proc_line nginx-worker "$w"; done
    else
        proc_line rr-proxy "$proxy_pid"
    fi
} >"$work/3.procs"
stop "$proxy_pid"
if [ "$PROXY" = nginx ]; then
    # How nginx spread the requests (its access log): per instance, and the uploads whose
    # PATCH reached another instance than their creation.
    awk '
        $2 == "/" { next }  # the readiness probe
        { n[$4]++; if ($3 !~ /^2/) bad[$1 " " $3]++ }
        $1 == "POST" { made[$5] = $4 }
        $1 == "PATCH" { patches++; if ($2 in made && made[$2] != $4) cross++ }
        END {
            printf "nginx: requests per instance:"; for (u in n) printf " %s %d", u, n[u]; printf "\n"
            printf "nginx: %d of %d PATCHes reached another instance than their creation\n", cross, patches
            for (k in bad) printf "nginx: %d answer(s) %s\n", bad[k], k
        }' "$work/nginx/access.log" >"$work/spread"
fi
stop "$pid_a"
stop "$pid_b"
note_log 3 ferry3a
note_log 3 ferry3b
if [ "$PROXY" = nginx ] && [ -s "$work/nginx/error.log" ]; then
    cp "$work/nginx/error.log" "$work/err-nginx-log"
    note_log 3 nginx-log
fi
check 3 "$(pg_count 'SELECT count(*) FROM objects')" "$(s3 count "$PREFIX")" \
    "$(pg_count 'SELECT count(*) FROM uploads WHERE object_id IS NULL')" \
    "$(partials "$work/data3a/partial" "$work/data3b/partial")"

# ---- the table -------------------------------------------------------------------------------
node - "$work" "$COUNT" "$SIZE" "$CONC" "$PROXY" <<'EOF'
const fs = require('fs')
const [w, count, size, conc, proxy] = process.argv.slice(2)
const read = (f) => fs.readFileSync(`${w}/${f}`, 'utf8')
const cases = [
  [1, 'SQLite + folder, 1 instance'],
  [2, 'PostgreSQL + S3, 1 instance'],
  [3, `PostgreSQL + S3, 2 instances + ${proxy}`],
].map(([n, label]) => {
  const load = JSON.parse(read(`${n}.json`))
  const procs = read(`${n}.procs`).trim().split('\n').map((l) => {
    const [name, kib, cpu] = l.split(' ')
    return { name, mib: Number(kib) / 1024, cpu: Number(cpu) }
  })
  const [db, store, unfinished, partials] = read(`${n}.counts`).trim().split(' ').map(Number)
  const mibs = load.seconds > 0 ? load.bytes / 1048576 / load.seconds : 0
  const ups = load.seconds > 0 ? load.uploads / load.seconds : 0
  return { n, label, load, procs, db, store, unfinished, partials, mibs, ups }
})
const c1 = cases[0]
const ferryMax = (c) => Math.max(...c.procs.filter((p) => p.name.startsWith('ferry')).map((p) => p.mib))
console.log(`\nscale-out benchmark: ${count} uploads × ${size} bytes, concurrency ${conc} (tus-js-client, one PATCH each)`)
const head = ['case', 'seconds', 'MiB/s', 'uploads/s', 'vs 1', 'failed', 'objects db/store', 'peak RSS MiB (CPU s) per process', 'RSS vs 1']
const rows = cases.map((c) => [
  `${c.n} ${c.label}`,
  c.load.seconds.toFixed(2),
  c.mibs.toFixed(1),
  c.ups.toFixed(1),
  c1.mibs > 0 ? `${(c.mibs / c1.mibs).toFixed(2)}x` : '-',
  c.load.failed >= 0 ? String(c.load.failed) : '?',
  `${c.db}/${c.store}`,
  c.procs.map((p) => `${p.name} ${p.mib.toFixed(0)} (${p.cpu.toFixed(1)})`).join(', '),
  `${(ferryMax(c) / ferryMax(c1)).toFixed(2)}x`,
])
const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
const line = (r) => r.map((x, i) => (i === 0 || i === 7 ? x.padEnd(width[i]) : x.padStart(width[i]))).join('  ').trimEnd()
console.log(line(head))
for (const r of rows) console.log(line(r))
console.log('vs 1: throughput relative to case 1; RSS vs 1: the largest ferry-server\'s peak RSS relative to case 1\'s.')
for (const c of cases)
  if (c.unfinished || c.partials)
    console.log(`case ${c.n}: ${c.unfinished} unfinished upload row(s), ${c.partials} partial file(s) left in the instances' --data`)
EOF
if [ -s "$work/spread" ]; then cat "$work/spread"; fi
if [ -s "$work/notes" ]; then
    echo
    echo "logged by the processes (RUST_LOG=warn):"
    cat "$work/notes"
fi
if [ "${#problems[@]}" -gt 0 ]; then
    echo >&2
    for p in "${problems[@]}"; do echo "FAILED: $p" >&2; done
    exit 1
fi
