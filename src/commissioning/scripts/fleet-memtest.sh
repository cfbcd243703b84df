#!/bin/sh
# fleet built-in test fleet-memtest: writes patterns over a region of RAM and reads them back.
# The region is a file in a tmpfs (tmpfs pages are RAM; the ephemeral environment has no swap),
# so every byte goes to memory and is compared on the way back. Bounded: FLEET_MEMTEST_MIB
# (default 64) MiB, at most half of MemAvailable. FLEET_MEMTEST_DIR picks the tmpfs directory
# (default: the first writable tmpfs among /dev/shm, /run, /tmp).
# Writes {"mib_tested": N, "patterns": [...], "errors": N, "directory": "..."} to $FLEET_RESULTS.
proc=${FLEET_PROCFS:-/proc}
mib=${FLEET_MEMTEST_MIB:-64}
case $mib in '' | *[!0-9]* | 0) echo "fleet-memtest: FLEET_MEMTEST_MIB must be a whole number of MiB above 0, not '$mib'" >&2; exit 2 ;; esac

available_kib=$(sed -n 's/^MemAvailable:[[:space:]]*\([0-9]*\) kB$/\1/p' "$proc/meminfo")
if [ -n "$available_kib" ] && [ "$mib" -gt $((available_kib / 2048)) ]; then
  echo "only $((available_kib / 1024)) MiB available: testing $((available_kib / 2048)) MiB instead of $mib"
  mib=$((available_kib / 2048))
fi

# The first writable tmpfs: a disk-backed directory would test the disk, not the memory.
tmpfs_directory() {
  for candidate in /dev/shm /run /tmp; do
    if awk -v dir="$candidate" '$2 == dir && $3 == "tmpfs" { found = 1 } END { exit !found }' "$proc/mounts" &&
      [ -w "$candidate" ]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}
directory=${FLEET_MEMTEST_DIR:-$(tmpfs_directory)}
if [ -z "$directory" ]; then
  echo "fleet-memtest: no writable tmpfs (/dev/shm, /run, /tmp); set FLEET_MEMTEST_DIR" >&2
  exit 2
fi
work=$(mktemp -d "$directory/fleet-memtest.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT

# make_block PATTERN writes one MiB of PATTERN (55, aa or random) to $work/block.
make_block() {
  case $1 in
    55) dd if=/dev/zero bs=1048576 count=1 2>/dev/null | tr '\000' '\125' ;;
    aa) dd if=/dev/zero bs=1048576 count=1 2>/dev/null | tr '\000' '\252' ;;
    random) dd if=/dev/urandom bs=1048576 count=1 2>/dev/null ;;
  esac >"$work/block"
}
# repeat_block prints $work/block $mib times.
repeat_block() {
  i=0
  while [ $i -lt "$mib" ]; do cat "$work/block"; i=$((i + 1)); done
}

errors=0
patterns=
for pattern in 55 aa random; do
  make_block $pattern
  if ! repeat_block >"$work/region"; then
    echo "fleet-memtest: cannot write $mib MiB to $directory (tmpfs full?)" >&2
    exit 2
  fi
  if difference=$(repeat_block | cmp - "$work/region" 2>&1); then
    echo "pattern $pattern: $mib MiB verified"
  else
    echo "pattern $pattern: MISMATCH: $difference"
    errors=$((errors + 1))
  fi
  rm -f "$work/region"
  patterns="$patterns${patterns:+, }\"$pattern\""
done

if [ -n "$FLEET_RESULTS" ]; then
  printf '{"mib_tested": %s, "patterns": [%s], "errors": %s, "directory": "%s"}\n' \
    "$mib" "$patterns" "$errors" "$directory" >"$FLEET_RESULTS"
fi
[ "$errors" = 0 ]
