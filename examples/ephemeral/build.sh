#!/usr/bin/env bash
# Builds fleet's ephemeral environment (the netbooted kernel + busybox initramfs that enlists,
# commissions and tests machines) from Debian packages; nothing prebuilt is committed.
#
#   examples/ephemeral/build.sh --out DIR [--kernel-deb PATH] [--cache DIR] [--modules "m1 m2"]
#   examples/ephemeral/build.sh --packages   (the Debian packages it copies programs from)
#
# - The kernel is Debian's generic one: the linux-image-6.1.0-*-amd64 package that
#   linux-image-amd64 depends on (fetched with `apt-get download` into the cache), or the .deb
#   given with --kernel-deb. It is unpacked with dpkg-deb into a temporary directory.
# - The initramfs is laid out like Debian's merged /usr. It holds Debian's busybox (package
#   busybox, dynamically linked: see "Tools" below for why not busybox-static) with links for its
#   applets, the kernel modules below with everything they depend on (from modules.dep, made by
#   `busybox depmod`; there is no kmod on the machine), their own modules.dep/alias for busybox
#   modprobe, and /init (init, next to this file).
# - Debian's programs the roles need (PROGRAMS: util-linux, gdisk, e2fsprogs, dosfstools, lvm2,
#   mdadm, bcache-tools, xz, zstd, gzip, GNU tar, curl, extlinux, efibootmgr, dropbear, hdparm,
#   nvme-cli, ipmitool), copied from this host's installed packages (.ci/setup-ephemeral
#   installs them: --packages lists them) with the shared libraries and the loader they need
#   (found with ldd, copied to their paths), syslinux's MBR code and systemd-boot (FILES), and
#   the configuration they need without udev (lvm.conf) and for SSH (passwd, shells, /root).
# - Writes DIR/kernel, DIR/initrd (cpio newc, gzip) and DIR/manifest (kernel version, sha256 of
#   both). Safe to run again: the outputs are replaced atomically.
#
# The kernel command line the environment expects: console=ttyS0 panic=-1 fleet.url=URL
# fleet.role=ROLE fleet.mac=MAC [fleet.machine=NAME fleet.token=TOKEN] (see init).
set -euo pipefail

# The drivers the environment loads: NICs and disk controllers QEMU and common servers have.
# The inventory reads /proc and /sys only (DMI, block devices, PCI), which need no module.
MODULES="virtio_pci virtio_net virtio_blk virtio_scsi e1000 e1000e ahci nvme sd_mod"
# Carried, loaded when asked for: the IPMI drivers (by the runner while enlisting: it looks for a
# BMC, /dev/ipmi0), UEFI variables (init, for efibootmgr), and what the deploy and erase roles
# use: filesystems, device mapper (lvm), md RAID, bcache, and the checksums ext4 and sd_mod ask
# the kernel for (it runs modprobe for them).
CARRIED_MODULES="ipmi_msghandler ipmi_devintf ipmi_si efivarfs ext4 vfat nls_cp437 nls_iso8859_1
  nls_ascii nls_utf8 xfs btrfs dm_mod md_mod raid0 raid1 raid456 raid10 bcache crc32c_generic crc32c_intel
  crct10dif_generic crct10dif_pclmul"

