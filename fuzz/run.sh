#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time each.
#
#   fuzz/run.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh handshake
#
# Stable toolchain: libFuzzer without sanitizers (`--sanitizer none`); ASan and
# the other sanitizers need nightly. Installs cargo-fuzz 0.13 if it is missing.
# The corpus grows in fuzz/corpus/<target> (ignored by git) from the committed
# seeds in fuzz/seeds/<target>; a crash is saved in fuzz/artifacts/<target>/ and
# this script exits non-zero. Turn a crash into a regression test (see
# fuzz/README.md) before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
# Its own target directory: libFuzzer builds use other flags than the main build.
export CARGO_TARGET_DIR="$PWD/target"

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode_client_frame handshake config)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version '^0.13'
fi

for target in "${targets[@]}"; do
    echo "== fuzzing $target for ${seconds}s"
    mkdir -p "corpus/$target"
    cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
