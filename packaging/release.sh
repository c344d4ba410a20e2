#!/usr/bin/env bash
# Builds the portable release: berth linked against an old glibc with
# cargo-zigbuild and zig (both from PyPI), checked with objdump that it needs
# no newer glibc symbol, then the .deb and the .rpm from that binary. Prints
# the binary's size and the newest GLIBC symbol version it needs.
#
#   packaging/release.sh                      # x86_64, glibc 2.17
#   BERTH_GLIBC=2.26 packaging/release.sh     # another glibc baseline
#   BERTH_TARGET=aarch64-unknown-linux-gnu packaging/release.sh
#                                             # Graviton: needs that target's
#                                             # standard library (rustup target add)
#
# Writes target/<target>/release/berth, target/<target>/debian/berth_*.deb
# and target/<target>/generate-rpm/berth-*.rpm. A full build takes about
# 13 to 20 minutes on 2 cores (fat LTO, one codegen unit). Exits non-zero
# when the build fails or a symbol is newer than the baseline; a binary
# larger than the goal (12 MB) is reported, not an error.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

TARGET=${BERTH_TARGET:-x86_64-unknown-linux-gnu}
GLIBC=${BERTH_GLIBC:-2.17}
MAX_BYTES=12000000
BERTH_ZIGBUILD_VERSION=0.24.0
BERTH_ZIGLANG_VERSION=0.17.1

source packaging/tools.sh
if ! command -v cargo-zigbuild >/dev/null 2>&1 \
  || [ "$(cargo-zigbuild --version 2>/dev/null)" != "cargo-zigbuild $BERTH_ZIGBUILD_VERSION" ] \
  || ! python3 -c "import ziglang" >/dev/null 2>&1; then
  echo "release: installing cargo-zigbuild $BERTH_ZIGBUILD_VERSION and ziglang $BERTH_ZIGLANG_VERSION"
  python3 -m pip install -q --disable-pip-version-check \
    "cargo-zigbuild==$BERTH_ZIGBUILD_VERSION" "ziglang==$BERTH_ZIGLANG_VERSION" 2>&1 \
    | grep -v "WARNING: Running pip as the 'root' user" || true
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "release: the Rust standard library for $TARGET is not installed" \
       "(rustup target add $TARGET, where that can be downloaded)" >&2
  exit 1
fi

echo "== cargo zigbuild --release --target $TARGET.$GLIBC"
cargo zigbuild --release --locked --bin berth --target "$TARGET.$GLIBC"
built=$(date +%s)
bin="target/$TARGET/release/berth"

# The newest glibc symbol version the binary needs must not pass the baseline.
newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
if [ "$(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -n 1)" != "$GLIBC" ]; then
  echo "release: $bin needs GLIBC_$newest, newer than the $GLIBC baseline:" >&2
  objdump -T "$bin" | grep "GLIBC_$newest" >&2
  exit 1
fi
size=$(stat -c %s "$bin")

# The man pages come from the binary; a binary for another architecture
# cannot run here, so a host build writes them (the pages are the same).
man="target/$TARGET/release/man"
rm -rf "$man"
if "$bin" --version >/dev/null 2>&1; then
  "$bin" man "$man"
else
  cargo run --quiet --locked --bin berth -- man "$man"
fi
gzip -9nf "$man"/*.1

echo "== packages"
# Depends: libc6 (>= 2.17) when the binary needs no more (the `portable`
# variant), else what dpkg-shlibdeps finds.
variant=()
if [ "$(printf '%s\n2.17\n' "$newest" | sort -V | tail -n 1)" = "2.17" ]; then
  variant=(--variant portable)
fi
cargo deb --no-build --no-strip --locked "${variant[@]}" --target "$TARGET" --output "target/$TARGET/debian/"
cargo generate-rpm --target "$TARGET"
deb=$(ls -t "target/$TARGET/debian/"berth_*.deb | head -n 1)
rpm=$(ls -t "target/$TARGET/generate-rpm/"berth-*.rpm | head -n 1)

echo "== release $(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])') for $TARGET"
command -v file >/dev/null 2>&1 && file "$bin"
echo "binary:        $bin"
echo "size:          $size bytes ($(awk -v b="$size" 'BEGIN { printf "%.2f MB, %.2f MiB", b / 1e6, b / 1048576 }'))"
echo "newest glibc:  GLIBC_$newest (baseline $GLIBC)"
echo "deb:           $deb ($(stat -c %s "$deb") bytes), Depends: $(dpkg-deb -f "$deb" Depends)"
echo "rpm:           $rpm ($(stat -c %s "$rpm") bytes)"
echo "build:         $((built - start)) s; total $(( $(date +%s) - start )) s"
if [ "$size" -gt "$MAX_BYTES" ]; then
  echo "goal missed:   $size bytes is over the $MAX_BYTES-byte goal (see docs/packaging.md)"
fi
