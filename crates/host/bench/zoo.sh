#!/bin/sh
# A well-behaved extension's throughput beside the zoo of misbehaving extensions, as a ratio
# of its throughput alone, measured in the same run. Usage: zoo.sh [ASSETS] [ROUNDS]
# (dev profile: dependencies are optimised; the work is the extensions and SQLite commits)
set -eu
cd "$(dirname "$0")/../../.."
exec cargo run --locked -q -p ferry-host --example zoo_bench -- "${1:-5000}" "${2:-3}"
