#!/usr/bin/env bash
# Benchmarks berth against Docker's own baselines and the engine's floors on
# the local engine: respawn latency, the crash-loop schedule, cold start and
# the agent's footprint; then the seeded rollout simulation (the real gate
# and schedule, N = 10 … 1,000). Rewrites docs/benchmarks.md; raw samples go
# to target/bench/results.json. Takes about 7 minutes, plus the portable release build (about 15
# minutes from scratch) and the simulation (about 2 minutes).
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
# The binary users run: the portable release build (packaging/release.sh,
# which also checks its glibc baseline and size and builds the packages).
echo "== packaging/release.sh"
bin=target/x86_64-unknown-linux-gnu/release/berth
packaging/release.sh || echo "bench: the release script reported a problem (above); benchmarking its binary anyway"
[ -x "$bin" ] || { echo "bench: no release binary at $bin" >&2; exit 1; }
python3 tests/bench/bench.py --berth "$bin" "$@"
case " $* " in
  *" --quick "*|*" --only "*) exit 0 ;;  # partial runs leave docs/benchmarks.md alone
esac
# The simulation is seeded and deterministic: its figures do not depend on
# the build profile, so it runs in the test profile the suite has built.
echo "== rollout simulation"
BERTH_SIM_REPORT="$PWD/docs/benchmarks.md" cargo test --quiet --test rollout_sim -- --nocapture --test-threads 1 > target/bench/simulation.log
tail -n 3 target/bench/simulation.log
