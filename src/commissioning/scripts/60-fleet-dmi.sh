#!/bin/sh
# fleet built-in commissioning script 60-fleet-dmi:
# The DMI (SMBIOS) identity; a field that cannot be read is empty.
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
