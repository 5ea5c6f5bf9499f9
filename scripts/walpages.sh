#!/bin/sh
# Which pages musterd's commits write during a 100-installer storm: storms musterd alone, copies
# its store (the database and its write-ahead log) a moment into the storms, stops them and
# prints frames per commit and, per commit, the tables and indexes they went to
# (scripts/walpages.py). A figure to read beside docs/benchmarks.md, not a test.
#
#   sh scripts/walpages.sh
#
# Needs python3 (Debian's, whose SQLite has dbstat).
set -eu
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "walpages: python3 is needed (apt-get install python3)" >&2; exit 1; }
cargo build --quiet --release -p musterd -p muster-bench

out=$(mktemp -d /tmp/muster-walpages.XXXXXX)
storm=""
trap '[ -z "$storm" ] || kill -- "-$storm" 2>/dev/null; rm -rf "$out"' EXIT
# In a process group of its own, so that stopping it stops the servers it started too.
setsid target/release/muster-storm run --no-scale --no-instructions --rounds 8 --only muster \
  > "$out/storm.txt" 2>&1 &
storm=$!
# The 100-concurrent storms start once the 1-concurrent row is printed.
tries=0
until grep -q ' 1 concurrent' "$out/storm.txt"; do
  tries=$((tries + 1))
  [ "$tries" -lt 600 ] || { echo "walpages: the storm did not start" >&2; cat "$out/storm.txt" >&2; exit 1; }
  sleep 0.1
done
sleep 1.5
pid=$(pgrep -P "$storm" -f 'musterd serve' || true)
[ -n "$pid" ] || { echo "walpages: no musterd under the storm ($storm)" >&2; exit 1; }
db=$(readlink /proc/"$pid"/fd/* 2>/dev/null | grep '/muster\.db$' | head -n 1)
[ -n "$db" ] || { echo "walpages: musterd ($pid) has no muster.db open" >&2; exit 1; }
# The database first, then its log: the log may only be newer than the database it is read on.
cp "$db" "$out/muster.db"
cp "$db-wal" "$out/muster.db-wal"
kill -- "-$storm" 2>/dev/null || true
wait "$storm" 2>/dev/null || true
storm=""
python3 scripts/walpages.py "$out/muster.db"
