#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 10-fleet-cpu:
# The number of CPUs online, their model and speed in MHz, and the sockets.
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

# count_cpu_list LIST sets $count to the number of CPUs in a kernel CPU list such as 0-3,6,8-9.
count_cpu_list() {
  count=0
  for range in $(printf '%s' "$1" | tr ',' ' '); do
    case $range in
      *-*) count=$((count + ${range#*-} - ${range%-*} + 1)) ;;
      *[0-9]*) count=$((count + 1)) ;;
    esac
  done
}

# The first value of a /proc/cpuinfo field, e.g. `cpuinfo_field 'model name'`.
cpuinfo_field() {
  sed -n "s/^$1[[:space:]]*:[[:space:]]*//p" "$proc/cpuinfo" 2>/dev/null | head -n 1
}

read_attr "$sys/devices/system/cpu/online"
if [ -n "$attr" ]; then
  count_cpu_list "$attr"
else
  count=$(grep -c '^processor' "$proc/cpuinfo" 2>/dev/null)
fi

# x86 says `model name`; older arm kernels `Processor`, mips `cpu model`, powerpc `cpu`.
model=$(cpuinfo_field 'model name')
[ -n "$model" ] || model=$(cpuinfo_field 'Processor')
[ -n "$model" ] || model=$(cpuinfo_field 'cpu model')
[ -n "$model" ] || model=$(cpuinfo_field 'cpu')

# The nominal top speed from cpufreq when the kernel has it (kHz); else what cpuinfo shows now.
read_attr "$sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
case $attr in
  '' | *[!0-9]*) mhz=$(cpuinfo_field 'cpu MHz'); mhz=${mhz%%.*} ;;
  *) mhz=$((attr / 1000)) ;;
esac
case $mhz in *[!0-9]*) mhz= ;; esac

sockets=$(cat "$sys"/devices/system/cpu/cpu[0-9]*/topology/physical_package_id 2>/dev/null | sort -u | wc -l)
[ "$sockets" != 0 ] || sockets=

add count "$count"
add_known model "$model"
add_known mhz "$mhz"
add_known sockets "$sockets"
emit cpu
