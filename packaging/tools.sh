# Installs what building and checking the packages needs, when it is
# missing: cargo-deb and cargo-generate-rpm (`cargo install --locked`: they
# compile, 2.5 and 9 minutes on 2 cores, once per machine), and Debian's
# rpm (to query .rpm files), dpkg-dev (dpkg-shlibdeps, for the .deb's
# Depends), systemd (systemd-analyze) and binutils (strip, objdump).
# Idempotent.
# Sourced by tests/setup.sh and packaging/release.sh.
BERTH_CARGO_DEB_VERSION=3.8.0
BERTH_CARGO_GENERATE_RPM_VERSION=0.21.1

berth_need_pkg_apt=()
command -v rpm >/dev/null 2>&1 || berth_need_pkg_apt+=(rpm)
command -v dpkg-shlibdeps >/dev/null 2>&1 || berth_need_pkg_apt+=(dpkg-dev)
command -v systemd-analyze >/dev/null 2>&1 || berth_need_pkg_apt+=(systemd)
command -v strip >/dev/null 2>&1 && command -v objdump >/dev/null 2>&1 || berth_need_pkg_apt+=(binutils)
if [ ${#berth_need_pkg_apt[@]} -gt 0 ]; then
  echo "setup: installing ${berth_need_pkg_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${berth_need_pkg_apt[@]}" >/dev/null
fi
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $BERTH_CARGO_DEB_VERSION" ]; then
  echo "setup: installing cargo-deb $BERTH_CARGO_DEB_VERSION (compiles: a few minutes)"
  cargo install --quiet --locked cargo-deb --version "$BERTH_CARGO_DEB_VERSION"
fi
if [ "$(cargo generate-rpm --version 2>/dev/null)" != "cargo-generate-rpm $BERTH_CARGO_GENERATE_RPM_VERSION" ]; then
  echo "setup: installing cargo-generate-rpm $BERTH_CARGO_GENERATE_RPM_VERSION (compiles: a few minutes)"
  cargo install --quiet --locked cargo-generate-rpm --version "$BERTH_CARGO_GENERATE_RPM_VERSION"
fi
