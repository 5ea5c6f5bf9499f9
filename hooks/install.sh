#!/bin/sh
# Muster one-line installer.
#
#   curl -fsSk --pinnedpubkey 'sha256//…' https://COORDINATOR:12443/install.sh \
#       | sudo sh -s -- --roles-token 'TOKEN' [more `muster install` options]
#
# Fetches the static `muster` binary from the coordinator over TLS pinned to the coordinator's
# key (curl) or its CA (wget), checks the binary's SHA-256, installs it as
# ROOT/usr/local/bin/muster and runs `muster install` with the options given here. On a host run
# by systemd it then installs and starts muster-agent.service.
#
# musterd fills in the three values below when it serves this file at GET /install.sh. Run from a
# checkout or a package instead, set MUSTER_PIN (curl's sha256//… form) or MUSTER_CA_FILE and pass
# --coordinator-host.
#
# The token never goes into a URL, an argument list of this script's making, the output or a log:
# it is handed to `muster` in its environment (MUSTER_ROLES_TOKEN). It may come as
# --roles-token, --roles-token-file (passed on) or MUSTER_ROLES_TOKEN.
#
# Exit codes are muster's (docs/installer.md); this script adds: 1 a prerequisite is missing,
# 2 usage, 5 the coordinator could not be reached, 6 the download did not match its checksum.
set -eu

served_coordinator='@COORDINATOR@'
served_pin='@PIN@'
served_ca='@CA_PEM@'

say() { printf 'muster-install: %s\n' "$*" >&2; }
die() {
    code=$1
    shift
    say "error: $*"
    exit "$code"
}

# Values musterd did not fill in read as empty.
case $served_coordinator in @*@) served_coordinator= ;; esac
case $served_pin in @*@) served_pin= ;; esac
case $served_ca in @*@) served_ca= ;; esac

coordinator=${MUSTER_COORDINATOR_HOST:-$served_coordinator}
pin=${MUSTER_PIN:-$served_pin}
root=
owner_given=0
have_coordinator=0

# Take the token out of the arguments; keep everything else, in order, for `muster install`.
want=
for arg do
    shift
    case $want in
    token)
        MUSTER_ROLES_TOKEN=$arg
        export MUSTER_ROLES_TOKEN
        want=
        continue
        ;;
    coordinator) coordinator=$arg have_coordinator=1 ;;
    root) root=$arg ;;
    esac
    if [ -n "$want" ]; then
        want=
        set -- "$@" "$arg"
        continue
    fi
    case $arg in
    --roles-token)
        want=token
        continue
        ;;
    --roles-token=*)
        MUSTER_ROLES_TOKEN=${arg#--roles-token=}
        export MUSTER_ROLES_TOKEN
        continue
        ;;
    --coordinator-host) want=coordinator ;;
    --coordinator-host=*) coordinator=${arg#*=} have_coordinator=1 ;;
    --root) want=root ;;
    --root=*) root=${arg#*=} ;;
    --owner | --owner=*) owner_given=1 ;;
    -h | --help)
        sed -n '2,21p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' ||
            say "usage: install.sh --roles-token TOKEN [muster install options]"
        exit 0
        ;;
    esac
    set -- "$@" "$arg"
done
[ -z "$want" ] || die 2 "--$want needs a value"
[ -n "$coordinator" ] || die 2 "no coordinator: pass --coordinator-host HOST:PORT"
case $coordinator in
*[!A-Za-z0-9.:\[\]-]*) die 2 "--coordinator-host must be HOST or HOST:PORT" ;;
esac
[ "$have_coordinator" = 1 ] || set -- --coordinator-host "$coordinator" "$@"

# Prerequisites, each named when missing.
[ "$(id -u)" = 0 ] || die 1 "run as root: … | sudo sh -s -- --roles-token …"
arch=$(uname -m)
case $arch in
x86_64 | amd64) ;;
*) die 1 "this coordinator serves an x86_64 installer and this host is $arch" ;;
esac
if command -v curl >/dev/null 2>&1; then
    fetcher=curl
elif command -v wget >/dev/null 2>&1; then
    fetcher=wget
