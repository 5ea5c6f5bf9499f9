#!/bin/sh
# Makes (once) the Debian root the OS-package and cloud-init tests install into:
# debootstrap --variant=minbase of the host's Debian release plus what a cloud image has
# (systemd, adduser, cloud-init, curl; python3-cffi-backend by name, as debootstrap does not
# resolve the virtual package cloud-init needs through python3-cryptography). Cached: a second run with the folder present does nothing.
#   usage: scripts/debian-root.sh DIR
set -eu
dir=${1:?usage: debian-root.sh DIR}
[ -e "$dir/.muster-root-ready" ] && exit 0
# shellcheck source=/dev/null
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mirror=${MUSTER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# A debootstrap killed half-way leaves its proc and sys mounted in the unfinished root:
# unmount them, or the rm below fails and so does every run after.
for m in proc sys; do
    if grep -q " $(realpath -m "$dir.tmp/$m") " /proc/mounts; then umount -l "$dir.tmp/$m"; fi
done
rm -rf "$dir.tmp"
mkdir -p "$(dirname "$dir")"
debootstrap --variant=minbase \
    --include=systemd,adduser,cloud-init,python3-cffi-backend,curl,ca-certificates \
    "$suite" "$dir.tmp" "$mirror" >"$dir.log" 2>&1 || {
    tail -20 "$dir.log" >&2
    echo "debootstrap failed; the whole log is in $dir.log" >&2
    exit 1
}
# Nothing in the root may start services while packages are installed into it.
printf '#!/bin/sh\nexit 101\n' >"$dir.tmp/usr/sbin/policy-rc.d"
chmod 0755 "$dir.tmp/usr/sbin/policy-rc.d"
rm -rf "$dir.tmp/var/cache/apt/archives/"*.deb
touch "$dir.tmp/.muster-root-ready"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
