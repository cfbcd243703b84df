#!/bin/sh
# An operator's commissioning script (see [scripts.check-disks] in fleet.toml.example): fails
# commissioning when the machine has fewer disks than a storage node needs. Runs under busybox
# in the ephemeral environment; what it prints on stderr becomes the failure's reason.
need=${FLEET_MIN_DISKS:-1}
count=0
for disk in /sys/block/*; do
  case ${disk##*/} in loop* | ram* | zram* | sr* | dm-* | md*) continue ;; esac
  [ -e "$disk/device" ] && count=$((count + 1))
done
echo "disks found: $count (need $need)"
if [ "$count" -lt "$need" ]; then
  echo "only $count disks, a storage node needs $need" >&2
  exit 1
fi
