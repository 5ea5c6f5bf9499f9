#!/bin/sh
# The whole test suite, from a bare Debian machine with a Rust toolchain: installs what the
# tests need, checks formatting and lints, builds the real binaries and packages, runs every
# test. Run as root: the tests mount overlays, make network namespaces and install packages
# into a Debian root of their own (made once by debootstrap, cached in target/debian-root).
set -eu
cd "$(dirname "$0")/.."

# How long each step took, printed as it ends, so a slow step shows in CI's log.
t0=$(date +%s)
t_step=$t0
took() {
  now=$(date +%s)
  echo "step: $1 took $((now - t_step)) s (total $((now - t0)) s)"
  t_step=$now
}

# command:package for each outside tool a test runs.
need=""
for tool in curl:curl wget:wget openssl:openssl stat:coreutils mount:mount file:file \
  faketime:faketime setpriv:util-linux ip:iproute2 shellcheck:shellcheck lintian:lintian \
  rpm:rpm rpmlint:rpmlint cloud-init:cloud-init debootstrap:debootstrap \
  dpkg-scanpackages:dpkg-dev systemd-analyze:systemd etcd:etcd-server etcdctl:etcd-client \
  cfssl:golang-cfssl sudo:sudo keytool:openjdk-17-jre-headless python3:python3 man:man-db \
  chromium:chromium node:nodejs npm:npm; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need="$need ${tool#*:}"
done
if [ -n "$need" ]; then
  echo "installing:$need"
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names, split on purpose
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi
# Python packages the tests drive: cryptography (the strict certificate parser the certificate
# test loads ours with), elasticsearch (Elastic's own client, against the enroll-node answer),
# schemathesis (the API fuzzer, against docs/openapi.yaml) and prometheus_client (Prometheus'
# own OpenMetrics parser, against /metrics).
pip_need=""
for mod in cryptography elasticsearch schemathesis prometheus_client; do
  python3 -c "import $mod" 2>/dev/null || pip_need="$pip_need $mod"
done
if [ -n "$pip_need" ]; then
  echo "installing from PyPI:$pip_need"
  # shellcheck disable=SC2086 # a list of package names, split on purpose
  python3 -m pip install --quiet $pip_need ||
    { apt-get install -y -qq --no-install-recommends python3-pip &&
      python3 -m pip install --quiet --break-system-packages $pip_need; }
fi
# Playwright's driver for the console test (tests/console, Debian's chromium as its browser; it
# downloads no browser of its own).
[ -d tests/console/node_modules/playwright-core ] ||
  (cd tests/console && npm ci --no-audit --no-fund --loglevel=error)
for sub in cargo-deb cargo-generate-rpm cargo-fuzz cargo-nextest; do
  command -v "$sub" >/dev/null 2>&1 || cargo install --locked --quiet "$sub"
done
# The fuzz targets build with nightly (cargo-fuzz needs its sanitizer flags).
rustup run nightly rustc --version >/dev/null 2>&1 ||
  rustup toolchain install nightly --profile minimal
took "installing tools"

# The Debian root the package and cloud-init tests install into (made once, cached): debootstrap
# waits on the network and the disk, so it runs beside the builds, which wait on the CPU.
mkdir -p target
sh scripts/debian-root.sh target/debian-root > target/debian-root.out 2>&1 &
debian_root=$!

# README's first command, as a new user runs it: the build needs no protoc (vendor/README.md).
# PROTOC names no file, so a build script that reached for protoc would fail here.
if command -v protoc >/dev/null 2>&1; then echo "note: protoc is on PATH; PROTOC hides it"; fi
step_start=$(date +%s)
PROTOC=/nonexistent/protoc PORT=12443 sh scripts/quickstart.sh > target/quickstart.log 2>&1 ||
  { cat target/quickstart.log; exit 1; }
grep -q '"allocator_id"' target/quickstart.log || { cat target/quickstart.log; exit 1; }
echo "quickstart: built and enrolled a host in $(($(date +%s) - step_start)) s"
took "quickstart"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
took "fmt and clippy"
# The end-to-end tests run these binaries (debug builds: the crash tests' failpoints are in
# them); the quickstart built most of them already.
cargo build --workspace --bins
took "debug build"
# The shipped binaries (static, release) and the deb and rpm made from them.
sh packaging/build
took "static binaries and packages"
wait "$debian_root" || { cat target/debian-root.out; exit 1; }
took "Debian root (made while the builds ran)"
# Every test in a process of its own, the slowest first (.config/nextest.toml). (Muster has no
# doc tests, which nextest would not run.)
cargo nextest run --workspace --no-fail-fast
took "tests"
# The storm benchmark, small and from the debug build: it must run and enroll every host, on
# every server (step-ca built from Debian's Go sources first); its figures mean nothing here
# (scripts/bench.sh makes the real ones, in release mode).
sh bench/stepca/build.sh
target/debug/muster-storm run --quick
took "storm"
# Each fuzz target for a fixed short budget, after replaying the kept regression cases.
sh scripts/fuzz.sh
took "fuzzing"
