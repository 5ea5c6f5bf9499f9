#!/bin/sh
# Builds the installer as one static binary (glibc, crt-static; no musl std on this toolchain)
# into target/x86_64-unknown-linux-gnu/release/muster, and prints its size. musterd, which
# serves that installer and is packaged with it, is built in the same run, statically too.
# The installer never goes through glibc's NSS: owners come from the target root's etc/passwd
# and etc/group, names are resolved by hickory-dns.
set -eu
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
# --target keeps the flag off build scripts and proc-macros, which cannot be static.
# The installer is built for size (the `installer` profile) and put beside musterd, where the
# packages and the tests take it; musterd is built for speed (`release`).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --profile installer --locked --target "$target" -p muster
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" -p musterd
mkdir -p "target/$target/release"
cp "target/$target/installer/muster" "target/$target/release/muster"
out="target/$target/release/muster"
echo "static installer: $out, $(stat -c %s "$out") bytes"
