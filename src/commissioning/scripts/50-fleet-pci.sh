#!/bin/sh
# fleet built-in commissioning script 50-fleet-pci:
# Every PCI device: slot, vendor, device, class, subsystem ids, driver.
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
