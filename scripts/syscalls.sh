#!/bin/sh
# What the kernel does for each enrollment: counts every system call, context switch and page
# fault of musterd and of the protocol floor during their 100-installer storms (perf's
# syscalls tracepoints, eight seconds each), divided by the connections each accepted (one per
# enrollment), side by side. It shows where musterd's kernel time per enrollment goes beyond
# the floor's: the store's writes, reads, locks and syncs. A figure to read beside
# docs/benchmarks.md, not a test.
#
#   sh scripts/syscalls.sh
#
# Needs perf (apt-get install linux-perf) and the tracepoints (root, or
# kernel.perf_event_paranoid <= -1 with tracefs readable).
set -eu
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "syscalls: perf is needed (apt-get install linux-perf)" >&2; exit 1; }
cargo build --quiet --release -p musterd -p muster-bench

out=$(mktemp -d /tmp/muster-syscalls.XXXXXX)
storm=""
trap '[ -z "$storm" ] || kill -- "-$storm" 2>/dev/null; rm -rf "$out"' EXIT
for what in muster protocol; do
  # In a process group of its own, so that stopping it stops the servers it started too.
  setsid target/release/muster-storm run --no-scale --no-instructions --rounds 8 --only "$what" \
    > "$out/$what-storm.txt" 2>&1 &
  storm=$!
  # The 100-concurrent storms start after a few seconds (musterd first runs a 1-concurrent row).
  sleep 6
  case $what in
    muster) pid=$(pgrep -P "$storm" -f 'musterd serve' || true) ;;
    protocol) pid=$(pgrep -P "$storm" -f 'floor .*/protocol$' || true) ;;
  esac
  [ -n "$pid" ] || { echo "syscalls: no $what process under the storm ($storm)" >&2; cat "$out/$what-storm.txt" >&2; exit 1; }
  perf stat -x, -e 'syscalls:sys_enter_*' -e context-switches -e page-faults -p "$pid" \
    -o "$out/$what.csv" -- sleep 8
  { kill -- "-$storm" && wait "$storm"; } 2>/dev/null || true
  # event -> count, for the events that happened
  awk -F, '$1 ~ /^[0-9]+$/ && $1 > 0 { e = $3; sub("syscalls:sys_enter_", "", e); print e, $1 }' \
    "$out/$what.csv" > "$out/$what.counts"
done

# Per enrollment: each count over the server's accept4 calls in the same window.
awk '
  FNR == 1 { file++ }
  { n[file, $1] = $2; seen[$1] = 1 }
  END {
    m = n[1, "accept4"]; p = n[2, "accept4"]
    if (m == 0 || p == 0) { print "syscalls: no connections accepted" > "/dev/stderr"; exit 1 }
    printf "per enrollment, 100 concurrent (%d musterd enrollments, %d protocol floor):\n", m, p
    printf "%-18s %10s %10s %10s\n", "event", "musterd", "floor", "extra"
    for (e in seen) if (n[1, e] / m >= 0.01 || n[2, e] / p >= 0.01) printf "%-18s %10.2f %10.2f %10.2f\n", e, n[1, e] / m, n[2, e] / p, n[1, e] / m - n[2, e] / p
  }' "$out/muster.counts" "$out/protocol.counts" | { read -r head; echo "$head"; read -r cols; echo "$cols"; sort -k4 -nr; }
