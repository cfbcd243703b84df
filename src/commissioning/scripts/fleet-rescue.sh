#!/bin/sh
# fleet built-in rescue script, run by a rescue run in the ephemeral environment (served with
# `rescue_machine=NAME` and `rescue_keys='KEY...'`, one key a line, after this first line: the
# machine's `ssh_keys` of the fleet file, its profiles' included). It gives the operator SSH
# access to the machine as it is, and never touches the disks:
# - no keys: nothing to authorize, so no SSH server; the result says so and the run goes on
#   (the machine still reaches rescue_mode, its console is still there);
# - else: writes /root/.ssh/authorized_keys, makes an ed25519 host key (dropbearkey), starts
#   dropbear in the background on port 22 (keys only, no passwords) and waits until it listens.
# Writes {"ssh", "user", "port", "addresses", "host_key", "host_key_type", "authorized_keys",
# "reason"} to $FLEET_RESULTS: the controller shows `ssh root@ADDRESS (host key SHA256:...)`.
# Only inside the ephemeral environment (/etc/fleet/ephemeral), which lives in RAM: it changes
# /etc/passwd, /root and /etc/dropbear there. FLEET_RESCUE_ROOT (tests) puts those under another
# directory instead; FLEET_PROCFS points at another /proc (the listening check), FLEET_IP at
# another `ip` (busybox sh runs its own applet for a plain `ip`, whatever the PATH).
root=${FLEET_RESCUE_ROOT:-}
proc=${FLEET_PROCFS:-/proc}
ip_command=${FLEET_IP:-ip}
machine=${rescue_machine:-${FLEET_MACHINE:-this machine}}
keys=${rescue_keys:-}
port=22
user=root

# json_string TEXT prints TEXT as a JSON string (control characters as spaces).
json_string() {
  printf '"%s"' "$(printf '%s' "$1" | tr '\001-\037\177' ' ' | sed 's/[\\"]/\\&/g')"
}

# The machine's global addresses, IPv4 first, as JSON strings separated by commas.
addresses_json() {
  "$ip_command" -o addr show 2>/dev/null | awk '
    / scope global / {
      for (i = 1; i < NF; i++) {
        if ($i == "inet" || $i == "inet6") {
          address = $(i + 1); sub(/\/.*/, "", address)
          if ($i == "inet") v4 = v4 (v4 == "" ? "" : ",") "\"" address "\""
          else v6 = v6 (v6 == "" ? "" : ",") "\"" address "\""
        }
      }
    }
    END { printf "%s%s%s", v4, (v4 != "" && v6 != "" ? "," : ""), v6 }'
}

# results SSH REASON [HOST_KEY HOST_KEY_TYPE COUNT]
results() {
  [ -n "${FLEET_RESULTS:-}" ] || return 0
  {
    printf '{"ssh": %s, "user": "%s", "port": %s, "addresses": [%s]' \
      "$1" "$user" "$port" "$(addresses_json)"
    if [ -n "${3:-}" ]; then
      printf ', "host_key": %s, "host_key_type": %s, "authorized_keys": %s' \
        "$(json_string "$3")" "$(json_string "$4")" "$5"
    fi
    [ -n "$2" ] && printf ', "reason": %s' "$(json_string "$2")"
    printf '}\n'
  } >"$FLEET_RESULTS"
}

fail() {
  echo "fleet-rescue: $*" >&2
  results false "$*"
  exit 1
}

if [ -z "$root" ] && [ ! -e /etc/fleet/ephemeral ]; then
  echo "fleet-rescue: not in the ephemeral environment (no /etc/fleet/ephemeral): this host's SSH access is left alone" >&2
  exit 2
fi

count=$(printf '%s\n' "$keys" | grep -c '^[a-z]')
if [ "$count" = 0 ]; then
  reason="no SSH keys for $machine in the fleet file: no SSH server started"
  echo "$reason"
  echo "(give the machine or its profile ssh_keys, then enter rescue again; the console works meanwhile)"
  results false "$reason"
  exit 0