# Debian's programs the roles run (enlist, deploy, erase, rescue), at their paths on this host
# (merged /usr), each with its libraries. The CONTRACT's tool set and a few more: lsblk,
# e2fsck, resize2fs, dmsetup, bcache-super-show.
PROGRAMS="
/usr/sbin/sfdisk /usr/sbin/sgdisk /usr/sbin/wipefs /usr/sbin/blkid /usr/sbin/blkdiscard
/usr/sbin/blockdev /usr/bin/partx /usr/bin/lsblk
/usr/sbin/mke2fs /usr/sbin/mkfs.ext4 /usr/sbin/mkfs.ext3 /usr/sbin/mkfs.ext2 /usr/sbin/tune2fs
/usr/sbin/e2label /usr/sbin/e2fsck /usr/sbin/fsck.ext4 /usr/sbin/resize2fs
/usr/sbin/mkfs.fat /usr/sbin/mkfs.vfat /usr/sbin/fsck.fat /usr/sbin/fsck.vfat
/usr/sbin/lvm /usr/sbin/dmsetup /usr/sbin/mdadm /usr/sbin/make-bcache /usr/sbin/bcache-super-show
/usr/bin/xz /usr/bin/unxz /usr/bin/xzcat /usr/bin/zstd /usr/bin/zstdcat /usr/bin/unzstd
/usr/bin/gzip /usr/bin/tar /usr/bin/curl
/usr/bin/extlinux /usr/bin/efibootmgr /usr/sbin/dropbear /usr/bin/dropbearkey
/usr/sbin/hdparm /usr/sbin/nvme /usr/bin/ipmitool
"
# Data files at their Debian paths: syslinux's MBR code, systemd-boot, mke2fs's defaults.
FILES="
/usr/lib/syslinux/mbr/mbr.bin /usr/lib/syslinux/mbr/gptmbr.bin /usr/lib/syslinux/mbr/altmbr.bin
/usr/lib/systemd/boot/efi/systemd-bootx64.efi /etc/mke2fs.conf
"
# The Debian packages all of that comes from (.ci/setup-ephemeral installs them: --packages).
packages() {
  printf '%s\n' busybox-static util-linux fdisk gdisk e2fsprogs dosfstools lvm2 dmsetup mdadm \
    bcache-tools xz-utils zstd gzip tar curl extlinux syslinux-common systemd-boot-efi efibootmgr \
    dropbear-bin hdparm nvme-cli ipmitool
}
# lvm's commands (vgchange, pvcreate, ...): the links to lvm that package lvm2 ships.
lvm_links() {
  dpkg -L lvm2 | while read -r path; do
    [ -L "$path" ] && [ "$(readlink "$path")" = lvm ] && echo "/usr${path#/usr}"
  done
  return 0
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=""
kernel_deb=""
cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/fleet-ephemeral"
extra_modules=""

say() { printf '[ephemeral] %s\n' "$*" >&2; }
die() { printf '[ephemeral] error: %s\n' "$*" >&2; exit 1; }
usage() {
  sed -n '5p' "${BASH_SOURCE[0]}" | sed 's/^#   //' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --kernel-deb) [ $# -ge 2 ] || usage; kernel_deb=$2; shift 2 ;;
    --kernel-deb=*) kernel_deb=${1#--kernel-deb=}; shift ;;
    --cache) [ $# -ge 2 ] || usage; cache=$2; shift 2 ;;
    --cache=*) cache=${1#--cache=}; shift ;;
    --modules) [ $# -ge 2 ] || usage; extra_modules=$2; shift 2 ;;
    --modules=*) extra_modules=${1#--modules=}; shift ;;
    --packages) packages; exit 0 ;;
    -h|--help) usage ;;
    *) say "unknown argument: $1"; usage ;;
  esac
done
[ -n "$out" ] || { say "--out DIR is required"; usage; }

# Tools. The host's busybox-static runs depmod and cpio here; the initramfs gets Debian's
# dynamically linked busybox (package busybox, the same version), because busybox-static is built
# to prefer its applets: its sh runs the tar, xz, gzip, blkdiscard... applets even where GNU tar
# or util-linux is in PATH. The dynamic one runs what PATH finds (applets through their links).
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing: apt-get install busybox-static"
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked: the build needs busybox-static (apt-get install busybox-static)"
fi
for tool in dpkg-deb gzip xz sha256sum find sort ldd; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done
[ -f "$here/init" ] || die "$here/init is missing"

mkdir -p "$out" "$cache" || die "cannot create $out or $cache"
out=$(cd "$out" && pwd)
cache=$(cd "$cache" && pwd)

