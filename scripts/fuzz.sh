#!/bin/sh
# Fuzzes what Muster reads from the network and from users: the roles-token parser and
# verifier, the CSR checks, the join request body and the installer's YAML config. Each target
# runs for a fixed budget (FUZZ_SECONDS, default 20) with cargo-fuzz on nightly, starting from
# the seeds in fuzz/corpus/ and the kept regression cases in fuzz/regressions/ (replayed
# first); new inputs it finds go to target/fuzz-corpus/. A crash stops the run with its input in
# fuzz/artifacts/<target>/: fix the bug, then keep the input in fuzz/regressions/<target>/.
# The targets are built once, then run as many at a time as there are CPUs (each is one
# process on one core).
set -eu
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-$(nproc)}
targets="token csr join_body installer_config"
mkdir -p target
cargo +nightly fuzz build -O >target/fuzz-build.log 2>&1 || { tail -n 40 target/fuzz-build.log; exit 1; }
bin=fuzz/target/x86_64-unknown-linux-gnu/release

# run TARGET: the fuzzer for $secs seconds, its log in target/fuzz-TARGET.log.
run() {
  t=$1
  mkdir -p "target/fuzz-corpus/$t" "fuzz/artifacts/$t"
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0" \
    "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$secs" \
    "target/fuzz-corpus/$t" "fuzz/corpus/$t" "fuzz/regressions/$t" >"target/fuzz-$t.log" 2>&1
}

failed=""
running=0
pids=""
for t in $targets; do
  echo "fuzz: $t for ${secs}s"
  run "$t" &
  pids="$pids $!:$t"
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    for p in $pids; do wait "${p%%:*}" || failed="$failed ${p#*:}"; done
    pids=""
    running=0
  fi
done
for p in $pids; do wait "${p%%:*}" || failed="$failed ${p#*:}"; done
for t in $targets; do
  grep -E '^Done [0-9]+ runs' "target/fuzz-$t.log" | sed "s/^/$t: /" || true
done
if [ -n "$failed" ]; then
  for t in $failed; do
    tail -n 40 "target/fuzz-$t.log"
    echo "fuzz: $t found a failure; its input is in fuzz/artifacts/$t/" >&2
  done
  exit 1
fi
