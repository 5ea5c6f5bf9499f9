#!/bin/sh
# Muster one-line installer.
#
#   curl -fsSk --pinnedpubkey 'sha256//…' https://COORDINATOR:12443/install.sh \
#       | MUSTER_ROLES_TOKEN='TOKEN' sudo --preserve-env=MUSTER_ROLES_TOKEN sh [-s -- options]
#
# (what musterd prints: the token in no process's argument list), or ECE's form
#   … | sudo sh -s -- --roles-token 'TOKEN' [more `muster install` options]
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
# 2 usage, 5 the coordinator could not be reached, 6 the coordinator's key or CA is not the
# pinned one, or the download did not match its checksum (do not retry blindly).
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
    --roles-token)
        MUSTER_ROLES_TOKEN=$arg
        export MUSTER_ROLES_TOKEN
        want=
        continue
        ;;
    --coordinator-host) coordinator=$arg have_coordinator=1 ;;
    --root) root=$arg ;;
    esac
    if [ -n "$want" ]; then
        want=
        set -- "$@" "$arg"
        continue
    fi
    case $arg in
    --roles-token)
        want=$arg
        continue
        ;;
    --roles-token=*)
        MUSTER_ROLES_TOKEN=${arg#--roles-token=}
        export MUSTER_ROLES_TOKEN
        continue
        ;;
    --coordinator-host) want=$arg ;;
    --coordinator-host=*) coordinator=${arg#*=} have_coordinator=1 ;;
    --root) want=$arg ;;
    --root=*) root=${arg#*=} ;;
    --owner | --owner=*) owner_given=1 ;;
    -h | --help)
        # Read from a pipe (`curl … | sh`), this script has no file to print its header from.
        if [ -f "$0" ] && grep -q '^# Muster one-line installer' "$0"; then
            sed -n '/^set -eu$/q; 2,$p' "$0" | sed 's/^# \{0,1\}//'
        else
            say "usage: … | sudo sh -s -- --roles-token TOKEN [muster install options]; see docs/install.md"
        fi
        exit 0
        ;;
    esac
    set -- "$@" "$arg"
done
[ -z "$want" ] || die 2 "$want needs a value"
[ -n "$coordinator" ] || die 2 "no coordinator: pass --coordinator-host HOST:PORT"
case $coordinator in
*[!A-Za-z0-9.:\[\]-]*) die 2 "--coordinator-host must be HOST or HOST:PORT" ;;
esac
[ "$have_coordinator" = 1 ] || set -- --coordinator-host "$coordinator" "$@"
# The address in URLs: muster's port when none is given, a bare IPv6 address in brackets.
case $coordinator in
\[*\]:*) url_host=$coordinator ;;
\[*\]) url_host=$coordinator:12443 ;;
*:*:*) url_host=[$coordinator]:12443 ;;
*:*) url_host=$coordinator ;;
*) url_host=$coordinator:12443 ;;
esac

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

# fetched URL FILE: fetch, or exit as muster would: 6 when the coordinator's key or certificate
# is not the pinned one (someone may be in the middle), 5 when it could not be reached.
fetched() {
    st=0
    fetch "$1" "$2" || st=$?
    case $fetcher:$st in
    *:0) ;;
    curl:60 | curl:90 | wget:5)
        die 6 "the coordinator at $url_host does not hold the pinned key or CA; do not retry blindly: check the pin" ;;
    *) die 5 "could not fetch $1 (is the coordinator up?)" ;;
    esac
}

base=https://$url_host/download/muster-x86_64
say "fetching the installer from $url_host"
fetched "$base" "$tmp/muster"
fetched "$base.sha256" "$tmp/muster.sha256"
expected=$(cut -d' ' -f1 <"$tmp/muster.sha256")
actual=$(sha256 "$tmp/muster")
if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then
    die 6 "the installer's SHA-256 is $actual but the coordinator says $expected; nothing installed"
