#!/bin/sh
# (served with disk-helpers.inc and `mode=quick|secure|full` in front, as fleet-erase-MODE)
# fleet built-in disk erase, run in the ephemeral environment while a machine is released with
# an erase. DESTRUCTIVE: it destroys the data on every disk. First, in every mode, it stops what
# is stacked on the disks (bcache, LVM volume groups, md RAIDs) so that nothing holds them. Then:
# - quick (MAAS's quick erase): `wipefs -fa` on every partition and on the disk, zeroes the first
#   and the last 4 MiB (partition tables, the GPT backup, RAID and LVM signatures), then
#   discards the whole disk where it supports that;
# - secure: the erase the disk itself offers, checked. NVMe (nvme id-ctrl): Format NVM with
#   crypto erase (FNA bit 2), else Sanitize crypto erase (SANICAP bit 0), else Sanitize block
#   erase (SANICAP bit 1), else Format NVM user-data erase (OACS bit 1). ATA (hdparm -I):
#   security erase, enhanced where supported, as MAAS does it: never on a frozen or locked drive
#   or one with security already enabled; set a user password, erase (which clears it), and
#   disable the password again if the erase left it set. Before either, 1 MiB of random bytes
#   is written at the start of the disk; if it reads back unchanged: "Secure erase was
#   performed, but failed to actually work." Where there is no such erase, or it was skipped or
#   failed, the disk FALLS BACK to a secure discard (blkdiscard -s), else a full overwrite, and
#   the result says why (`fell_back`);
# - full: overwrites every byte with zeros.
# Disks are chosen as 30-fleet-disks chooses them. FLEET_SYSFS and FLEET_DEVFS point it at other
# trees (the tests use fake ones, and stand-ins for nvme, hdparm, wipefs, mdadm, vgchange on the
# PATH). Writes {"mode", "disks": [{"name", "erased", "how", "fell_back"}]} to $FLEET_RESULTS
# (fell_back: null, or why the disk's own erase was not used).
sys=${FLEET_SYSFS:-/sys}
dev=${FLEET_DEVFS:-/dev}
case $mode in quick | secure | full) ;; *) echo "fleet-erase: unknown mode '$mode'" >&2; exit 2 ;; esac
work=$(mktemp -d) || exit 2
trap 'rm -rf "$work"' EXIT
# The ATA user password set for the erase; a successful erase clears it.
password=fleet

have() { command -v "$1" >/dev/null 2>&1; }

# last_error: the last line a command wrote to $work/error.
last_error() { tail -n 1 "$work/error" 2>/dev/null; }

# json_string TEXT prints TEXT as a JSON string (control characters dropped).
json_string() {
  printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# zero NODE SEEK_MIB COUNT_MIB writes zeros, flushed to the disk.
zero() {
  dd if=/dev/zero of="$1" bs=1048576 seek="$2" count="$3" conv=notrunc,fsync 2>"$work/error"
}

# ---------------------------------------------------------------- what is stacked on the disks

stop_bcache() {
  for stop in "$sys"/block/bcache*/bcache/stop "$sys"/fs/bcache/*/stop; do
    [ -e "$stop" ] || continue
    holder=${stop%/stop}
    echo "stopping bcache ${holder#"$sys"/}"
    echo 1 2>/dev/null >"$stop" || echo "  could not stop it"
  done
}

# stop_lvm deactivates every volume group when device-mapper devices exist.
stop_lvm() {
  set -- "$sys"/block/dm-*
  [ -e "$1" ] || return 0
  if have vgchange; then
    set -- vgchange
  elif have lvm; then
    set -- lvm vgchange
  else
    echo "device-mapper devices are active and there is no vgchange to stop them"
    return 0
  fi
  echo "deactivating LVM volume groups"
  "$@" -an >/dev/null 2>"$work/error" || echo "  vgchange -an failed: $(last_error)"
}

# stop_md wipes the signatures on every md RAID (bcache, LVM) and stops it.
stop_md() {
  for path in "$sys"/block/md*; do
    [ -e "$path" ] || continue
    name=${path##*/}
    echo "stopping RAID $name"
    if have wipefs; then
      wipefs -fa "$dev/$name" >/dev/null 2>"$work/error" || echo "  wipefs failed: $(last_error)"
    fi
    if have mdadm; then
      mdadm --stop "$dev/$name" >/dev/null 2>"$work/error" || echo "  mdadm --stop failed: $(last_error)"
    else
      echo "  there is no mdadm to stop it"
    fi
  done
}

