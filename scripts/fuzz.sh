#!/usr/bin/env bash
# Run every fuzz target for N seconds (default 30) from its committed seeds.
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list --fuzz-dir fuzz); do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    echo "== fuzz $target for ${secs}s"
    cargo fuzz run --fuzz-dir fuzz "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 3
done
