#!/usr/bin/env bash
# Benchmark (not a test): `ferry library scan` against `b3sum` hashing the same bytes, in the
# same run on the same machine. Prints files/s, the ratio to b3sum, the unchanged rescan time,
# peak RSS and index size, at two tree sizes to show growth is linear.
#   bench/scan.sh                       # 25,000 and 100,000 files of 20 KB, 10,000 of 300 KB
#   SCENARIOS="2000:300000" bench/scan.sh  # files:bytes pairs of your own
set -euo pipefail
cd "$(dirname "$0")/.."
# Small files expose per-file cost (the index writer); 300 KB is the brief's photo size, where
# hashing dominates. The 25k/100k pair shows whether time, memory and index grow linearly.
SCENARIOS=${SCENARIOS:-"25000:20000 100000:20000 10000:300000"}
RUNS=${RUNS:-3}

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need b3sum b3sum
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release -q -p ferry
FERRY=$PWD/target/release/ferry
work=$(mktemp -d /tmp/ferry-bench-scan.XXXXXX)
trap 'rm -rf "$work"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-8s %-9s %-10s %-10s %-8s %-9s %-9s %-10s %-9s\n' files MB b3sum_s scan_s ratio files/s rescan_s peak_RSS index
for scenario in $SCENARIOS; do
    n=${scenario%%:*}
    SIZE=${scenario##*:}
    tree=$work/tree-$n
    python3 bench/gen_tree.py "$tree" "$n" "$SIZE"
    mb=$(( n * SIZE / 1000000 ))
    # Warm the page cache for both contenders alike, then take medians.
    find "$tree" -type f -print0 | xargs -0 cat >/dev/null
    b3=$(for _ in $(seq "$RUNS"); do
        /usr/bin/time -f %e sh -c "find '$tree' -type f -print0 | xargs -0 -n 2000 -P $(nproc) b3sum >/dev/null" 2>&1 | tail -1
    done | median)
    scans=()
    for r in $(seq "$RUNS"); do
        rm -rf "$work/state"
        out=$(/usr/bin/time -f '%e %M' "$FERRY" --state-dir "$work/state" library scan "$tree" 2>&1 >/dev/null | tail -1)
        scans+=("$out")
    done
    scan=$(printf '%s\n' "${scans[@]}" | awk '{print $1}' | median)
    rss=$(printf '%s\n' "${scans[@]}" | awk '{print $2}' | sort -n | tail -1)
    rescan=$(for _ in $(seq "$RUNS"); do
        /usr/bin/time -f %e "$FERRY" --state-dir "$work/state" library scan "$tree" 2>&1 >/dev/null | tail -1
    done | median)
    index=$(du -sk "$work/state" | awk '{print $1}')
    printf '%-8s %-9s %-10s %-10s %-8s %-9s %-9s %-10s %-9s\n' "$n" "$mb" "$b3" "$scan" \
        "$(awk "BEGIN {printf \"%.2f\", $scan / $b3}")" \
        "$(awk "BEGIN {printf \"%.0f\", $n / $scan}")" "$rescan" "$((rss / 1024)) MB" "$((index / 1024)) MB"
    rm -rf "$tree"
done
echo
echo "Goals: first scan ≤ 1.5× b3sum; unchanged rescan of 100k files < 2 s; peak RSS < 100 MB; linear growth."
