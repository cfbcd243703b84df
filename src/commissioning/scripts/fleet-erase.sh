#!/bin/sh
# (served with disk-helpers.inc and `mode=quick|secure|full` in front, as fleet-erase-MODE)
# fleet built-in disk erase, run in the ephemeral environment while a machine is released with
# an erase. DESTRUCTIVE: it destroys the data on every disk.
# - quick: zeroes the first and the last 4 MiB of every disk (partition tables, the GPT backup,
#   RAID and LVM signatures), then discards the whole disk where it supports that;
# - secure: a secure discard of the whole disk (blkdiscard -s); where the disk cannot, a full
#   overwrite instead, and the result says so;
# - full: overwrites every byte with zeros.
# Disks are chosen as 30-fleet-disks chooses them. FLEET_SYSFS and FLEET_DEVFS point it at other
# trees (the tests use fake ones). Writes {"mode", "disks": [{"name", "erased", "how"}]} to
# $FLEET_RESULTS.
sys=${FLEET_SYSFS:-/sys}
dev=${FLEET_DEVFS:-/dev}
case $mode in quick | secure | full) ;; *) echo "fleet-erase: unknown mode '$mode'" >&2; exit 2 ;; esac
work=$(mktemp -d) || exit 2
trap 'rm -rf "$work"' EXIT

# zero NODE SEEK_MIB COUNT_MIB writes zeros, flushed to the disk.
zero() {
  dd if=/dev/zero of="$1" bs=1048576 seek="$2" count="$3" conv=notrunc,fsync 2>"$work/error"
}

# erase_quick NODE SECTORS
erase_quick() {
  size_mib=$(($2 / 2048))
  span=4
  [ "$size_mib" -ge $((span * 2)) ] || span=$(((size_mib + 1) / 2))
  zero "$1" 0 "$span" || return 1
  if [ "$size_mib" -gt "$span" ]; then zero "$1" $((size_mib - span)) "$span" || return 1; fi
  if blkdiscard "$1" 2>/dev/null; then how="ends zeroed, discarded"; else how="ends zeroed"; fi
}

# erase_full NODE SECTORS: zeros over every whole MiB, then the sectors after the last one.
erase_full() {
  size_mib=$(($2 / 2048))
  zero "$1" 0 "$size_mib" || return 1
  rest=$(($2 - size_mib * 2048))
  if [ "$rest" -gt 0 ]; then
    dd if=/dev/zero of="$1" bs=512 seek=$((size_mib * 2048)) count="$rest" conv=notrunc,fsync \
      2>"$work/error" || return 1
  fi
  how="overwritten with zeros"
}

# erase_secure NODE SECTORS
erase_secure() {
  if blkdiscard -s "$1" 2>"$work/error"; then
    how="secure discard"
  else
    echo "  no secure discard ($(tail -n 1 "$work/error")): overwriting instead"
    erase_full "$1" "$2" || return 1
    how="overwritten with zeros (no secure discard)"
  fi
}

failed=0
entries=
for path in "$sys"/block/*; do
  [ -e "$path" ] || continue
  name=${path##*/}
  sectors=$(disk_sectors "$path")
  [ -n "$sectors" ] || continue
  node=$(device_node "$name")
  erased=false how=
  if [ -z "$node" ]; then
    echo "disk $name: no device node in $dev and none could be made"
  elif "erase_$mode" "$node" "$sectors"; then
    erased=true
    echo "disk $name: erased ($how)"
  else
    echo "disk $name: ERASE FAILED: $(tail -n 1 "$work/error")" >&2
  fi
  [ $erased = true ] || failed=$((failed + 1))
  entries="$entries${entries:+, }{\"name\": \"$name\", \"erased\": $erased, \"how\": \"$how\"}"
done
[ -n "$entries" ] || echo "no disks found"

if [ -n "$FLEET_RESULTS" ]; then
  printf '{"mode": "%s", "disks": [%s]}\n' "$mode" "$entries" >"$FLEET_RESULTS"
fi
[ "$failed" = 0 ]