# ---------------------------------------------------------------- quick and full

# wipe_signatures NAME NODE runs wipefs on the disk's partitions, then on the disk.
wipe_signatures() {
  have wipefs || return 1
  for part in "$sys/block/$1/$1"*; do
    [ -e "$part/partition" ] && [ -e "$dev/${part##*/}" ] || continue
    wipefs -fa "$dev/${part##*/}" >/dev/null 2>"$work/error" ||
      echo "  wipefs ${part##*/} failed: $(last_error)"
  done
  wipefs -fa "$2" >/dev/null 2>"$work/error" || echo "  wipefs failed: $(last_error)"
}

# erase_quick NODE SECTORS NAME
erase_quick() {
  how="ends zeroed"
  if wipe_signatures "$3" "$1"; then how="signatures wiped, ends zeroed"; fi
  size_mib=$(($2 / 2048))
  span=4
  [ "$size_mib" -ge $((span * 2)) ] || span=$(((size_mib + 1) / 2))
  zero "$1" 0 "$span" || return 1
  if [ "$size_mib" -gt "$span" ]; then zero "$1" $((size_mib - span)) "$span" || return 1; fi
  if blkdiscard "$1" 2>/dev/null; then how="$how, discarded"; fi
}

# erase_full NODE SECTORS: zeros over every whole MiB, then the sectors after the last one.
erase_full() {
  size_mib=$(($2 / 2048))
  zero "$1" 0 "$size_mib" || return 1
  rest=$(($2 - size_mib * 2048))
  if [ "$rest" -gt 0 ]; then
    dd if=/dev/zero of="$1" bs=512 seek=$((size_mib * 2048)) count="$rest" conv=notrunc,fsync \
      2>"$work/error" || return 1
  fi
  how="overwritten with zeros"
}

# ---------------------------------------------------------------- secure: the check pattern

# write_pattern NODE writes 1 MiB of random bytes at the start, past the page cache where the
# device allows it (O_DIRECT).
write_pattern() {
  dd if=/dev/urandom of="$work/pattern" bs=1048576 count=1 2>"$work/error" || return 1
  dd if="$work/pattern" of="$1" bs=1048576 count=1 conv=notrunc,fsync oflag=direct 2>/dev/null ||
    dd if="$work/pattern" of="$1" bs=1048576 count=1 conv=notrunc,fsync 2>"$work/error"
}

# check_pattern_gone NODE: after a disk's own erase, the pattern must not read back (read past
# the page cache, which could still hold it). Sets $reason when it does.
check_pattern_gone() {
  blockdev --flushbufs "$1" 2>/dev/null
  rm -f "$work/readback"
  if ! dd if="$1" of="$work/readback" bs=1048576 count=1 iflag=direct 2>/dev/null &&
    ! dd if="$1" of="$work/readback" bs=1048576 count=1 2>"$work/error"; then
    reason="the disk could not be read back after its erase: $(last_error)"
    return 1
  fi
  if cmp -s "$work/pattern" "$work/readback"; then
    reason="Secure erase was performed, but failed to actually work."
    return 1
  fi
}

# ---------------------------------------------------------------- secure: NVMe

# id_field NAME prints a field of the saved `nvme id-ctrl` output as a number (0 when absent).
id_field() {
  value=$(sed -n "s/^$1 *: *\\([0-9a-fA-Fx]*\\).*/\\1/p" "$work/id-ctrl" | head -n 1)
  case $value in '' | *[!0-9a-fA-Fx]*) value=0 ;; 0x*) ;; *[!0-9]*) value=0 ;; esac
  echo $((value))
}

