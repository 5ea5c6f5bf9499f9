#!/bin/sh
# Builds the installer as one static binary (glibc, crt-static; no musl std on this toolchain)
# into target/x86_64-unknown-linux-gnu/release/muster, and prints its size. musterd, which
# serves that installer and is packaged with it, is built in the same run, the same way.
# The installer never goes through glibc's NSS: owners come from the target root's etc/passwd
# and etc/group, names are resolved by hickory-dns.
set -eu
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
# --target keeps the flag off build scripts and proc-macros, which cannot be static.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" -p muster -p musterd
out="target/$target/release/muster"
echo "static installer: $out, $(stat -c %s "$out") bytes"
