#!/bin/sh
# (served with disk-helpers.inc in front: run `cat disk-helpers.inc THIS | sh` by hand)
# fleet built-in test fleet-disk-read: reads the first FLEET_DISK_READ_MIB (default 64) MiB of
# every disk and fails on a read error; asks SMART for the health verdict when smartctl is
# there (a failing verdict fails the test; a disk without SMART, or no smartctl, does not).
# Reads only, writes nothing. Disks are chosen as 30-fleet-disks chooses them.
# FLEET_SYSFS and FLEET_DEVFS point it at other trees (the tests use fake ones).
# Writes {"mib_per_disk": N, "disks": [{"name", "mib_read", "status", "smart"}]} to $FLEET_RESULTS.
sys=${FLEET_SYSFS:-/sys}
dev=${FLEET_DEVFS:-/dev}
mib=${FLEET_DISK_READ_MIB:-64}
case $mib in '' | *[!0-9]* | 0) echo "fleet-disk-read: FLEET_DISK_READ_MIB must be a whole number of MiB above 0, not '$mib'" >&2; exit 2 ;; esac
work=$(mktemp -d) || exit 2
trap 'rm -rf "$work"' EXIT

# read_start NODE reads the first $mib MiB, bypassing the page cache when the device allows
# it (O_DIRECT), so the data really comes from the disk.
read_start() {
  dd if="$1" of=/dev/null bs=1048576 count="$mib" iflag=direct 2>"$work/error" ||
    dd if="$1" of=/dev/null bs=1048576 count="$mib" 2>"$work/error"
}

# smart_health NODE sets $smart to a word for the results and fails when SMART says the
# disk is failing (smartctl's exit status bit 3).
smart_health() {
  if ! command -v smartctl >/dev/null 2>&1; then smart="not available"; return 0; fi
  smartctl -H "$1" >"$work/smart" 2>&1
  status=$?
  if [ $((status & 8)) != 0 ]; then smart=failing; return 1; fi
  # Bits 0-2: the command line, opening the device or the SMART command failed.
  if [ $((status & 7)) != 0 ]; then smart="not supported"; else smart=passed; fi
}

failed=0
entries=
for path in "$sys"/block/*; do
  [ -e "$path" ] || continue
  name=${path##*/}
  sectors=$(disk_sectors "$path")
  [ -n "$sectors" ] || continue
  size_mib=$((sectors / 2048))
  wanted=$mib
  [ "$size_mib" -ge "$wanted" ] || wanted=$size_mib
  status=passed smart="not checked"
  node=$(device_node "$name")
  if [ -z "$node" ]; then
    echo "disk $name: no device node in $dev and none could be made"
    status=failed wanted=0
  elif ! read_start "$node"; then
    echo "disk $name: READ ERROR in the first $wanted MiB: $(tail -n 1 "$work/error")"
    status=failed wanted=0
  else
    echo "disk $name: read $wanted MiB"
  fi
  if [ -n "$node" ] && ! smart_health "$node"; then
    echo "disk $name: SMART says the disk is FAILING:"
    cat "$work/smart"
    status=failed
  fi
  echo "disk $name: SMART $smart"
  [ $status = passed ] || failed=$((failed + 1))
  entries="$entries${entries:+, }{\"name\": \"$name\", \"mib_read\": $wanted, \"status\": \"$status\", \"smart\": \"$smart\"}"
done
[ -n "$entries" ] || echo "no disks found"

if [ -n "$FLEET_RESULTS" ]; then
  printf '{"mib_per_disk": %s, "disks": [%s]}\n' "$mib" "$entries" >"$FLEET_RESULTS"
fi
[ "$failed" = 0 ]
