#!/bin/sh
# The enrollment-storm benchmark, as docs/benchmarks.md reports it: builds musterd and the
# benchmark in release mode and the static installer, makes sure the peers are there (cfssl from
# Debian's golang-cfssl; step-ca built from Debian's Go sources by bench/stepca/build.sh) and
# protoc, runs every storm and rewrites docs/benchmarks.md. Takes a few minutes; pass
# --no-scale to skip the 1,000-installer storms and the 100,000-host registry, --rounds N for
# more (or fewer) turns of the 100-concurrent comparison (15 by default; ratios are medians of
# the per-round ratios), --only muster|protocol|floor|cfssl|step-ca to storm one server (for
# profiling; several, comma-separated, with --against PATH for an A/B run of two builds of
# musterd alone: --only muster,muster-b), --no-pin to leave the servers and the generator on
# any core, --no-instructions to skip counting instructions under callgrind (valgrind; a
# minute or two), --fleet-rounds N to repeat the open-loop storms N times (for an A/B run;
# the targets read the first round).
set -eu
cd "$(dirname "$0")/.."
# cfssl is the peer; musterd's etcd client compiles etcd's protobuf files when it builds.
need=""
command -v cfssl >/dev/null 2>&1 || need="$need golang-cfssl"
command -v protoc >/dev/null 2>&1 || need="$need protobuf-compiler"
[ -e /usr/include/google/protobuf/descriptor.proto ] || need="$need libprotobuf-dev"
command -v valgrind >/dev/null 2>&1 || need="$need valgrind"
if [ -n "$need" ]; then
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names, split on purpose
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi
sh bench/stepca/build.sh
cargo build --release -p musterd -p muster-bench
sh scripts/build-static.sh
target/release/muster-storm run --report docs/benchmarks.md \
  --installer target/x86_64-unknown-linux-gnu/release/muster "$@"
# The storm on etcd (a member and three; one coordinator and two) beside SQLite.
command -v etcd >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server etcd-client
}
target/release/muster-storm shared --report docs/benchmarks-shared.md
