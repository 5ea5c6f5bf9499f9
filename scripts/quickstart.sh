#!/bin/sh
# The main job, end to end, on one machine: build Muster, start a coordinator on the embedded
# store in a scratch folder, create an allocator roles token, enroll a host into a scratch root,
# and show the allocator list. Run as root (the installer gives files to the muster user).
#
#   sh scripts/quickstart.sh            # scratch folder under /tmp, port 12443
#   PORT=22443 DIR=/tmp/mq sh scripts/quickstart.sh
set -eu
cd "$(dirname "$0")/.."
PORT=${PORT:-12443}
DIR=${DIR:-$(mktemp -d /tmp/muster-quickstart.XXXXXX)}
command -v cargo >/dev/null || { echo "quickstart: cargo is needed (https://rustup.rs)" >&2; exit 1; }
command -v curl >/dev/null || { echo "quickstart: curl is needed (apt-get install curl)" >&2; exit 1; }

cargo build --quiet --bins
bin=target/debug

echo "== coordinator: $DIR/data, https://127.0.0.1:$PORT"
printf 'listen: 127.0.0.1:%s\nadvertise: ["127.0.0.1:%s"]\n' "$PORT" "$PORT" > "$DIR/server.yaml"
"$bin/musterd" init --data-dir "$DIR/data" --config "$DIR/server.yaml" --output json > /dev/null
"$bin/musterd" serve --data-dir "$DIR/data" --config "$DIR/server.yaml" 2> "$DIR/musterd.log" &
server=$!
trap 'kill "$server" 2>/dev/null' EXIT INT TERM
i=0
until curl -sf --cacert "$DIR/data/ca.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null; do
  i=$((i + 1)); [ "$i" -lt 100 ] || { cat "$DIR/musterd.log" >&2; exit 1; }; sleep 0.1
done

# The admin password lives in bootstrap-secrets.json (0600). Copy it into a curl config file
# (0600 too) without printing it, so that it never shows in a process list as `-u admin:…` would.
pass=$(sed -n 's/.*"admin_password": "\([^"]*\)".*/\1/p' "$DIR/data/bootstrap-secrets.json")
(umask 077 && printf 'user = "admin:%s"\n' "$pass" > "$DIR/admin.curl")
unset pass

echo "== roles token for allocators (POST .../enrollment-tokens, as in ECE)"
curl -sf --cacert "$DIR/data/ca.pem" -K "$DIR/admin.curl" -H 'Content-Type: application/json' \
  "https://127.0.0.1:$PORT/api/v1/platform/configuration/security/enrollment-tokens" \
  -d '{ "persistent": false, "roles": [ "allocator"] }' > "$DIR/token.json"
chmod 600 "$DIR/token.json"
sed -n 's/.*"token":"\([^"]*\)".*/\1/p' "$DIR/token.json" > "$DIR/token"
chmod 600 "$DIR/token"

echo "== a new host, enrolled into the scratch root $DIR/host"
mkdir -p "$DIR/host/etc"
echo 'muster:x:4242:4242:Muster:/var/lib/muster:/usr/sbin/nologin' > "$DIR/host/etc/passwd"
echo 'muster:x:4242:' > "$DIR/host/etc/group"
"$bin/muster" install --coordinator-host "127.0.0.1:$PORT" --roles-token-file "$DIR/token" \
  --roles allocator --root "$DIR/host"

echo "== files written"
find "$DIR/host/etc/muster" "$DIR/host/var/lib/muster" -exec stat -c '%u:%g %a %n' {} +

echo "== the allocator list"
curl -sf --cacert "$DIR/data/ca.pem" -K "$DIR/admin.curl" "https://127.0.0.1:$PORT/api/v1/platform/infrastructure/allocators"
echo
echo "== done; everything is under $DIR (the coordinator stops now)"
