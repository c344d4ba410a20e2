#!/usr/bin/env bash
# Installs what berth's tests, demo and benchmarks need on a fresh machine
# (Debian with a running Docker Engine and a Rust toolchain). Idempotent:
# installs only what is missing. Sourced by tests/run.sh, the demo and the
# benchmark script.
set -euo pipefail

berth_need_apt=()
command -v busybox >/dev/null 2>&1 && busybox --list >/dev/null 2>&1 \
  && file -L "$(command -v busybox)" 2>/dev/null | grep -q static \
  || berth_need_apt+=(busybox-static)
command -v docker-registry >/dev/null 2>&1 || berth_need_apt+=(docker-registry)
command -v file >/dev/null 2>&1 || berth_need_apt+=(file)
if [ ${#berth_need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${berth_need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${berth_need_apt[@]}" >/dev/null
fi
# The packaged registry service is not wanted: tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
docker info >/dev/null 2>&1 || { echo "setup: the Docker engine is not reachable (is dockerd running?)" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is missing: install a Rust toolchain" >&2; exit 1; }
