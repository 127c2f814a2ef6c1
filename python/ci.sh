#!/usr/bin/env bash
# The Python package's CI: from a machine with only the Rust toolchain and
# CPython >= 3.11 with pip, build the wheel, install it into a fresh virtual
# environment, import it, run the pytest suite against the real daemon binary,
# and run mypy --strict on the package's stubs, the examples and the tests.
#
#   bash python/ci.sh            (from anywhere; uses $CARGO_TARGET_DIR or target/)
#
# Environment: PYTHON (default python3), CARGO_TARGET_DIR, PROFILE=release for
# an optimised wheel (default: debug, which builds faster; the tests do not
# need the speed).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
export CARGO_TARGET_DIR="$target"
python="${PYTHON:-python3}"
profile="${PROFILE:-debug}"
work="$target/python-ci"
mkdir -p "$work"

step() { echo "== python: $*"; }

"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"python/ci.sh needs CPython >= 3.11, found {sys.version.split()[0]}")
PY

step "tools (maturin) in $work/tools"
if [ ! -x "$work/tools/bin/maturin" ]; then
    rm -rf "$work/tools"
    "$python" -m venv "$work/tools"
    "$work/tools/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.9,<2"
fi
"$work/tools/bin/maturin" --version

step "the daemon binary the tests start"
# Built as the workspace's integration tests build it (the feature set of the
# README's `cargo test`), so after that command nothing is compiled again; a
# plain `cargo build -p automation-framework` resolves features differently
# and rebuilt the daemon's crates (47 s in CI).
cargo test --locked --workspace --no-run --test tests
daemon="$target/debug/automation-frameworkd"

step "wheel ($profile)"
rm -rf "$work/wheels"
release=()
[ "$profile" = release ] && release=(--release)
started=$(date +%s)
"$work/tools/bin/maturin" build --locked "${release[@]}" \
    --manifest-path python/Cargo.toml --interpreter "$python" --out "$work/wheels"
echo "wheel built in $(( $(date +%s) - started ))s"
wheel=$(ls "$work"/wheels/automation_framework-*-abi3-*.whl)

step "fresh virtual environment with the wheel"
rm -rf "$work/venv"
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
"$venv_python" -m pip install --quiet --disable-pip-version-check "$wheel" pytest mypy

# From outside python/, so the source tree cannot stand in for the installed wheel.
(cd "$work" && "$venv_python" -c "import automation_framework as af; print('imported', af.__file__, af.__version__)")
(cd "$work" && "$venv_python" -c "import automation_framework, sys; sys.exit(0 if 'site-packages' in automation_framework.__file__ else 'imported the source tree, not the wheel')")

step "pytest against $daemon"
set +e
AUTOMATION_FRAMEWORKD="$daemon" AUTOMATION_FRAMEWORK_REQUIRE_DAEMON=1 \
    "$venv_python" -m pytest -p no:cacheprovider -q -rs --rootdir "$root/python" "$root/python/tests"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
[ "$status" -eq 0 ] || exit "$status"

step "mypy --strict (the installed package's stubs, the examples, the tests, the benchmark)"
(cd "$work" && "$venv_python" -m mypy --strict --no-incremental -p automation_framework)
(cd "$work" && MYPYPATH="$root/python/tests" "$venv_python" -m mypy --strict --no-incremental \
    "$root/python/examples" "$root/python/tests" "$root/python/bench.py")

step "ok"
