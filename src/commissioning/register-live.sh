#!/bin/sh
# register-live.sh: commissions a live (already deployed) machine without touching its disks.
# It takes a one-shot registration secret (never the operator token), which an operator makes
# with `fleet machine registration NAME` (valid an hour, used once) and hands over in a file or
# the environment, never on a command line:
#   curl -fsS http://CONTROLLER:5248/scripts/register-live.sh \
#     | sh -s -- --url http://CONTROLLER:5248 --machine NAME --registration-file FILE
# (or FLEET_URL, FLEET_MACHINE, FLEET_REGISTRATION / FLEET_REGISTRATION_FILE in the environment).
# Downloads the controller's fleet-runner.sh and runs it with FLEET_ROLE=register-live: the
# runner trades the secret for the token of a register-live run, for which the controller lists
# only the non-destructive commissioning scripts; it never powers the host off or reboots it;
# it exits 0 when every script passed, else 1. Run it as root so the scripts can read the
# hardware.
set -eu

url=${FLEET_URL:-} machine=${FLEET_MACHINE:-} registration=${FLEET_REGISTRATION:-}
file=${FLEET_REGISTRATION_FILE:-}
usage() {
  echo "usage: register-live.sh --url URL --machine NAME --registration-file FILE" >&2
  echo "  (or FLEET_REGISTRATION in the environment; make one with: fleet machine registration NAME)" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --url) [ $# -ge 2 ] || usage; url=$2; shift 2 ;;
    --url=*) url=${1#*=}; shift ;;
    --machine) [ $# -ge 2 ] || usage; machine=$2; shift 2 ;;
    --machine=*) machine=${1#*=}; shift ;;
    --registration-file) [ $# -ge 2 ] || usage; file=$2; shift 2 ;;
    --registration-file=*) file=${1#*=}; shift ;;
    --token|--token=*)
      echo "register-live.sh: it takes a one-shot registration secret, not a token: make one with" >&2
      echo "  fleet machine registration NAME > FILE, then --registration-file FILE" >&2
      exit 2
      ;;
    -h|--help) usage ;;
    *) echo "register-live.sh: unknown argument $1" >&2; usage ;;
  esac
done
if [ -z "$registration" ] && [ -n "$file" ]; then
  [ -r "$file" ] || { echo "register-live.sh: cannot read $file" >&2; exit 2; }
  registration=$(tr -d ' \t\r\n' < "$file")
fi
if [ -z "$url" ] || [ -z "$machine" ] || [ -z "$registration" ]; then usage; fi
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
FLEET_URL=$url FLEET_MACHINE=$machine FLEET_REGISTRATION=$registration FLEET_ROLE=register-live \
  FLEET_AFTER_OVERRIDE=exit sh "$runner" </dev/null || status=$?
exit "$status"
