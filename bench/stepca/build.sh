#!/bin/sh
# Builds smallstep's step-ca (0.19, from Debian's Go sources, offline) for the
# enrollment benchmark: installs golang-go and
# golang-github-smallstep-certificates-dev if missing, then compiles
# bench/stepca/main.go to target/stepca/step-ca. Skips the build when that
# binary is newer than main.go.
set -eu

cd "$(dirname "$0")/../.."

src=bench/stepca/main.go
out=target/stepca/step-ca

need=""
command -v go >/dev/null 2>&1 || need="golang-go"
[ -d /usr/share/gocode/src/github.com/smallstep/certificates/commands ] ||
	need="$need golang-github-smallstep-certificates-dev"
if [ -n "$need" ]; then
	apt-get update -qq
	# shellcheck disable=SC2086 # $need is a list of package names
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi

if [ -x "$out" ] && [ -n "$(find "$out" -newer "$src")" ]; then
	echo "step-ca is up to date: $out"
	exit 0
fi

mkdir -p target/stepca/gopath
echo "building $out (takes a minute or so)"
# Pure Go (CGO_ENABLED=0): no C compiler needed; badger's zstd is then
# unavailable, but its default compression is none.
GO111MODULE=off GOPROXY=off GOFLAGS='' CGO_ENABLED=0 \
	GOPATH="$PWD/target/stepca/gopath:/usr/share/gocode" \
	go build -trimpath -o "$out" "$src"
echo "built $out"
