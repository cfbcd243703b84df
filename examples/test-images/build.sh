#!/usr/bin/env bash
# Builds the test operating system fleet's QEMU deployment tests install (tests/it/vm/deploy.rs),
# from Debian packages only; nothing prebuilt is committed. Run as root (device nodes, owners).
#
#   examples/test-images/build.sh --out DIR [--kernel-deb PATH] [--cache DIR]
#
# Writes into DIR:
# - rootfs.tgz: a root tarball: busybox-static with its applet links, /sbin/init (os-init: says
#   "fleet-test-os: booted from disk (root=...)", DHCP on the first NIC, runs the first-boot hook
#   fleet left in /usr/lib/fleet/first-boot), /boot/vmlinuz-VER and /boot/initrd.img-VER (Debian's
#   generic kernel and a busybox initramfs: initramfs-init loads the NIC, disk, ext4, md and
#   device-mapper drivers, assembles md arrays with Debian's mdadm and volume groups with Debian's
#   lvm (both copied in with their libraries), mounts root=UUID=/LABEL=/dev/... and switches to it).
# - disk.raw.xz: a whole-disk image that boots under BIOS and UEFI: an MBR label, partition 1 an
#   ESP (FAT, bootable) with the kernel, the initramfs, syslinux (BIOS) and systemd-boot as
#   /EFI/BOOT/BOOTX64.EFI (UEFI); partition 2 ext4 labelled cloudimg-rootfs (filled with
#   `mke2fs -d`, never mounted) holding the same root as the tarball, booted with
#   root=LABEL=cloudimg-rootfs. Nothing is mounted and no loop device is used.
# - manifest: kernel version, sizes and SHA-256 of each file, the raw image's size and SHA-256.
# The kernel package is the linux-image-6.1.0-*-amd64 that linux-image-amd64 depends on, fetched
# with `apt-get download` into --cache (the ephemeral environment's cache holds it already), or
# --kernel-deb. Safe to run again: outputs are replaced atomically.
set -euo pipefail

MODULES="virtio_pci virtio_net virtio_blk virtio_scsi sd_mod e1000 e1000e ahci nvme
  crc32c_generic ext4 md_mod raid0 raid1 linear dm_mod"
ESP_MIB=40
ROOT_MIB=40

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=""
kernel_deb=""
cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/fleet-ephemeral"

say() { printf '[test-images] %s\n' "$*" >&2; }
die() { printf '[test-images] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '5p' "${BASH_SOURCE[0]}" | sed 's/^#   //' >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    --kernel-deb) [ $# -ge 2 ] || usage; kernel_deb=$2; shift 2 ;;
    --cache) [ $# -ge 2 ] || usage; cache=$2; shift 2 ;;
    -h|--help) usage ;;
    *) say "unknown argument: $1"; usage ;;
  esac
done
[ -n "$out" ] || { say "--out DIR is required"; usage; }
[ "$(id -u)" = 0 ] || die "run as root (the images hold device nodes and root-owned files)"

BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing: apt-get install busybox-static"
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamically linked: apt-get install busybox-static"; fi
MDADM=$(command -v mdadm) || die "mdadm is missing: apt-get install mdadm"
LVM=$(command -v lvm) || die "lvm is missing: apt-get install lvm2"
for tool in dpkg-deb gzip xz sha256sum sfdisk mkfs.vfat mcopy mmd syslinux mke2fs ldd; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (.ci/setup-test-images installs it)"
done
MBR=/usr/lib/syslinux/mbr/mbr.bin
BOOTX64=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
for file in "$MBR" "$BOOTX64" "$here/initramfs-init" "$here/os-init" "$here/udhcpc.script"; do
  [ -f "$file" ] || die "$file is missing"
done

mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
cache=$(cd "$cache" && pwd)

