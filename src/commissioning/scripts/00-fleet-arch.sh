#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 00-fleet-arch:
# The architecture (Debian's name for it) and the firmware (uefi or bios).
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

machine=$(uname -m)
case $machine in
  x86_64) arch=amd64 ;;
  i[3-6]86) arch=i386 ;;
  aarch64 | arm64) arch=arm64 ;;
  armv8l | armv7*) arch=armhf ;;
  arm*) arch=armel ;;
  ppc64le) arch=ppc64el ;;
  riscv64) arch=riscv64 ;;
  s390x) arch=s390x ;;
  loongarch64) arch=loong64 ;;
  mips64) arch=mips64el ;;
  *) arch=$machine ;;
esac
# The kernel shows /sys/firmware/efi only when it was started by UEFI firmware.
if [ -d "$sys/firmware/efi" ]; then firmware=uefi; else firmware=bios; fi
add name "$arch"
add machine "$machine"
add firmware "$firmware"
emit arch
