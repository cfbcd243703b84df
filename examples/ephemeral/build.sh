#!/usr/bin/env bash
# Builds fleet's ephemeral environment (the netbooted kernel + busybox initramfs that enlists,
# commissions and tests machines) from Debian packages; nothing prebuilt is committed.
#
#   examples/ephemeral/build.sh --out DIR [--kernel-deb PATH] [--cache DIR] [--modules "m1 m2"]
#
# - The kernel is Debian's generic one: the linux-image-6.1.0-*-amd64 package that
#   linux-image-amd64 depends on (fetched with `apt-get download` into the cache), or the .deb
#   given with --kernel-deb. It is unpacked with dpkg-deb into a temporary directory.
# - The initramfs holds the busybox-static binary (/bin/busybox), the kernel modules below with
#   everything they depend on (from modules.dep, made by `busybox depmod`; there is no kmod on the
#   machine), their own modules.dep/alias for busybox modprobe, and /init (init, next to this file).
# - For finding the BMC while enlisting: the IPMI modules (loaded by the runner, not by init) and
#   Debian's ipmitool (package ipmitool, from the build host: .ci/setup-ephemeral installs it)
#   with the shared libraries and the loader it needs (found with ldd, copied to their paths).
#   They are most of the initramfs: ~5.7 MB of its ~7.8 MB (libcrypto, libfreeipmi, libgcrypt).
# - Writes DIR/kernel, DIR/initrd (cpio newc, gzip) and DIR/manifest (kernel version, sha256 of
#   both). Safe to run again: the outputs are replaced atomically.
#
# The kernel command line the environment expects: console=ttyS0 panic=-1 fleet.url=URL
# fleet.role=ROLE fleet.mac=MAC [fleet.machine=NAME fleet.token=TOKEN] (see init).
set -euo pipefail

# The drivers the environment loads: NICs and disk controllers QEMU and common servers have.
# The inventory reads /proc and /sys only (DMI, block devices, PCI), which need no module.
MODULES="virtio_pci virtio_net virtio_blk virtio_scsi e1000 e1000e ahci nvme sd_mod"
# Carried but loaded only by the runner while enlisting (it looks for a BMC: /dev/ipmi0).
IPMI_MODULES="ipmi_msghandler ipmi_devintf ipmi_si"
IPMITOOL=/usr/bin/ipmitool

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
    -h|--help) usage ;;
    *) say "unknown argument: $1"; usage ;;
  esac
done
[ -n "$out" ] || { say "--out DIR is required"; usage; }

# Tools.
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing: apt-get install busybox-static"
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked: the initramfs needs busybox-static (apt-get install busybox-static)"
fi
[ -x "$IPMITOOL" ] || die "$IPMITOOL is missing: apt-get install ipmitool"
for tool in dpkg-deb gzip sha256sum find sort ldd; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done
[ -f "$here/init" ] || die "$here/init is missing"

mkdir -p "$out" "$cache" || die "cannot create $out or $cache"
out=$(cd "$out" && pwd)
cache=$(cd "$cache" && pwd)

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
  kernel_deb="$cache/${package}_${version//:/%3a}_amd64.deb"
  if [ ! -s "$kernel_deb" ]; then
    say "downloading $package $version into $cache"
    download=$(mktemp -d "$cache/download.XXXXXX")
    # apt-get download fetches as the _apt user when run as root.
    if [ "$(id -u)" = 0 ]; then chown _apt "$download" 2>/dev/null || true; fi
    (cd "$download" && apt-get download -qq "$package=$version" >/dev/null) \
      || { rm -rf "$download"; die "apt-get download $package=$version failed"; }
    mv "$download"/*.deb "$kernel_deb.tmp" && mv "$kernel_deb.tmp" "$kernel_deb"
    rm -rf "$download"
  fi
fi
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
read -r -a carried <<< "$IPMI_MODULES"
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

# The initramfs tree.
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,etc/fleet,root} "$root/lib/modules/$kver"
cp "$BUSYBOX" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$here/init" "$root/init"
for path in $paths; do
  mkdir -p "$root/lib/modules/$kver/$(dirname "$path")"
  cp "$moddir/$path" "$root/lib/modules/$kver/$path"
done
cp "$moddir/modules.builtin" "$moddir/modules.order" "$root/lib/modules/$kver/"
"$BUSYBOX" depmod -b "$root" "$kver"
printf '%s\n' "${wanted[@]}" > "$root/etc/fleet/modules"
# ipmitool and what the loader needs to run it: every library ldd names, at the path it names,
# and the loader itself (the rest of the initramfs is static).
libraries=$(ldd "$IPMITOOL" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
[ -n "$libraries" ] || die "ldd found no libraries for $IPMITOOL"
install -D -m 0755 "$IPMITOOL" "$root/usr/bin/ipmitool"
for library in $libraries; do
  [ -e "$library" ] || die "$IPMITOOL needs $library, which is missing"
  mkdir -p "$root$(dirname "$library")"
  cp -L "$library" "$root$library"
done
ipmitool_version=$(dpkg-query -W -f='${Version}' ipmitool 2>/dev/null || echo unknown)
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
  printf 'busybox %s\n' "$("$BUSYBOX" 2>&1 | head -n 1 | awk '{print $2}')"
  printf 'modules %s\n' "${wanted[*]}"
  printf 'carried_modules %s\n' "${carried[*]}"
  printf 'ipmitool %s (%s libraries)\n' "$ipmitool_version" "$(printf '%s\n' "$libraries" | wc -l)"
  printf 'cmdline console=ttyS0 panic=-1 fleet.url=URL fleet.role=ROLE fleet.mac=MAC [fleet.machine=NAME fleet.token=TOKEN]\n'
} > "$work/manifest"

mv "$work/kernel.out" "$out/kernel.tmp" && mv "$out/kernel.tmp" "$out/kernel"
mv "$work/initrd" "$out/initrd.tmp" && mv "$out/initrd.tmp" "$out/initrd"
mv "$work/manifest" "$out/manifest.tmp" && mv "$out/manifest.tmp" "$out/manifest"
say "done in $(( $(date +%s) - started )) s: $out/kernel ($kver), $out/initrd ($(wc -c < "$out/initrd") bytes)"