else
    die 1 "neither curl nor wget is installed; install one (apt-get install curl, dnf install curl)"
fi
if command -v sha256sum >/dev/null 2>&1; then
    sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v openssl >/dev/null 2>&1; then
    sha256() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }
else
    die 1 "neither sha256sum nor openssl is installed; one is needed to check the download"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/muster-install.XXXXXX") || die 7 "cannot make a temporary folder"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

ca_file=${MUSTER_CA_FILE:-}
if [ -z "$ca_file" ] && [ -n "$served_ca" ]; then
    ca_file=$tmp/ca.pem
    printf '%s\n' "$served_ca" >"$ca_file"
fi

# fetch URL FILE: over TLS pinned to the coordinator's key (curl) or its CA (curl, wget).
fetch() {
    if [ "$fetcher" = curl ]; then
        if [ -n "$pin" ]; then
            set -- -k --pinnedpubkey "$pin" -o "$2" "$1"
        elif [ -n "$ca_file" ]; then
            set -- --cacert "$ca_file" -o "$2" "$1"
        else
            die 2 "no pin for the coordinator: set MUSTER_PIN or MUSTER_CA_FILE"
        fi
        curl -fsS --proto '=https' --retry 5 --retry-connrefused --retry-delay 2 \
            --connect-timeout 10 "$@"
    else
        [ -n "$ca_file" ] || die 1 "wget cannot pin a public key: install curl, or set MUSTER_CA_FILE"
        wget -q --https-only --tries=5 --waitretry=2 --timeout=10 \
            --ca-certificate="$ca_file" -O "$2" "$1"
    fi
}

base=https://$coordinator/download/muster-x86_64
say "fetching the installer from $coordinator"
fetch "$base" "$tmp/muster" || die 5 "could not fetch $base (is the coordinator up, and is the pin right?)"
fetch "$base.sha256" "$tmp/muster.sha256" || die 5 "could not fetch $base.sha256"
expected=$(cut -d' ' -f1 <"$tmp/muster.sha256")
actual=$(sha256 "$tmp/muster")
if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then
    die 6 "the installer's SHA-256 is $actual but the coordinator says $expected; nothing installed"
fi

bindir=${root%/}/usr/local/bin
dest=$bindir/muster
mkdir -p "$bindir" || die 7 "cannot make $bindir"
[ ! -L "$dest" ] || die 7 "refusing to write $dest: it is a symbolic link"
{ cp "$tmp/muster" "$dest.new" && chmod 0755 "$dest.new" && mv -f "$dest.new" "$dest"; } ||
    die 7 "cannot install $dest"
say "installed $dest ($actual)"

# Node keys belong to the `muster` system user, as the OS packages make it.
if [ "$owner_given" = 0 ] && ! grep -q '^muster:' "${root%/}/etc/passwd" 2>/dev/null; then
    command -v useradd >/dev/null 2>&1 ||
        die 1 "there is no muster user and no useradd to make one; make it, or pass --owner"
    useradd ${root:+--root "$root"} --system --user-group --home-dir /var/lib/muster \
        --no-create-home --shell /usr/sbin/nologin muster ||
        die 7 "could not make the muster system user"
    say "made the muster system user"
fi

status=0
"$dest" install "$@" || status=$?
[ "$status" = 0 ] || exit "$status"

# On a systemd host enrolled in place (no --root), keep it connected.
if [ -z "${root%/}" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 &&
    [ ! -e /lib/systemd/system/muster-agent.service ]; then
    cat >/etc/systemd/system/muster-agent.service <<'UNIT'
[Unit]
Description=Muster agent: heartbeats and certificate renewal
After=network-online.target
Wants=network-online.target
ConditionPathExists=/var/lib/muster/enrollment.json

[Service]
ExecStart=/usr/local/bin/muster agent
Restart=always
RestartSec=10s

[Install]
WantedBy=multi-user.target
UNIT
    { systemctl daemon-reload && systemctl enable --now muster-agent.service; } ||
        say "warning: could not start muster-agent.service; run: systemctl enable --now muster-agent"
fi
exit 0
