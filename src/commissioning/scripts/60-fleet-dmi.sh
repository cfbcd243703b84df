#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 60-fleet-dmi:
# The DMI (SMBIOS) identity; a field that cannot be read is empty.
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

# Some fields (serials, UUID) are readable by root only; machines without DMI (many arm64
# boards) have no /sys/class/dmi at all. Every key is printed, empty when unknown.
dmi=$sys/class/dmi/id
for pair in vendor:sys_vendor product:product_name version:product_version \
  serial:product_serial uuid:product_uuid sku:product_sku family:product_family \
  board_vendor:board_vendor board_name:board_name board_serial:board_serial \
  chassis_vendor:chassis_vendor chassis_type:chassis_type chassis_serial:chassis_serial \
  bios_vendor:bios_vendor bios_version:bios_version bios_date:bios_date; do
  read_attr "$dmi/${pair#*:}"
  add "${pair%%:*}" "$attr"
done
emit dmi