# PACKAGE VERSION: the path of its .deb in the cache, fetched with apt-get download if missing.
download_deb() {
  local package=$1 version=$2 deb download
  deb="$cache/${package}_${version//:/%3a}_amd64.deb"
  if [ ! -s "$deb" ]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get is missing: cannot fetch $package $version"
    say "downloading $package $version into $cache"
    download=$(mktemp -d "$cache/download.XXXXXX")
    # apt-get download fetches as the _apt user when run as root.
    if [ "$(id -u)" = 0 ]; then chown _apt "$download" 2>/dev/null || true; fi
    (cd "$download" && apt-get download -qq "$package=$version" >/dev/null) \
      || { rm -rf "$download"; die "apt-get download $package=$version failed (run apt-get update)"; }
    mv "$download"/*.deb "$deb.tmp" && mv "$deb.tmp" "$deb"
    rm -rf "$download"
  fi
  echo "$deb"
}

# The kernel package.
if [ -n "$kernel_deb" ]; then
  [ -f "$kernel_deb" ] || die "--kernel-deb $kernel_deb: no such file"
  kernel_deb=$(cd "$(dirname "$kernel_deb")" && pwd)/$(basename "$kernel_deb")
else
  command -v apt-get >/dev/null 2>&1 || die "apt-get is missing: give the kernel with --kernel-deb PATH"
  package=$(apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)
  [ -n "$package" ] || die "apt knows no linux-image-amd64 dependency (run apt-get update, or give --kernel-deb PATH)"
  version=$(apt-cache show --no-all-versions "$package" 2>/dev/null | awk '/^Version:/ {print $2; exit}' || true)
  [ -n "$version" ] || die "apt has no version of $package (run apt-get update)"
  kernel_deb=$(download_deb "$package" "$version")
fi
# Debian's dynamically linked busybox, the version of the host's busybox-static.
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || true)
[ -n "$busybox_version" ] || die "busybox-static is not installed: run .ci/setup-ephemeral"
busybox_deb=$(download_deb busybox "$busybox_version")
package_name=$(dpkg-deb -f "$kernel_deb" Package) || die "$kernel_deb is not a Debian package"
package_version=$(dpkg-deb -f "$kernel_deb" Version)
case "$package_name" in
  linux-image-*) ;;
  *) die "$kernel_deb is $package_name, not a linux-image package" ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/fleet-ephemeral.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$(date +%s)

say "unpacking $package_name $package_version"
dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"
MACHINE_BUSYBOX="$work/busybox/bin/busybox"
[ -x "$MACHINE_BUSYBOX" ] || die "$busybox_deb has no bin/busybox"
versions=$(ls "$work/kernel/lib/modules")
[ "$(printf '%s\n' "$versions" | wc -l)" = 1 ] || die "$package_name holds several module trees: $versions"
kver=$versions
vmlinuz="$work/kernel/boot/vmlinuz-$kver"
[ -f "$vmlinuz" ] || die "$package_name has no boot/vmlinuz-$kver"
if find "$work/kernel/lib/modules/$kver" -name '*.ko.*' | grep -q .; then
  die "$package_name has compressed modules; busybox modprobe loads plain .ko files only"
fi

# modules.dep of the whole kernel (busybox depmod writes full dependency lists).
"$BUSYBOX" depmod -b "$work/kernel" "$kver"
moddir="$work/kernel/lib/modules/$kver"
read -r -a wanted <<< "$MODULES $extra_modules"
read -r -a carried <<< "$(echo $CARRIED_MODULES)"
# The files of the wanted (and carried) modules and of everything they depend on. Module names
# treat - and _ alike (nvme-core.ko is nvme_core).
paths=$(awk -v wanted="${wanted[*]} ${carried[*]}" '
  function name(path) { sub(/.*\//, "", path); sub(/\.ko$/, "", path); gsub(/-/, "_", path); return path }
  BEGIN { n = split(wanted, list, /[ \t]+/); for (i = 1; i <= n; i++) if (list[i] != "") want[list[i]] = 1 }
  {
    target = $1; sub(/:$/, "", target)
    if (name(target) in want) {
      found[name(target)] = 1
      print target
      for (i = 2; i <= NF; i++) print $i
    }
  }
  END { for (m in want) if (!(m in found)) { print "MISSING " m; } }
' "$moddir/modules.dep" | sort -u)
missing=$(printf '%s\n' "$paths" | awk '/^MISSING / {print $2}')
if [ -n "$missing" ]; then
  # A module built into the kernel needs no file.
  for module in $missing; do
    if ! sed 's/.*\///; s/\.ko$//; s/-/_/g' "$moddir/modules.builtin" | grep -qx "$module"; then
      die "$package_name has no module $module"
    fi
    say "$module is built into the kernel"
  done
  paths=$(printf '%s\n' "$paths" | grep -v '^MISSING ' || true)
fi

# The initramfs tree, laid out like Debian's merged /usr (/bin, /sbin, /lib, /lib64 link into
# /usr), so a program is found at its Debian path either way and `busybox --install -s` (in
# init) never shadows a real program: it skips every name that exists.
root="$work/root"
mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{dev,proc,sys,run,tmp,etc/fleet,root,var/log} \
  "$root/usr/lib/modules/$kver"
for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$root/$dir"; done
ln -s ../run "$root/var/run"
cp "$MACHINE_BUSYBOX" "$root/usr/bin/busybox"
ln -s busybox "$root/usr/bin/sh"
ldd "$MACHINE_BUSYBOX" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' > "$work/libraries"
install -m 0755 "$here/init" "$root/init"
for path in $paths; do
  mkdir -p "$root/lib/modules/$kver/$(dirname "$path")"
  cp "$moddir/$path" "$root/lib/modules/$kver/$path"
done
cp "$moddir/modules.builtin" "$moddir/modules.order" "$root/lib/modules/$kver/"
"$BUSYBOX" depmod -b "$root" "$kver"
printf '%s\n' "${wanted[@]}" > "$root/etc/fleet/modules"

# Debian's programs, each at its path with the shared libraries ldd names (and the loader); a
# link (mkfs.ext4 -> mke2fs) is copied as the link, and what it points at with it.
add_program() {
  local path=$1
  [ -e "$path" ] || die "$path is missing: run .ci/setup-ephemeral (it installs $(packages | tr '\n' ' '))"
  [ -e "$root$path" ] && return 0
  mkdir -p "$root$(dirname "$path")"
  if [ -L "$path" ]; then
    cp -P "$path" "$root$path"
    add_program "$(readlink -f "$path")"
    return 0
  fi
  cp "$path" "$root$path"
  chmod 0755 "$root$path"
  if ldd "$path" 2>/dev/null | grep -q 'not found'; then
    die "$path needs libraries this host lacks: $(ldd "$path" | grep 'not found' | tr '\n' ' ')"
  fi
  ldd "$path" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' \
    >> "$work/libraries"
}
for program in $PROGRAMS $(lvm_links); do add_program "$program"; done
libraries=$(sort -u "$work/libraries")
[ -n "$libraries" ] || die "ldd found no libraries for $PROGRAMS"
for library in $libraries; do
  [ -e "$library" ] || die "a program needs $library, which is missing"
  mkdir -p "$root$(dirname "$library")"
  cp -L "$library" "$root$library"
done
for file in $FILES; do
  [ -f "$file" ] || die "$file is missing: run .ci/setup-ephemeral"
  mkdir -p "$root$(dirname "$file")"
  cp "$file" "$root$file"
done

# busybox's applets, as links, where no Debian program of the same name is (in /usr/bin or
# /usr/sbin: /usr/bin comes first in PATH, and a busybox blkdiscard there would hide the real one).
for applet in $("$MACHINE_BUSYBOX" --list-full); do
  name=${applet##*/}
  [ "$name" != "$applet" ] || continue   # linuxrc
  [ -e "$root/usr/bin/$name" ] || [ -e "$root/usr/sbin/$name" ] || ln -s /bin/busybox "$root/usr/${applet#usr/}"
