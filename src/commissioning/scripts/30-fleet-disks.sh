#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 30-fleet-disks:
# Every disk: name, size in bytes, model, serial, by-id path, rotational, block size.
# Runs under busybox sh (with its od) and reads /proc and /sys only. Prints fact lines on stdout
# (`KIND key=value key="quoted value"`, the format is documented in src/commissioning/mod.rs).
# FLEET_SYSFS and FLEET_PROCFS point it at another tree (the tests use fake ones).
sys=${FLEET_SYSFS:-/sys}
proc=${FLEET_PROCFS:-/proc}
line=

# by_id_part TEXT sets $part to TEXT the way udev writes it in /dev/disk/by-id names: ends
# trimmed, runs of white space as one `_`, characters outside udev's safe set as `_`.
by_id_part() {
  part=$(printf '%s' "$1" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//; s/[[:space:]][[:space:]]*/_/g; s/[^0-9A-Za-z#+.:=@_-]/_/g')
}

# vpd_serial DEVICE_DIR sets $serial to the unit serial number (SCSI VPD page 0x80: a 4-byte
# header, then the text), which the kernel also fills in for ATA disks.
vpd_serial() {
  serial=
  if [ -r "$1/vpd_pg80" ]; then
    serial=$(dd if="$1/vpd_pg80" bs=1 skip=4 2>/dev/null | tr -d '\000')
  fi
}

# scsi_designators FILE prints the identification descriptors of a VPD page 0x83 (FILE is
# sysfs's vpd_pg83: a 4-byte header, then the descriptors), one a line: code set, association,
# designator type, then the designator's bytes in decimal. Nothing for a SCSI-2 style reply
# (byte 6 not zero), which udev's scsi_id reads another way.
scsi_designators() {
  # shellcheck disable=SC2046
  set -- $(od -An -v -tu1 "$1" 2>/dev/null)
  [ $# -ge 8 ] && [ "$7" = 0 ] || return 0
  shift 4
  while [ $# -ge 4 ]; do
    code_set=$(($1 & 15)) association=$((($2 >> 4) & 3)) type=$(($2 & 15)) length=$4
    shift 4
    [ $# -ge "$length" ] || return 0
    bytes=
    while [ "$length" -gt 0 ]; do bytes="$bytes $1"; shift; length=$((length - 1)); done
    echo "$code_set $association $type$bytes"
  done
}

# scsi_serial DEVICE_DIR sets $scsi_serial to the ID_SERIAL udev's scsi_id gives the disk (the
# by-id link is scsi-ID_SERIAL): the first LUN descriptor of VPD page 0x83 in scsi_id's order
# (NAA IEEE registered extended, registered, any NAA, EUI-64, T10 vendor id, vendor specific;
# binary before ASCII), its type as one hex digit, then the designator (binary in lower-case
# hex); a vendor-specific one (QEMU's scsi-hd on virtio-scsi) with the vendor and model before
# it. Without page 0x83, page 0x80: `S`, vendor, model, serial. Empty when neither serves.
scsi_serial() {
  scsi_serial=
  read_attr "$1/vendor"; vendor=$attr
  read_attr "$1/model"; scsi_model=$attr
  designators=
  if [ -r "$1/vpd_pg83" ]; then designators=$(scsi_designators "$1/vpd_pg83"); fi
  for wanted in 3:6:1 3:6:2 3:5:1 3:5:2 3:any:1 3:any:2 2:any:1 2:any:2 1:any:1 1:any:2 \
    0:any:1 0:any:2; do
    want_type=${wanted%%:*} want_naa=${wanted#*:} want_code=${wanted##*:}
    want_naa=${want_naa%:*}
    found=$(echo "$designators" | while read -r code_set association type first rest; do
      [ -n "$first" ] && [ "$association" = 0 ] && [ "$type" = "$want_type" ] || continue
      [ "$code_set" = "$want_code" ] || continue
      [ "$want_naa" = any ] || [ $((first >> 4)) = "$want_naa" ] || continue
      echo "$first $rest"
      break
    done)
    [ -n "$found" ] || continue
    text=
    for byte in $found; do
      if [ "$want_code" = 2 ]; then
        # shellcheck disable=SC2059
        text="$text$(printf "\\$(printf %03o "$byte")")"
      else
        text="$text$(printf %02x "$byte")"
      fi
    done
    case $want_type in
      0) scsi_serial=0$(printf '%-8.8s%-16.16s' "$vendor" "$scsi_model")$text ;;
      *) scsi_serial=$want_type$text ;;
    esac
    return
  done
  vpd_serial "$1"
  if [ -n "$serial" ]; then
    scsi_serial=S$(printf '%-8.8s%-16.16s' "$vendor" "$scsi_model")$serial
  fi
}

# disk_identity NAME PATH REAL sets $bus $model $serial $id_path from the disk's sysfs files,
# deriving the by-id link as udev's 60-persistent-storage.rules would (the initramfs has no
# udev); $id_path stays empty when it cannot be derived for certain.
disk_identity() {
  bus=other model= serial= id_path=
  case $1 in
    vd*)
      bus=virtio
      read_attr "$2/serial"; serial=$attr
      if [ -n "$serial" ]; then by_id_part "$serial"; id_path=virtio-$part; fi ;;
    nvme*)
      bus=nvme
      read_attr "$2/device/model"; model=$attr
      read_attr "$2/device/serial"; serial=$attr
      if [ -n "$model" ] && [ -n "$serial" ]; then by_id_part "${model}_$serial"; id_path=nvme-$part; fi ;;
    mmcblk*)
      bus=mmc
      read_attr "$2/device/name"; model=$attr
      read_attr "$2/device/serial"; serial=$attr
      if [ -n "$model" ] && [ -n "$serial" ]; then by_id_part "${model}_$serial"; id_path=mmc-$part; fi ;;
    sd*)
      read_attr "$2/device/model"; model=$attr
      vpd_serial "$2/device"
      case $3 in
        */usb[0-9]*) bus=usb ;;
        */ata[0-9]*)
          bus=ata
          # The SCSI model of an ATA disk is the ATA model cut to 16 characters; udev uses the
          # whole ATA model, so the link is only certain for a shorter model.
          model_trimmed=$(printf '%s' "$model" | sed 's/[[:space:]]*$//')
          if [ -n "$serial" ] && [ ${#model_trimmed} -lt 16 ]; then
            by_id_part "${model}_$serial"; id_path=ata-$part
          fi ;;
        *) bus=scsi ;;
      esac
      if [ -z "$id_path" ]; then
        read_attr "$2/device/wwid"
        case $attr in naa.*) id_path=wwn-0x${attr#naa.} ;; esac
      fi
      # SAS, iSCSI, virtio-scsi (which has no wwid unless the disk is given a WWN): the link
      # udev makes from scsi_id's serial.
      if [ -z "$id_path" ] && [ "$bus" = scsi ]; then
        scsi_serial "$2/device"
        if [ -n "$scsi_serial" ]; then by_id_part "$scsi_serial"; id_path=scsi-$part; fi
      fi ;;
  esac
  if [ -n "$id_path" ]; then id_path=/dev/disk/by-id/$id_path; fi
}

