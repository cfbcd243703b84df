#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 20-fleet-memory:
# The memory the kernel sees (MemTotal, in KiB).
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

kib=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB$/\1/p' "$proc/meminfo")
if [ -z "$kib" ]; then
  echo "fleet: no MemTotal in $proc/meminfo" >&2
  exit 1
fi
add kib "$kib"
# Installed memory: MemTotal lacks what the firmware and the kernel keep (5-7 % of a small
# machine), so the online memory blocks of the hotplug interface give the size a person
# bought. Absent when the kernel has no memory blocks in sysfs.
read_attr "$sys/devices/system/memory/block_size_bytes"
case $attr in
  '' | *[!0-9a-fA-F]*) ;;
  *)
    blocks=0
    for online in "$sys"/devices/system/memory/memory*/online; do
      read_attr "$online"
      if [ "$attr" = 1 ]; then blocks=$((blocks + 1)); fi
    done
    if [ "$blocks" -gt 0 ]; then
      read_attr "$sys/devices/system/memory/block_size_bytes"
      add installed_kib "$((blocks * 0x$attr / 1024))"
    fi
    ;;
esac
emit memory