done

# Configuration the programs need in an initramfs without udev or systemd.
mkdir -p "$root/etc/lvm" "$root/etc/dropbear"
cat > "$root/etc/lvm/lvm.conf" <<'LVM'
# fleet's ephemeral environment: no udev, no lvmetad/lvmpolld/dmeventd, nothing kept on disk.
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
global {
    use_lvmpolld = 0
    event_activation = 0
}
backup {
    backup = 0
    archive = 0
}
LVM
# dropbear: root with a shell and a home (/root/.ssh/authorized_keys is the rescue role's).
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:*:19000:0:99999:7:::\n' > "$root/etc/shadow"
chmod 0600 "$root/etc/shadow"
printf 'root:x:0:\n' > "$root/etc/group"
printf '/bin/sh\n' > "$root/etc/shells"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"
chmod 0700 "$root/root"
package_versions=$(packages | while read -r package; do
  printf '%s=%s ' "$package" "$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || echo unknown)"
done)
# The runner powers a machine off only where this file exists (never on a live host).
printf 'kernel %s\npackage %s %s\n' "$kver" "$package_name" "$package_version" > "$root/etc/fleet/ephemeral"
if [ "$(id -u)" = 0 ]; then
  mknod -m 0600 "$root/dev/console" c 5 1   # else the kernel's built-in initramfs provides it