# nvme_sanitize NODE ACTION starts a sanitize (2 block erase, 4 crypto erase) and waits for the
# sanitize log to say it ended (SSTAT bits 2:0: 1 or 4 done, 2 running, 3 failed).
nvme_sanitize() {
  nvme sanitize "$1" --sanact="$2" >/dev/null 2>"$work/error" || return 1
  waits=0
  while :; do
    status=$(nvme sanitize-log "$1" 2>"$work/error" | sed -n 's/.*(SSTAT)[^:]*: *\([0-9a-fA-Fx]*\).*/\1/p')
    case $status in
      '' | *[!0-9a-fA-Fx]*) echo "nvme sanitize-log shows no sanitize status (SSTAT)" >"$work/error"; return 1 ;;
    esac
    case $((status & 7)) in
      1 | 4) return 0 ;;
      3) echo "the sanitize log says the sanitize failed (SSTAT $status)" >"$work/error"; return 1 ;;
      0) waits=$((waits + 1)); [ "$waits" -le 12 ] || { echo "the sanitize never started" >"$work/error"; return 1; } ;;
    esac
    sleep 5
  done
}

# erase_nvme NODE: the strongest erase the controller offers; sets $how, or $reason.
erase_nvme() {
  have nvme || { reason="there is no nvme (nvme-cli) to erase the NVMe disk"; return 1; }
  nvme id-ctrl "$1" >"$work/id-ctrl" 2>"$work/error" || {
    reason="nvme id-ctrl failed: $(last_error)"
    return 1
  }
  oacs=$(id_field oacs) fna=$(id_field fna) sanicap=$(id_field sanicap)
  if [ $((fna & 4)) != 0 ]; then
    set -- "$1" format 2 "NVMe crypto erase (nvme format --ses=2)"
  elif [ $((sanicap & 1)) != 0 ]; then
    set -- "$1" sanitize 4 "NVMe crypto erase (nvme sanitize --sanact=4)"
  elif [ $((sanicap & 2)) != 0 ]; then
    set -- "$1" sanitize 2 "NVMe block erase (nvme sanitize --sanact=2)"
  elif [ $((oacs & 2)) != 0 ]; then
    set -- "$1" format 1 "NVMe user-data erase (nvme format --ses=1)"
  else
    reason="the NVMe controller supports neither Format NVM nor Sanitize (oacs $oacs, sanicap $sanicap)"
    return 1
  fi
  write_pattern "$1" || { reason="the check pattern could not be written: $(last_error)"; return 1; }
  echo "  $4"
  if [ "$2" = format ]; then
    nvme format "$1" --ses="$3" --force >/dev/null 2>"$work/error"
  else
    nvme_sanitize "$1" "$3"
  fi || { reason="nvme $2 failed: $(last_error)"; return 1; }
  check_pattern_gone "$1" || return 1
  how=$4
}

# ---------------------------------------------------------------- secure: ATA

# ata_security NODE prints the words of hdparm -I's Security section that hold (supported,
# enabled, locked, frozen, enhanced), after the word `security`; nothing without the section.
ata_security() {
  hdparm -I "$1" 2>/dev/null | awk '
    /^Security:/ { inside = 1; found = 1; next }
    inside && /^[^ \t]/ { inside = 0 }
    inside {
      line = $0
      gsub(/^[ \t]+|[ \t]+$/, "", line)
      holds = 1
      if (line ~ /^not[ \t]/) { holds = 0; sub(/^not[ \t]+/, "", line) }
      if (line == "supported: enhanced erase") line = "enhanced"
      if (line ~ /^(supported|enabled|locked|frozen|enhanced)$/) state[line] = holds
    }
    END {
      if (!found) exit
      words = "security"
      for (word in state) if (state[word]) words = words " " word
      print words
    }'
}

