#!/usr/bin/env bash
# Hit ratio of the file cache's policies (docs/cache.md):
#
#   bench/cachesim.sh               the table in docs/cache.md
#   bench/cachesim.sh --variants    plus every S3-FIFO variant tried
#
# Replays Zipf alpha 0.8, 1.0 and 1.2 request streams (2,000,000 measured
# requests each after 500,000 uncounted warm-up requests, fixed seed) over
# 10,000 files of 1 KiB-1 MiB (log-uniform sizes, assigned to popularity
# ranks at random) against a 64 MiB cache, through the very policy code the
# server runs, plus W-TinyLFU as a reference. Prints a markdown table of
# object and byte hit ratios. Any other ferry-cachesim option passes through
# (see --help). Deterministic: the same seed gives the same table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -j 2 -p ferry-cachesim
exec target/release/ferry-cachesim "$@"