fi

bindir=${root%/}/usr/local/bin
dest=$bindir/muster
mkdir -p "$bindir" || die 7 "cannot make $bindir"
[ ! -L "$dest" ] || die 7 "refusing to write $dest: it is a symbolic link"
# A fresh temporary beside it (never one left behind, which could be a symbolic link), synced,
# then renamed over: $dest is the old binary or the new one, never half of one.
{ rm -f "$dest.new" && cp "$tmp/muster" "$dest.new" && chmod 0755 "$dest.new" &&
    { sync "$dest.new" 2>/dev/null || sync; } && mv -f "$dest.new" "$dest"; } ||
    die 7 "cannot install $dest"
say "installed $dest ($actual)"
# What this script made, for `muster leave --purge` to undo: one word a line (binary, user,
# unit), in a file only root may write.
made() {
    record=${root%/}/usr/local/lib/muster/one-liner
    if ! { mkdir -p "${record%/*}" && touch "$record" && chmod 0644 "$record"; }; then
        say "warning: could not record $record; muster leave --purge will not remove the $1"
    elif ! grep -qx "$1" "$record"; then
        printf '%s\n' "$1" >>"$record"
    fi
}
made binary

# Node keys belong to the `muster` system user, as the OS packages make it.
if [ "$owner_given" = 0 ] && ! grep -q '^muster:' "${root%/}/etc/passwd" 2>/dev/null; then
    command -v useradd >/dev/null 2>&1 ||
        die 1 "there is no muster user and no useradd to make one; make it, or pass --owner"
    useradd ${root:+--root "$root"} --system --user-group --home-dir /var/lib/muster \
        --no-create-home --shell /usr/sbin/nologin muster ||
        die 7 "could not make the muster system user"
    say "made the muster system user"
    made user
fi

status=0
"$dest" install "$@" || status=$?
# The token has done its work; nothing started from here on gets it in its environment.
unset MUSTER_ROLES_TOKEN
[ "$status" = 0 ] || exit "$status"

# On a host enrolled in place (no --root), keep it connected: under systemd with a unit of its
# own (with the package's unit, `muster install` has started it already); without systemd, say
# so, and what to run, rather than go quiet until its certificates lapse. (Enrolled into
# another root, whoever boots that root starts the agent.)
unit=/etc/systemd/system/muster-agent.service
if [ -n "${root%/}" ]; then
    :
elif [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null 2>&1; then
    say "warning: no systemd runs here, so no agent was installed: nothing sends this host's heartbeats or renews its certificates, which lapse when they expire (see: $dest status)"
    say "run the agent under this host's service manager: '$dest agent' (docs/installer.md has an OpenRC service and a cron line), or now: nohup $dest agent >>/var/log/muster-agent.log 2>&1 &"
elif [ ! -e /lib/systemd/system/muster-agent.service ] &&
    [ ! -e /usr/lib/systemd/system/muster-agent.service ]; then
    if [ -L "$unit" ]; then
        say "warning: $unit is a symbolic link (masked?); left as it is, and the agent not started"
        exit 0
    fi
    # Written beside it and renamed over, so a unit is never half-written.
    if ! { rm -f "$unit.new" && cat >"$unit.new" <<'UNIT' && mv -f "$unit.new" "$unit" && systemctl daemon-reload && systemctl enable --now muster-agent.service; }; then
[Unit]
Description=Muster agent: heartbeats and certificate renewal
After=network-online.target
Wants=network-online.target
ConditionPathExists=/var/lib/muster/enrollment.json

[Service]
ExecStart=/usr/local/bin/muster agent
Restart=always
RestartSec=10s
RestartPreventExitStatus=9

[Install]
WantedBy=multi-user.target
UNIT
        say "warning: could not start muster-agent.service; run: systemctl enable --now muster-agent"
    fi
    [ ! -e "$unit" ] || made unit
fi
exit 0
