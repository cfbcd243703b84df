#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 50-fleet-pci:
# Every PCI device: slot, vendor, device, class, subsystem ids, driver.
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

# strip_hex VALUE sets $hex to VALUE without its 0x prefix.
strip_hex() { hex=${1#0x}; }
for path in "$sys"/bus/pci/devices/*; do
  [ -e "$path" ] || continue
  add slot "${path##*/}"
  for field in vendor device class subsystem_vendor subsystem_device revision; do
    read_attr "$path/$field"; strip_hex "$attr"; add_known "$field" "$hex"
  done
  if [ -L "$path/driver" ]; then
    driver=$(readlink "$path/driver"); add driver "${driver##*/}"
  fi
  emit pci
done