# The kernel package (as examples/ephemeral/build.sh finds it).
if [ -z "$kernel_deb" ]; then
  package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)
  [ -n "$package" ] || die "apt knows no linux-image-amd64 dependency (run apt-get update, or give --kernel-deb)"
  version=$(apt-cache show --no-all-versions "$package" 2>/dev/null | awk '/^Version:/ {print $2; exit}' || true)
  [ -n "$version" ] || die "apt has no version of $package"
  kernel_deb="$cache/${package}_${version//:/%3a}_amd64.deb"
  if [ ! -s "$kernel_deb" ]; then
    say "downloading $package $version into $cache"
    download=$(mktemp -d "$cache/download.XXXXXX")
    chown _apt "$download" 2>/dev/null || true
    (cd "$download" && apt-get download -qq "$package=$version" >/dev/null) \
      || { rm -rf "$download"; die "apt-get download $package=$version failed"; }
    mv "$download"/*.deb "$kernel_deb.tmp" && mv "$kernel_deb.tmp" "$kernel_deb"
    rm -rf "$download"
  fi
fi
[ -f "$kernel_deb" ] || die "$kernel_deb: no such file"

work=$(mktemp -d "${TMPDIR:-/tmp}/fleet-test-images.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$(date +%s)

say "unpacking $(basename "$kernel_deb")"
dpkg-deb -x "$kernel_deb" "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
[ "$(printf '%s\n' "$kver" | wc -l)" = 1 ] || die "several module trees: $kver"
vmlinuz="$work/kernel/boot/vmlinuz-$kver"
[ -f "$vmlinuz" ] || die "no boot/vmlinuz-$kver in $kernel_deb"
"$BUSYBOX" depmod -b "$work/kernel" "$kver"
moddir="$work/kernel/lib/modules/$kver"

# Copies a dynamically linked program and every library ldd names (and the loader) into ROOT.
copy_program() {   # copy_program ROOT PROGRAM DEST
  local root=$1 program=$2 dest=$3 library
  install -D -m 0755 "$program" "$root$dest"
  for library in $(ldd "$program" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$root$(dirname "$library")"
    cp -L "$library" "$root$library"
  done
}

# Busybox with a link per applet at its usual place.
install_busybox() {   # install_busybox ROOT
  local root=$1 applet
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin}
  cp "$BUSYBOX" "$root/bin/busybox"
  for applet in $("$BUSYBOX" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
}

# --- the initramfs
initramfs="$work/initramfs"
mkdir -p "$initramfs"/{dev,proc,sys,run,tmp,newroot,etc/mdadm,etc/lvm} "$initramfs/lib/modules/$kver"
install_busybox "$initramfs"
install -m 0755 "$here/initramfs-init" "$initramfs/init"
paths=$(awk -v wanted="$(echo $MODULES)" '
  function name(path) { sub(/.*\//, "", path); sub(/\.ko$/, "", path); gsub(/-/, "_", path); return path }
  BEGIN { n = split(wanted, list, / +/); for (i = 1; i <= n; i++) want[list[i]] = 1 }
  { target = $1; sub(/:$/, "", target)
    if (name(target) in want) { found[name(target)] = 1; print target; for (i = 2; i <= NF; i++) print $i } }
  END { for (m in want) if (!(m in found)) print "MISSING " m }
' "$moddir/modules.dep" | sort -u)
for module in $(printf '%s\n' "$paths" | awk '/^MISSING / {print $2}'); do
  sed 's/.*\///; s/\.ko$//; s/-/_/g' "$moddir/modules.builtin" | grep -qx "$module" \
    || die "the kernel has no module $module"
done
for path in $(printf '%s\n' "$paths" | grep -v '^MISSING ' || true); do
  mkdir -p "$initramfs/lib/modules/$kver/$(dirname "$path")"
  cp "$moddir/$path" "$initramfs/lib/modules/$kver/$path"
done
cp "$moddir/modules.builtin" "$moddir/modules.order" "$initramfs/lib/modules/$kver/"
"$BUSYBOX" depmod -b "$initramfs" "$kver"
echo $MODULES | tr ' ' '\n' > "$initramfs/etc/modules"
copy_program "$initramfs" "$MDADM" /sbin/mdadm
copy_program "$initramfs" "$LVM" /sbin/lvm
# Arrays made on another host (the deploying environment) are assembled too.
printf 'DEVICE partitions\nHOMEHOST <ignore>\nAUTO +all\n' > "$initramfs/etc/mdadm/mdadm.conf"
cat > "$initramfs/etc/lvm/lvm.conf" <<'LVMCONF'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" use_devicesfile = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
LVMCONF
mknod -m 0600 "$initramfs/dev/console" c 5 1
find "$initramfs" -exec touch -h -d @0 {} +
(cd "$initramfs" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) \
  | gzip -9 -n > "$work/initrd.img"

# --- the root filesystem
root="$work/root"
mkdir -p "$root"/{boot,dev,proc,sys,run,tmp,root,home,mnt,var/lib,var/log,etc/netplan,usr/lib/fleet,lib/modules}
chmod 1777 "$root/tmp"; chmod 0700 "$root/root"
install_busybox "$root"
install -m 0755 "$here/os-init" "$root/sbin/init"
install -m 0755 "$here/udhcpc.script" "$root/etc/udhcpc.script"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'fleet-test-os\n' > "$root/etc/hostname"
printf 'NAME="fleet test OS"\nID=fleet-test-os\nVERSION_ID=1\n' > "$root/etc/os-release"
mknod -m 0600 "$root/dev/console" c 5 1
mknod -m 0666 "$root/dev/null" c 1 3

# The whole-disk image's root: the same tree, its kernel on the ESP instead of /boot.
mkdir -p "$work/diskroot"
cp -a "$root/." "$work/diskroot/"

cp "$vmlinuz" "$root/boot/vmlinuz-$kver"
cp "$work/initrd.img" "$root/boot/initrd.img-$kver"
find "$root" -exec touch -h -d @0 {} +
say "writing rootfs.tgz"
tar -C "$root" --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -cf - . \
  | gzip -9 -n > "$work/rootfs.tgz"

# --- the whole-disk image
say "writing disk.raw.xz"
cmdline="root=LABEL=cloudimg-rootfs ro console=ttyS0,115200 panic=-1"
esp="$work/esp.img"
mkfs.vfat -C -n FLEETESP "$esp" $((ESP_MIB * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" "$vmlinuz" ::/vmlinuz
mcopy -i "$esp" "$work/initrd.img" ::/initrd.img
mcopy -i "$esp" "$BOOTX64" ::/EFI/BOOT/BOOTX64.EFI
printf 'DEFAULT fleet\nPROMPT 0\nTIMEOUT 0\nLABEL fleet\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' \
  "$cmdline" > "$work/syslinux.cfg"
printf 'default fleet-test-os.conf\ntimeout 0\n' > "$work/loader.conf"
printf 'title fleet test OS\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$cmdline" > "$work/entry.conf"
mcopy -i "$esp" "$work/syslinux.cfg" ::/syslinux.cfg
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/entry.conf" ::/loader/entries/fleet-test-os.conf
syslinux --install "$esp"
find "$work/diskroot" -exec touch -h -d @0 {} +
E2FSPROGS_FAKE_TIME=1 mke2fs -q -t ext4 -L cloudimg-rootfs -U 6f1e5a7c-0d1f-4c2e-9b1a-f1ee7e57d15c \
  -E root_owner=0:0,hash_seed=6f1e5a7c-0d1f-4c2e-9b1a-f1ee7e57d15c -d "$work/diskroot" \
  "$work/rootpart.img" "${ROOT_MIB}M" >/dev/null
disk="$work/disk.raw"
truncate -s $(( (1 + ESP_MIB + ROOT_MIB) * 1024 * 1024 )) "$disk"
printf 'label: dos\nlabel-id: 0x0f1ee700\nstart=2048, size=%s, type=ef, bootable\nstart=%s, type=83\n' \
  $((ESP_MIB * 2048)) $(( (1 + ESP_MIB) * 2048 )) | sfdisk -q "$disk"
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc status=none
dd if="$work/rootpart.img" of="$disk" bs=1M seek=$((1 + ESP_MIB)) conv=notrunc status=none
dd if="$MBR" of="$disk" bs=440 count=1 conv=notrunc status=none
raw_size=$(stat -c %s "$disk")
raw_sha=$(sha256sum "$disk" | cut -d' ' -f1)
xz -T2 -6 -c "$disk" > "$work/disk.raw.xz"

{
  printf 'kernel_version %s\n' "$kver"
  printf 'kernel_package %s\n' "$(dpkg-deb -f "$kernel_deb" Package) $(dpkg-deb -f "$kernel_deb" Version)"
  printf 'initrd_bytes %s\n' "$(stat -c %s "$work/initrd.img")"
  for file in rootfs.tgz disk.raw.xz; do
    printf '%s %s %s\n' "$file" "$(stat -c %s "$work/$file")" "$(sha256sum "$work/$file" | cut -d' ' -f1)"
  done
  printf 'disk.raw %s %s\n' "$raw_size" "$raw_sha"
  printf 'modules %s\n' "$(echo $MODULES)"
  printf 'mdadm %s\nlvm2 %s\n' "$(dpkg-query -W -f='${Version}' mdadm 2>/dev/null || echo unknown)" \
    "$(dpkg-query -W -f='${Version}' lvm2 2>/dev/null || echo unknown)"
} > "$work/manifest"
for file in rootfs.tgz disk.raw.xz manifest; do
  mv "$work/$file" "$out/$file.tmp" && mv "$out/$file.tmp" "$out/$file"
done
say "done in $(( $(date +%s) - started )) s: $(cat "$out/manifest" | grep -E '^(rootfs|disk)' | tr '\n' ';')"
