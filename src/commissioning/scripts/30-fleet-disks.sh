#!/bin/sh
# (served with fact-helpers.inc in front: run `cat fact-helpers.inc THIS | sh` by hand)
# fleet built-in commissioning script 30-fleet-disks:
# Every disk: name, size in bytes, model, serial, by-id path, rotational, block size.
# Runs under busybox sh and reads /proc and /sys only. Prints fact lines on stdout
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
