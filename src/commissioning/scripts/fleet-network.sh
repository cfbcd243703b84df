#!/bin/sh
# fleet built-in test fleet-network: the controller answers over the network. Fetches
# $FLEET_URL/scripts/fleet-runner.sh from the boot listener, as every ephemeral boot does (wget,
# else curl; at most 20 s), and reports the interface and address that reach the controller.
# (The operator API, /api/v1, is on another listener, over TLS: machines never reach it.)
# Writes {"url", "answered", "interface", "address", "answer"} to $FLEET_RESULTS.
url=${FLEET_URL:-}
if [ -z "$url" ]; then
  echo "fleet-network: FLEET_URL is not set" >&2
  exit 2
fi
work=$(mktemp -d) || exit 2
trap 'rm -rf "$work"' EXIT

# json_string TEXT prints TEXT as a JSON string (control characters as spaces).
json_string() {
  printf '"%s"' "$(printf '%s' "$1" | tr '\001-\037\177' ' ' | sed 's/[\\"]/\\&/g')"
}

# fetch URL FILE: busybox wget's own -T crashes in Debian's busybox 1.35, hence `timeout`.
fetch() {
  if command -v wget >/dev/null 2>&1; then
    timeout 20 wget -q -O "$2" "$1" 2>"$work/error"
  elif command -v curl >/dev/null 2>&1; then
    curl -fsS -m 20 -o "$2" "$1" 2>"$work/error"
  else
    echo "neither wget nor curl is installed" >"$work/error"
    return 1
  fi
}

# The host of the URL (no scheme, credentials, port or path; IPv6 without brackets).
host=${url#*://}
host=${host%%/*}
host=${host##*@}
case $host in
  \[*) host=${host#\[}; host=${host%%\]*} ;;
  *) host=${host%:*} ;;
esac

# The route to the controller names the interface and the source address it is reached from.
route=$(ip route get "$host" 2>/dev/null | head -n 1)
interface=$(printf '%s\n' "$route" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
address=$(printf '%s\n' "$route" | sed -n 's/.* src \([^ ]*\).*/\1/p')
echo "controller $host is reached through ${interface:-an unknown interface} from ${address:-an unknown address}"

answered=false
answer=
if fetch "$url/scripts/fleet-runner.sh" "$work/answer"; then
  answered=true
  answer="$(wc -c <"$work/answer" | tr -d ' ') bytes of fleet-runner.sh"
  echo "controller answered: $answer"
else
  echo "controller at $url does NOT answer: $(tail -n 1 "$work/error")"
fi

if [ -n "$FLEET_RESULTS" ]; then
  printf '{"url": %s, "answered": %s, "interface": %s, "address": %s, "answer": %s}\n' \
    "$(json_string "$url")" "$answered" "$(json_string "$interface")" \
    "$(json_string "$address")" "$(json_string "$answer")" >"$FLEET_RESULTS"
fi
[ "$answered" = true ]
