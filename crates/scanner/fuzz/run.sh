#!/usr/bin/env bash
# Runs every scanner fuzz target (or the ones named) for a bounded time each.
#
#   crates/scanner/fuzz/run.sh                  # every target, 60 s each
#   FUZZ_SECONDS=600 crates/scanner/fuzz/run.sh lex_shell
#
# Stable toolchain: libFuzzer without sanitizers (`--sanitizer none`). The
# corpus grows in corpus/<target> (ignored by git) from the committed seeds in
# seeds/<target>; a crash lands in artifacts/<target>/ and this script exits
# non-zero. Copy a crash into regressions/<target>/ (replayed by
# `cargo test --test fuzzed`) before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="$PWD/target"

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(lex_python lex_javascript lex_shell lex_rust lex_go rules)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version '^0.13'
fi

for target in "${targets[@]}"; do
    echo "== fuzzing $target for ${seconds}s"
    mkdir -p "corpus/$target"
    cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
