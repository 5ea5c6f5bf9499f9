#!/bin/sh
# Where a server's CPU goes during 100-installer storms: samples its process with perf for ten
# seconds and prints the share of each kind of work (P-256 and X25519 arithmetic, other ring
# code, SQLite, the kernel, the allocator, HTTP, the async runtime, …). A figure to read beside
# docs/benchmarks.md, not a test.
#
#   sh scripts/profile.sh            # musterd
#   sh scripts/profile.sh protocol   # the protocol floor (the design's work, nothing stored)
#   sh scripts/profile.sh floor      # the floor
#   sh scripts/profile.sh generator  # the load generator itself, during musterd's storms
#
# Needs perf (apt-get install linux-perf) and permission to use it (root, or
# kernel.perf_event_paranoid <= 1). Builds its own release binaries with frame pointers into
# target/prof, so it does not disturb target/release.
set -eu
cd "$(dirname "$0")/.."
what=${1:-muster}
case $what in
  muster | generator) only=muster ;;
  protocol | floor) only=$what ;;
  *) echo "profile: muster, protocol, floor or generator, not $what" >&2; exit 2 ;;
esac
command -v perf >/dev/null || { echo "profile: perf is needed (apt-get install linux-perf)" >&2; exit 1; }

RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_STRIP=false \
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_LTO=false \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  cargo build --quiet --release -p musterd -p muster-bench --target-dir target/prof

out=$(mktemp -d /tmp/muster-profile.XXXXXX)
target/prof/release/muster-storm run --no-scale --rounds 8 --only "$only" > "$out/storm.txt" 2>&1 &
storm=$!
trap 'kill "$storm" 2>/dev/null || true' EXIT INT TERM
# The 100-concurrent storms start after a few seconds (musterd first runs a 1-concurrent row).
sleep 5
case $what in
  muster) pid=$(pgrep -P "$storm" -f 'musterd serve' || true) ;;
  protocol) pid=$(pgrep -P "$storm" -f 'floor .*/protocol$' || true) ;;
  floor) pid=$(pgrep -P "$storm" -f 'floor .*/floor$' || true) ;;
  generator) pid=$storm ;;
esac
[ -n "$pid" ] || { echo "profile: no $what process under the storm ($storm)" >&2; cat "$out/storm.txt" >&2; exit 1; }
perf record -F 999 -g -p "$pid" -o "$out/perf.data" 2> "$out/perf.log" &
perf=$!
sleep 10
# perf stops on its own if the storm ends first; its exit status is that of the signal.
kill -INT "$perf" 2>/dev/null || true
wait "$perf" || true
[ -s "$out/perf.data" ] || { echo "profile: perf recorded nothing:" >&2; cat "$out/perf.log" >&2; exit 1; }
wait "$storm" || true
trap - EXIT INT TERM

echo "== $what: share of CPU samples by kind of work ($(sed -n 's/.*Captured and wrote.*(\([0-9]*\) samples).*/\1/p' "$out/perf.log" | head -1) samples)"
perf report -i "$out/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
  awk '/^ *[0-9.]+%/ {
    p = $1; sub("%", "", p); dso = $2; $1 = ""; $2 = ""; s = $0; c = "other"
    if (s ~ /nistz256|p256|ecdsa/) c = "P-256 arithmetic (ECDSA sign and verify)"
    else if (s ~ /x25519|curve25519|fiat_|fe4_|[ _]fe_|[ _]ge_/) c = "X25519 (TLS key exchange)"
    else if (s ~ /ring_core|ring::|sha256|sha512|aes|gcm|chacha/) c = "other ring code (hashes, AEAD)"
    else if (dso ~ /kernel/) c = "kernel (TCP, fsync, scheduling)"
    else if (s ~ /sqlite|pager|wal|Btree|vdbe|pcache|memjrnl|rusqlite/) c = "SQLite"
    else if (s ~ /malloc|free|realloc|mem(move|cpy|set|cmp)|unlink_chunk|consolidate|_int_/) c = "allocator and memory copies"
    else if (s ~ /reqwest|hyper|tower|axum|http::|httparse/) c = "HTTP (hyper, axum, reqwest)"
    else if (s ~ /tokio|mio|futex|pthread|parking/) c = "async runtime and locks"
    else if (s ~ /rustls|webpki/) c = "rustls (not the arithmetic)"
    else if (s ~ /serde|json/) c = "JSON"
    else if (s ~ /yasna|rcgen|x509|der_parser|asn1|pem|base64|data_encoding/) c = "certificates: DER, PEM, base64"
    t[c] += p
  } END { for (k in t) printf "%6.1f %%  %s\n", t[k], k }' | sort -nr
echo "== storm figures"
grep -E 'concurrent|arriving' "$out/storm.txt" || true
rm -rf "$out"
