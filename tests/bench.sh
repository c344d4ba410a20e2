#!/usr/bin/env bash
# Benchmarks berth against Docker's own baselines and the engine's floors on
# the local engine: respawn latency, the crash-loop schedule, cold start and
# the agent's footprint; then the seeded rollout simulation (the real gate
# and schedule, N = 10 … 1,000). Rewrites docs/benchmarks.md; raw samples go
# to target/bench/results.json. Takes about 7 minutes (plus the release build).
#
#   tests/bench.sh            # the full run
#   tests/bench.sh --quick    # fewer samples, to check the script itself
#                             # (does not touch docs/benchmarks.md)
#
# Exits non-zero when a measurement could not be made; a missed goal is
# reported in the file, not in the exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/setup.sh
echo "== cargo build --release --bin berth"
cargo build --release --bin berth
python3 tests/bench/bench.py --berth target/release/berth "$@"
case " $* " in
  *" --quick "*|*" --only "*) exit 0 ;;  # partial runs leave docs/benchmarks.md alone
esac
echo "== rollout simulation (release)"
BERTH_SIM_REPORT="$PWD/docs/benchmarks.md" cargo test --release --quiet --test rollout_sim -- --nocapture --test-threads 1 > target/bench/simulation.log
tail -n 3 target/bench/simulation.log
