#!/bin/sh
# register-live.sh: commissions a live (already deployed) machine without touching its disks.
#   curl -fsS http://CONTROLLER:5248/scripts/register-live.sh \
#     | sh -s -- --url http://CONTROLLER:5248 --machine NAME --token OPERATOR_TOKEN
# (or FLEET_URL, FLEET_MACHINE, FLEET_TOKEN in the environment). Downloads the controller's
# fleet-runner.sh and runs it with FLEET_ROLE=register-live: the controller lists only the
# non-destructive commissioning scripts for a deployed machine, and the runner never powers the
# host off or reboots it; it exits 0 when every script passed, else 1. Run it as root so the
# scripts can read the hardware.
set -eu

url=${FLEET_URL:-} machine=${FLEET_MACHINE:-} token=${FLEET_TOKEN:-}
usage() { echo "usage: register-live.sh --url URL --machine NAME --token TOKEN" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --url) [ $# -ge 2 ] || usage; url=$2; shift 2 ;;
    --url=*) url=${1#*=}; shift ;;
    --machine) [ $# -ge 2 ] || usage; machine=$2; shift 2 ;;
    --machine=*) machine=${1#*=}; shift ;;
    --token) [ $# -ge 2 ] || usage; token=$2; shift 2 ;;
    --token=*) token=${1#*=}; shift ;;
    -h|--help) usage ;;
    *) echo "register-live.sh: unknown argument $1" >&2; usage ;;
  esac
done
if [ -z "$url" ] || [ -z "$machine" ] || [ -z "$token" ]; then usage; fi
url=${url%/}
[ "$(id -u)" = 0 ] || echo "register-live.sh: not root; some hardware facts will be missing" >&2

runner=$(mktemp "${TMPDIR:-/tmp}/fleet-runner.XXXXXX")
trap 'rm -f "$runner"' EXIT
if command -v curl >/dev/null 2>&1; then
  curl -fsS -m 60 -o "$runner" "$url/scripts/fleet-runner.sh"
else
  wget -q -O "$runner" "$url/scripts/fleet-runner.sh"
fi || { echo "register-live.sh: cannot download $url/scripts/fleet-runner.sh" >&2; exit 1; }

status=0
FLEET_URL=$url FLEET_MACHINE=$machine FLEET_TOKEN=$token FLEET_ROLE=register-live \
  FLEET_AFTER_OVERRIDE=exit sh "$runner" </dev/null || status=$?
exit "$status"
