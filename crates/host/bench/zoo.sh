#!/bin/sh
# A well-behaved extension's throughput beside the zoo of misbehaving extensions, as a ratio
# of its throughput alone, measured in the same run. Usage: zoo.sh [ASSETS] [ROUNDS]
# (dev profile: dependencies are optimised; the work is the extensions and SQLite commits)
# The default, 100,000 assets (about 25 s a run), measures a sustained run: the zoo costs most
# at its first calls, before the backoff spaces them out, so a run of a second or two (5,000
# assets) mostly measures that start (71% there on 2 cores, 91% at 30,000, ~100% at 100,000).
set -eu
cd "$(dirname "$0")/../../.."
exec cargo run --locked -q -p ferry-host --example zoo_bench -- "${1:-100000}" "${2:-3}"