fi

# Fixed times, so the same inputs give the same archive.
find "$root" -exec touch -h -d @0 {} +
say "writing the initramfs ($(printf '%s\n' "$paths" | grep -c . || true) modules)"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) \
  | gzip -9 -n > "$work/initrd"
[ -s "$work/initrd" ] || die "the initramfs is empty"
cp "$vmlinuz" "$work/kernel.out"

kernel_sha=$(sha256sum "$work/kernel.out" | cut -d' ' -f1)
initrd_sha=$(sha256sum "$work/initrd" | cut -d' ' -f1)
{
  printf 'kernel_version %s\n' "$kver"
  printf 'kernel_package %s %s\n' "$package_name" "$package_version"
  printf 'kernel_sha256 %s\n' "$kernel_sha"
  printf 'initrd_sha256 %s\n' "$initrd_sha"
  printf 'initrd_bytes %s\n' "$(wc -c < "$work/initrd")"
  printf 'busybox %s (package busybox %s)\n' "$("$MACHINE_BUSYBOX" 2>&1 | head -n 1 | awk '{print $2}')" "$busybox_version"
  printf 'modules %s\n' "${wanted[*]}"
  printf 'carried_modules %s\n' "${carried[*]}"
  printf 'programs %s (%s libraries)\n' "$(printf '%s\n' $PROGRAMS | wc -l)" "$(printf '%s\n' "$libraries" | wc -l)"
  printf 'packages %s\n' "${package_versions% }"
  printf 'cmdline console=ttyS0 panic=-1 fleet.url=URL fleet.role=ROLE fleet.mac=MAC [fleet.machine=NAME fleet.token=TOKEN]\n'
} > "$work/manifest"

mv "$work/kernel.out" "$out/kernel.tmp" && mv "$out/kernel.tmp" "$out/kernel"
mv "$work/initrd" "$out/initrd.tmp" && mv "$out/initrd.tmp" "$out/initrd"
mv "$work/manifest" "$out/manifest.tmp" && mv "$out/manifest.tmp" "$out/manifest"
say "done in $(( $(date +%s) - started )) s: $out/kernel ($kver), $out/initrd ($(wc -c < "$out/initrd") bytes)"