for path in "$sys"/block/*; do
  [ -e "$path" ] || continue
  name=${path##*/}
  # Not disks: loop, RAM and compressed-RAM devices, device-mapper and md arrays, optical
  # and floppy drives, network block devices, eMMC boot and RPMB areas.
  case $name in
    loop* | ram* | zram* | dm-* | md* | sr* | fd* | nbd* | mmcblk*boot* | mmcblk*rpmb) continue ;;
  esac
  # With NVMe multipath (Debian's default) each path is a hidden disk of its own (nvme0c0n1)
  # and the disk to use (nvme0n1) sits under the virtual nvme-subsystem.
  read_attr "$path/hidden"
  [ "$attr" != 1 ] || continue
  real=$(readlink -f "$path")
  case $real in
    */devices/virtual/nvme-subsystem/*) ;;
    */devices/virtual/*) continue ;;
  esac
  read_attr "$path/size"
  case $attr in '' | *[!0-9]*) continue ;; esac
  # A reader without a card or a drive without media shows size 0: nothing to use.
  [ "$attr" -gt 0 ] || continue
  # /sys/block/*/size counts 512-byte sectors whatever the disk's own block size.
  size=$((attr * 512))
  disk_identity "$name" "$path" "$real"
  add name "$name"
  add size "$size"
  add bus "$bus"
  add_known model "$model"
  add_known serial "$serial"
  add_known id_path "$id_path"
  read_attr "$path/queue/rotational"; add_known rotational "$attr"
  read_attr "$path/queue/logical_block_size"; add_known block_size "$attr"
  emit disk
done