# erase_ata NODE: MAAS's ATA security erase; sets $how, or $reason.
erase_ata() {
  have hdparm || { reason="not NVMe, and there is no hdparm for an ATA security erase"; return 1; }
  flags=" $(ata_security "$1") "
  case $flags in
    "  ") reason="neither NVMe nor an ATA drive with the security feature set"; return 1 ;;
    *" frozen "*) reason="ATA security erase skipped: the drive is frozen"; return 1 ;;
    *" locked "*) reason="ATA security erase skipped: the drive is locked"; return 1 ;;
    *" enabled "*) reason="ATA security erase skipped: security is already enabled (with a password fleet does not know)"; return 1 ;;
    *" supported "*) ;;
    *) reason="the ATA drive does not support the security erase"; return 1 ;;
  esac
  erase=--security-erase how="ATA security erase"
  case $flags in *" enhanced "*) erase=--security-erase-enhanced how="ATA enhanced security erase" ;; esac
  write_pattern "$1" || { reason="the check pattern could not be written: $(last_error)"; return 1; }
  echo "  $how: setting the user password"
  hdparm --user-master u --security-set-pass "$password" "$1" >/dev/null 2>"$work/error" || {
    reason="hdparm --security-set-pass failed: $(last_error)"
    return 1
  }
  case " $(ata_security "$1") " in
    *" enabled "*) ;;
    *) reason="setting the user password did not enable security on the drive"; return 1 ;;
  esac
  echo "  $how: erasing"
  hdparm --user-master u "$erase" "$password" "$1" >/dev/null 2>"$work/error"
  erased_status=$?
  case " $(ata_security "$1") " in
    *" enabled "*)
      [ "$erased_status" != 0 ] || echo "security is still enabled after the erase" >"$work/error"
      reason="hdparm $erase failed: $(last_error)"
      hdparm --user-master u --security-disable "$password" "$1" >/dev/null 2>"$work/error" ||
        reason="$reason; and disabling the password again failed: $(last_error)"
      return 1
      ;;
  esac
  check_pattern_gone "$1"
}

# erase_secure NODE SECTORS NAME: the disk's own erase, else a secure discard, else zeros.
erase_secure() {
  reason=
  case $3 in
    nvme*) erase_nvme "$1" && return 0 ;;
    *) erase_ata "$1" && return 0 ;;
  esac
  echo "  fell back: $reason"
  if blkdiscard -s "$1" 2>"$work/error"; then
    how="secure discard"
  else
    reason="$reason; no secure discard ($(last_error))"
    echo "  no secure discard ($(last_error)): overwriting instead"
    erase_full "$1" "$2" || return 1
  fi
  fell_back=$reason
}

# ---------------------------------------------------------------- every disk

stop_bcache
stop_lvm
stop_md
failed=0
entries=
for path in "$sys"/block/*; do
  [ -e "$path" ] || continue
  name=${path##*/}
  sectors=$(disk_sectors "$path")
  [ -n "$sectors" ] || continue
  node=$(device_node "$name")
  erased=false how= fell_back=
  if [ -z "$node" ]; then
    echo "disk $name: no device node in $dev and none could be made"
  else
    echo "disk $name: $mode erase"
    if "erase_$mode" "$node" "$sectors" "$name"; then
      erased=true
      echo "disk $name: erased ($how)${fell_back:+; fell back: $fell_back}"
    else
      echo "disk $name: ERASE FAILED: $(last_error)" >&2
    fi
  fi
  [ $erased = true ] || failed=$((failed + 1))
  if [ -n "$fell_back" ]; then fell_back=$(json_string "$fell_back"); else fell_back=null; fi
  entries="$entries${entries:+, }{\"name\": \"$name\", \"erased\": $erased, \"how\": $(json_string "$how"), \"fell_back\": $fell_back}"
done
[ -n "$entries" ] || echo "no disks found"

if [ -n "$FLEET_RESULTS" ]; then
  printf '{"mode": "%s", "disks": [%s]}\n' "$mode" "$entries" >"$FLEET_RESULTS"
fi
[ "$failed" = 0 ]
