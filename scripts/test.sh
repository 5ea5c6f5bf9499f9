#!/bin/sh
# The whole test suite, from a bare Debian machine with a Rust toolchain: installs what the
# tests need, checks formatting and lints, builds the real binaries, runs every test.
set -eu
cd "$(dirname "$0")/.."

need=""
for tool in curl:curl openssl:openssl stat:coreutils mount:mount file:file faketime:faketime; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need="$need ${tool#*:}"
done
if [ -n "$need" ]; then
  echo "installing:$need"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features muster/failpoints -- -D warnings
# The end-to-end tests run these binaries; the crash tests need the failpoints build.
cargo build --workspace --bins --features muster/failpoints
# The shipped installer: one static binary, enrolled with for real by a test.
sh scripts/build-static.sh
cargo test --workspace --features muster/failpoints
