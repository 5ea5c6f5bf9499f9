#!/bin/sh
# Fuzzes what Muster reads from the network and from users: the roles-token parser and
# verifier, the CSR checks, the join request body and the installer's YAML config. Each target
# runs for a fixed budget (FUZZ_SECONDS, default 20) with cargo-fuzz on nightly, starting from
# the seeds in fuzz/corpus/ and the kept regression cases in fuzz/regressions/ (replayed
# first); new inputs it finds go to target/fuzz-corpus/. A crash stops the run with its input in
# fuzz/artifacts/<target>/: fix the bug, then keep the input in fuzz/regressions/<target>/.
set -eu
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
for t in token csr join_body installer_config; do
  mkdir -p "target/fuzz-corpus/$t"
  echo "fuzz: $t for ${secs}s"
  log="target/fuzz-$t.log"
  if ! cargo +nightly fuzz run -O "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" "fuzz/regressions/$t" \
    -- -max_total_time="$secs" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t found a failure; its input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "$log" || true
done
