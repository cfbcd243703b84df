#!/usr/bin/env bash
# fleet's quick start: builds fleet, validates the example fleet, starts a controller on an
# embedded SQLite file, adds machines and walks them through the life-cycle with the CLI.
# The controller then keeps running so you can talk to it; Ctrl-C stops it.
#   QUICKSTART_EXIT=1 bash examples/quickstart.sh   stops after the walk-through instead.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

cargo build --quiet --bin fleet
fleet=${CARGO_TARGET_DIR:-$PWD/target}/debug/fleet
state=${QUICKSTART_STATE:-$(mktemp -d -t fleet-quickstart.XXXXXX)}
export FLEET_STATE_DIR=$state

step "fleet validate fleet.toml.example"
"$fleet" validate fleet.toml.example

step "fleet serve -f fleet.toml.example --listen 127.0.0.1:0 --boot-listen 127.0.0.1:0 &   (state in $state)"
"$fleet" serve -f fleet.toml.example --listen 127.0.0.1:0 --boot-listen 127.0.0.1:0 &
controller=$!
trap 'kill $controller 2>/dev/null; wait $controller 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$state/api-url" ] && break; sleep 0.1; done
[ -s "$state/api-url" ] || { echo "the controller did not start" >&2; exit 1; }

run() { step "fleet $*"; "$fleet" "$@" || true; }
run machine add web-1 --mac 52:54:00:00:01:01 --power-type manual --tag web
run machine add web-2 --mac 52:54:00:00:01:02 --power-type manual --no-commission
run machine add db-1 --deployed --os debian-12 --power-type manual
# The operator API is HTTPS (api-url; the CLI pins the certificate named in api-fingerprint);
# what machines fetch is plain HTTP on the boot listener (boot-url).
url=$(cat "$state/boot-url")
# register-live takes a one-shot registration secret (valid an hour), never the operator token,
# and reads it from a file or the environment, never from its command line.
step "fleet machine registration db-1 > $state/db-1.registration"
"$fleet" machine registration db-1 >"$state/db-1.registration"
step "curl $url/scripts/register-live.sh | sh -s -- --url $url --machine db-1 --registration-file $state/db-1.registration   (db-1 is this host)"
curl -fsS "$url/scripts/register-live.sh" |
  sh -s -- --url "$url" --machine db-1 --registration-file "$state/db-1.registration" 2>&1 | tail -n 4 || true
step "curl -X POST $url/metadata/v1/enlist   (what a machine that netboots with an unknown MAC sends)"
curl -fsS -X POST "$url/metadata/v1/enlist" -H 'Content-Type: application/json' \
  -d '{"architecture": "amd64", "boot_mac": "52:54:00:00:09:01", "macs": ["52:54:00:00:09:01"]}' |
  sed 's/^token .*/token (the machine'"'"'s own, for its later calls)/'
run machine deploy web-2            # refused: a new machine must be commissioned first
run machine abort web-1
run machine lock db-1
run machine release db-1
run machine unlock db-1
run machine mark-broken web-2 --comment "fan noise"
run machines
run machine show db-1              # its hardware, as register-live.sh found it
run events --limit 12
run plan -f fleet.toml.example      # what `fleet apply` would do to reach the example fleet

if [ "${QUICKSTART_EXIT:-0}" = 1 ]; then exit 0; fi
printf '\nThe controller is running: API at %s (certificate %s), boot HTTP at %s (state in %s).\n' \
  "$(cat "$state/api-url")" "$(cat "$state/api-fingerprint")" "$(cat "$state/boot-url")" "$state"
printf 'In another terminal: FLEET_STATE_DIR=%s %s machines\nCtrl-C stops it.\n' "$state" "$fleet"
wait $controller
