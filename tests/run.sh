#!/usr/bin/env bash
# The whole test suite: set-up, format and lint checks, unit tests, and the
# integration tests against the real Docker engine and a real registry on
# loopback. Builds once (debug). Exit status is the suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
source tests/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --no-fail-fast -- --test-threads 4
echo "== suite passed in $(( $(date +%s) - start ))s"
