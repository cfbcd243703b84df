#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 40-fleet-interfaces:
# Every physical network interface: name, MAC, link, speed, driver.
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

for path in "$sys"/class/net/*; do
  [ -e "$path" ] || continue
  name=${path##*/}
  [ "$name" != lo ] || continue
  # Bridges, bonds, VLANs, tunnels and the like have no device behind them.
  [ -e "$path/device" ] || continue
  # Ethernet only (ARPHRD_ETHER): other link types (InfiniBand ...) have no 6-byte MAC.
  read_attr "$path/type"
  [ "$attr" = 1 ] || continue
  read_attr "$path/address"; mac=$attr
  [ -n "$mac" ] || continue
  # operstate is `unknown` for drivers that do not report it; the carrier then tells.
  read_attr "$path/operstate"; operstate=$attr
  case $operstate in
    up) link=up ;;
    unknown | dormant | testing | '')
      read_attr "$path/carrier"
      if [ "$attr" = 1 ]; then link=up; else link=down; fi ;;
    *) link=down ;;
  esac
  # speed reads -1 (or fails) while there is no link or the driver cannot tell.
  read_attr "$path/speed"; speed=$attr
  case $speed in '' | *[!0-9]* | 0 | 4294967295) speed= ;; esac
  driver=
  if [ -L "$path/device/driver" ]; then
    driver=$(readlink "$path/device/driver"); driver=${driver##*/}
  fi
  add name "$name"
  add mac "$mac"
  add link "$link"
  add_known speed "$speed"
  add_known driver "$driver"
  emit interface
done
