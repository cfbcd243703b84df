#!/bin/sh
# fleet built-in commissioning script 00-fleet-arch:
# The architecture (Debian's name for it) and the firmware (uefi or bios).
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

# --- fact helpers (the same in every fleet fact script; a test keeps the copies equal) ---
# fact_value TEXT sets $fact to TEXT as one fact value: control characters become spaces, the
# ends are trimmed, and it is double-quoted (with \ and " escaped) when empty or when it holds
# a space, " or \.
fact_value() {
  fact=$1
  case $fact in *[![:print:]]*) fact=$(printf '%s' "$fact" | tr '\001-\037\177' ' ') ;; esac
  fact=${fact#"${fact%%[! ]*}"}
  fact=${fact%"${fact##*[! ]}"}
  case $fact in
    '' | *[\ \"\\]*)
      case $fact in *[\"\\]*) fact=$(printf '%s' "$fact" | sed 's/[\\"]/\\&/g') ;; esac
      fact="\"$fact\"" ;;
  esac
}
# add KEY VALUE appends ` KEY=VALUE` to $line; add_known does so only when VALUE is not blank.
add() { fact_value "$2"; line="$line $1=$fact"; }
add_known() { fact_value "$2"; if [ "$fact" != '""' ]; then line="$line $1=$fact"; fi; }
# read_attr FILE sets $attr to FILE's first line, or to nothing when FILE cannot be read
# (sysfs attributes often lack the final newline, or fail to read with EINVAL).
read_attr() { attr=; { read -r attr <"$1"; } 2>/dev/null; }
# emit KIND prints the fact line built in $line and starts the next one.
emit() { printf '%s%s\n' "$1" "$line"; line=; }
# --- end of fact helpers ---

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
