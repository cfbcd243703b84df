#!/bin/sh
# fleet built-in commissioning script 20-fleet-memory:
# The memory the kernel sees (MemTotal, in KiB).
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
