#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 51-fleet-usb:
# Every USB device (hubs included): path, vendor, product, class, names, speed, driver.
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

for path in "$sys"/bus/usb/devices/*; do
  # Interfaces (1-1:1.0) are listed here too; only devices have idVendor.
  [ -e "$path/idVendor" ] || continue
  add path "${path##*/}"
  read_attr "$path/idVendor"; add_known vendor "$attr"
  read_attr "$path/idProduct"; add_known product "$attr"
  read_attr "$path/bDeviceClass"; add_known class "$attr"
  read_attr "$path/manufacturer"; add_known manufacturer "$attr"
  read_attr "$path/product"; add_known name "$attr"
  read_attr "$path/serial"; add_known serial "$attr"
  read_attr "$path/speed"; add_known speed "$attr"
  read_attr "$path/busnum"; add_known bus "$attr"
  read_attr "$path/devnum"; add_known device "$attr"
  if [ -L "$path/driver" ]; then
    driver=$(readlink "$path/driver"); add driver "${driver##*/}"
  fi
  emit usb
done
