#!/usr/bin/env bash
# Installs what berth's tests, demo and benchmarks need on a fresh machine
# (Debian with a running Docker Engine, Python 3 with pip, and a Rust
# toolchain): busybox-static, docker-registry, apache2-utils (htpasswd) from
# Debian, moto's server and python-hcl2 from PyPI, and the packaging tools
# for tests/packaging.rs (packaging/tools.sh: cargo-deb and cargo-generate-rpm,
# which compile on first install, rpm, dpkg-dev, systemd). Idempotent:
# installs only what is missing. Sourced by tests/run.sh, the demo and the
# benchmark script.
set -euo pipefail

berth_need_apt=()
command -v busybox >/dev/null 2>&1 && busybox --list >/dev/null 2>&1 \
  && file -L "$(command -v busybox)" 2>/dev/null | grep -q static \
  || berth_need_apt+=(busybox-static)
command -v docker-registry >/dev/null 2>&1 || berth_need_apt+=(docker-registry)
command -v file >/dev/null 2>&1 || berth_need_apt+=(file)
command -v htpasswd >/dev/null 2>&1 || berth_need_apt+=(apache2-utils)
if [ ${#berth_need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${berth_need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${berth_need_apt[@]}" >/dev/null
fi
# cargo-deb, cargo-generate-rpm, rpm, dpkg-dev, systemd-analyze, binutils.
source "$(dirname "${BASH_SOURCE[0]}")/../packaging/tools.sh"
# moto's server emulates the AWS APIs for the EC2 tests.
BERTH_MOTO_VERSION=5.2.1
if ! python3 -c "import moto, moto.server, sys; sys.exit(moto.__version__ != '$BERTH_MOTO_VERSION')" >/dev/null 2>&1; then
  echo "setup: installing moto[server]==$BERTH_MOTO_VERSION"
  python3 -m pip install -q --disable-pip-version-check "moto[server]==$BERTH_MOTO_VERSION" 2>&1 | grep -v "WARNING: Running pip as the 'root' user" || true
  python3 -c "import moto.server" || { echo "setup: moto did not install" >&2; exit 1; }
fi
# python-hcl2 parses the Packer and Terraform examples for tests/infra.rs.
BERTH_HCL2_VERSION=8.1.4
if ! python3 -c "import hcl2, sys; from importlib.metadata import version; sys.exit(version('python-hcl2') != '$BERTH_HCL2_VERSION')" >/dev/null 2>&1; then
  echo "setup: installing python-hcl2==$BERTH_HCL2_VERSION"
  python3 -m pip install -q --disable-pip-version-check "python-hcl2==$BERTH_HCL2_VERSION" 2>&1 | grep -v "WARNING: Running pip as the 'root' user" || true
  python3 -c "import hcl2" || { echo "setup: python-hcl2 did not install" >&2; exit 1; }
fi
# The packaged registry service is not wanted: tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
docker info >/dev/null 2>&1 || { echo "setup: the Docker engine is not reachable (is dockerd running?)" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is missing: install a Rust toolchain" >&2; exit 1; }