fi
for tool in dropbear dropbearkey; do
  command -v "$tool" >/dev/null 2>&1 || fail "no $tool in this environment: cannot start an SSH server (the ephemeral environment is built with dropbear-bin)"
done

# root: an account dropbear can log in to (a password field that is not empty, a home, a shell).
mkdir -p "$root/etc" "$root/root/.ssh" "$root/etc/dropbear" "$root/run" || fail "cannot make $root/root/.ssh"
touch "$root/etc/passwd"
grep -q '^root:' "$root/etc/passwd" || echo 'root:x:0:0:root:/root:/bin/sh' >>"$root/etc/passwd" \
  || fail "cannot add root to $root/etc/passwd"
# (dropbear refuses every login to an account whose password field is empty)
if grep -q '^root::' "$root/etc/passwd"; then sed -i 's/^root::/root:x:/' "$root/etc/passwd"; fi
# dropbear refuses keys in a home or .ssh that others may write to, or owned by someone else.
if [ -z "$root" ]; then chown 0:0 /root /root/.ssh 2>/dev/null; fi
chmod 0700 "$root/root" "$root/root/.ssh"
printf '%s\n' "$keys" | grep '^[a-z]' >"$root/root/.ssh/authorized_keys" \
  || fail "cannot write $root/root/.ssh/authorized_keys"
chmod 0600 "$root/root/.ssh/authorized_keys"
echo "authorized $count SSH key(s) for $user:"
printf '%s\n' "$keys" | grep '^[a-z]' | awk '{ print "  " $1 " " ($3 == "" ? "(no comment)" : $3) }'

host_key=$root/etc/dropbear/dropbear_ed25519_host_key
rm -f "$host_key"
dropbearkey -t ed25519 -f "$host_key" >"$root/run/fleet-rescue-key.log" 2>&1 \
  || fail "dropbearkey could not make a host key: $(tail -n 1 "$root/run/fleet-rescue-key.log")"
dropbearkey -y -f "$host_key" >"$root/run/fleet-rescue-key.pub" 2>&1 \
  || fail "dropbearkey could not read the host key back: $(tail -n 1 "$root/run/fleet-rescue-key.pub")"
fingerprint=$(sed -n 's/^Fingerprint: *//p' "$root/run/fleet-rescue-key.pub" | head -n 1)
key_type=$(awk '$1 ~ /^ssh-|^ecdsa-/ { print $1; exit }' "$root/run/fleet-rescue-key.pub")

# dropbear in its own session (the runner's timeout never reaches it), logging to a file: -F
# stays in the foreground of that background job, -E logs to stderr, -s refuses passwords.
log=$root/run/fleet-rescue-dropbear.log
pidfile=$root/run/dropbear.pid
if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi
$detach dropbear -F -E -s -r "$host_key" -p "$port" -P "$pidfile" </dev/null >"$log" 2>&1 &
pid=$!

# Listening: a socket on the port in state LISTEN (0A) in /proc/net/tcp or tcp6.
hex_port=$(printf '%04X' "$port")
listening() {
  cat "$proc/net/tcp" "$proc/net/tcp6" 2>/dev/null \
    | awk -v port=":$hex_port" '$2 ~ port"$" && $4 == "0A" { found = 1 } END { exit !found }'
}
# Alive: the job started, or the process its pid file names (a setsid that had to fork).
alive() {
  kill -0 "$pid" 2>/dev/null && return 0
  [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}
tries=0
until listening; do
  if [ $tries -ge 10 ] && ! alive; then
    fail "dropbear ended before it listened on port $port: $(tail -n 3 "$log" | tr '\n' ' ')"
  fi
  tries=$((tries + 1))
  [ $tries -le 100 ] || fail "dropbear does not listen on port $port after 20 s: $(tail -n 3 "$log" | tr '\n' ' ')"
  sleep 0.2
done

echo "SSH server listening on port $port (dropbear, pid $pid), host key $fingerprint"
for address in $(addresses_json | tr -d '"' | tr ',' ' '); do
  echo "  ssh $user@$address"
done
results true "" "$fingerprint" "$key_type" "$count"
