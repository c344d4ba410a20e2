#!/usr/bin/env bash
# berth fleet demo: one autoscaling group of five instances on moto (the AWS
# APIs, emulated on loopback), each with its own IMDS emulator and its own
# berth agent, on the real Docker engine, pulling from a registry on
# loopback. The operators change one value, berth:version, and the group
# replaces itself, never more than berth:max-unavailable (k = 2) at a time,
# drawn as a live line per instance; then a typo'd version changes nothing,
# and an agent's `berth status` says why.
#
# The demo is tests/fleet_demo.rs (an ignored test reusing the test suite's
# fleet harness); it checks what it shows and fails otherwise, so this is
# also a smoke test: exit 0 when every check passed.
#
# Needs a running Docker engine, Python 3 and a Rust toolchain; installs what
# else it lacks (tests/setup.sh). All traffic stays on loopback. Cleans up
# after itself: on success, on failure and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() {
  if [ -t 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-fleet-demo.XXXXXX")
demo_pid=""
cleanup() {
  trap '' INT TERM # a second Ctrl-C must not cut the clean-up short
  if [ -n "$demo_pid" ]; then
    if kill -0 "$demo_pid" 2>/dev/null; then
      # The demo cleans up after itself on SIGTERM; give it time to.
      kill -TERM "$demo_pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$demo_pid" 2>/dev/null && sleep 1 # its helpers then stop the agents
    fi
    # Whatever a killed demo left: containers (their namespaces start with
    # t-PID-) and the images its agents pulled.
    docker ps -a --filter label=berth.namespace --format '{{.ID}} {{.Label "berth.namespace"}}' \
      | awk -v p="t-$demo_pid-" 'index($2, p) == 1 { print $1 }' | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker images --format '{{.Repository}} {{.ID}}' \
      | awk -v r="/berth-fleet-demo-$demo_pid/web" 'index($1, r) { print $2 }' | sort -u \
      | xargs -r docker rmi -f >/dev/null 2>&1 || true
  fi
  rm -rf "$work" # every temp dir of the demo is in here (TMPDIR)
}
trap cleanup EXIT
# While the demo runs, it says itself that it was interrupted and cleans up.
trap '[ -n "$demo_pid" ] || { echo; echo "interrupted"; }; exit 130' INT TERM

say "setup: what the demo needs (tests/setup.sh installs only what is missing)"
source tests/setup.sh
echo "ok"

say "building berth and the demo (debug; the first build takes several minutes)"
bin=$(cargo test --test fleet_demo --no-run --message-format=json-render-diagnostics \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "fleet_demo" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "the demo's test binary was not built" >&2; exit 1; }

# The demo runs in its own session, so a Ctrl-C reaches only this script,
# which asks the demo to stop (SIGTERM) and waits for it to clean up.
start=$(date +%s)
columns=120 # the live view clips its lines to the terminal's width
if [ -t 1 ]; then
  columns=$(stty size </dev/tty 2>/dev/null | cut -d' ' -f2)
  [ -n "$columns" ] && [ "$columns" -gt 0 ] 2>/dev/null || columns=120
fi
TMPDIR=$work BERTH_DEMO_COLUMNS=$columns RUST_BACKTRACE=0 setsid "$bin" --ignored --exact fleet_demo --nocapture --quiet --test-threads 1 &
demo_pid=$!
rc=0
wait "$demo_pid" || rc=$?
took=$(( $(date +%s) - start ))
if [ "$rc" -eq 0 ]; then
  say "fleet demo passed: ${took}s after the build"
else
  say "fleet demo FAILED (exit code $rc) after ${took}s"
fi
exit "$rc"
