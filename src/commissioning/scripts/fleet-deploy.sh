#!/bin/sh
# fleet built-in deploy script (fleet-deploy): installs the machine's OS. Run by fleet-runner.sh
# in the ephemeral environment for a deploying run. DESTRUCTIVE: it takes apart and overwrites
# the disks of the machine's layout (or the target disk of a whole-disk image).
#
# Input: $FLEET_DEPLOYMENT, the deployment JSON the runner fetched (CONTRACT: image, layout,
# disks, target_disk, network, kernel_params, ssh_keys, user_data, vendor_data, callback).
# Progress: one line `PHASE [DONE TOTAL]` in $FLEET_PROGRESS (the runner's heartbeats carry it).
# Phases: check, clear, partition, format, mount, write-image, verify, bootloader, configure.
# Output: every step on stdout; a failure's last line, on stderr, is `fleet-deploy: PHASE: why`.
#
# 1. check: the disks of the layout found here (by serial, then by-id path, then name) and at
#    least as large as planned; the image's raw size fits (a whole-disk image: the target disk;
#    a tarball: the layout's filesystems); the tools there. Nothing is written before this.
# 2. clear: what the disks hold is taken apart (curtin's "clear holders"): mounts and swaps,
#    then holders depth first (bcache, LVM logical volumes, md arrays), then signatures wiped
#    (wipefs) and the first and last MiB zeroed.
# 3. A tarball (tgz, tar-xz, tar-zst): partition (sfdisk, exact starts and sizes), format (md,
#    bcache, LVM, then mkfs), mount under $target, write-image (download | decompress | tar,
#    both SHA-256s computed while streaming), bootloader (BIOS: extlinux + syslinux's MBR;
#    UEFI: systemd-boot on the ESP with the kernel and initrd copied there), configure (fstab by
#    UUID, netplan, cloud-init seed, keys, the first-boot call-back).
#    A whole-disk image (raw, raw-gz, raw-xz, raw-zst): write-image streams it to the target
#    disk (dd) while tee feeds sha256sum through fifos; verify compares both digests and the
#    byte count before anything else touches the disk (a mismatch zeroes the first MiB written
#    so the machine cannot boot half an image), moves the backup GPT to the disk's end, re-reads
#    the partitions; configure mounts the image's root filesystem (label cloudimg-rootfs, root
#    or fleet-root, else the biggest ext4) and writes the same files.
# Test hooks from /proc/cmdline: fleet.test.corrupt_at=BYTE flips the byte at BYTE of the
# decompressed stream (the streaming check must catch it); fleet.test.dd_baseline=1 first
# writes a whole-disk image with plain dd and logs that rate.
# FLEET_SYSFS FLEET_DEVFS FLEET_PROCFS FLEET_TARGET FLEET_SYSLINUX FLEET_SYSTEMD_BOOT point it
# at other trees (the tests use fake ones, with stand-in commands on PATH).
sys=${FLEET_SYSFS:-/sys}
dev=${FLEET_DEVFS:-/dev}
proc=${FLEET_PROCFS:-/proc}
target=${FLEET_TARGET:-/mnt/fleet-target}
syslinux=${FLEET_SYSLINUX:-/usr/lib/syslinux}
sdboot=${FLEET_SYSTEMD_BOOT:-/usr/lib/systemd/boot/efi/systemd-bootx64.efi}
deployment=${FLEET_DEPLOYMENT:-}
progress_file=${FLEET_PROGRESS:-}
# How long to wait for a device node, a bcache device to come or go (seconds).
settle=${FLEET_SETTLE:-20}
# No udev here: LVM and device-mapper make their own device nodes.
DM_DISABLE_UDEV=1
export DM_DISABLE_UDEV
phase=""
mounted=""
tab=$(printf '\t')

work=$(mktemp -d) || { echo "fleet-deploy: check: cannot make a temporary directory" >&2; exit 2; }

# --- output, progress, failure ------------------------------------------------------------------
say() { printf '%s\n' "$*"; }

# tool NAME: NAME's own program on PATH (busybox sh runs its applets before looking at PATH,
# and busybox's blkid, mkfs.vfat, tar ... lack what the Debian tools have), else NAME.
tool() {
  saved_ifs=$IFS
  IFS=:
  for directory in $PATH; do
    [ -x "$directory/$1" ] && [ ! -d "$directory/$1" ] || continue
    case $(readlink -f "$directory/$1") in */busybox) continue ;; esac
    IFS=$saved_ifs
    echo "$directory/$1"
    return
  done
  IFS=$saved_ifs
  echo "$1"
}

# progress PHASE [DONE TOTAL]: the line the runner's heartbeats carry; a new phase is logged.
progress() {
  if [ "$1" != "$phase" ]; then say "== $1"; fi
  phase=$1
  [ -n "$progress_file" ] || return 0
  printf '%s\n' "$*" >"$progress_file.new" && mv -f "$progress_file.new" "$progress_file"
}

unmount_all() {
  for point in $mounted; do
    "$(tool umount)" "$point" >/dev/null 2>&1 || "$(tool umount)" -l "$point" >/dev/null 2>&1
  done
  mounted=""
}

# fail PHASE MESSAGE: stops with the contract's last line. Called in a subshell (a command
# substitution, a pipeline) it stops the script too: the TERM trap unmounts and cleans up.
fail() {
  printf 'fleet-deploy: %s: %s\n' "$1" "$2" >&2
  : >"$work/failed"
  kill -TERM "$main"
  exit 1
}

# shellcheck disable=SC2317 # run by the trap
on_term() {
  trap '' TERM
  [ -e "$work/failed" ] || printf 'fleet-deploy: %s: stopped by a signal (the deploy timeout?)\n' "$phase" >&2
  unmount_all
  rm -rf "$work"
  exit 1
}
main=$$
trap on_term TERM INT HUP

# run COMMAND...: logs it, runs it (its output indented on stdout); a failure fails the phase
# with the command's last line of output.
run() {
  command=$(tool "$1")
  shift
  say "+ $command $*"
  "$command" "$@" </dev/null >"$work/out" 2>&1
  code=$?
  sed 's/^/  /' "$work/out"
  [ $code = 0 ] && return 0
  fail "$phase" "${command##*/} failed (exit $code): $(last_words "$work/out")"
}

# run_input FILE COMMAND...: run with FILE on stdin.
run_input() {
  input=$1
  command=$(tool "$2")
  shift 2
  say "+ $command $* < $(basename "$input")"
  "$command" "$@" <"$input" >"$work/out" 2>&1
  code=$?
  sed 's/^/  /' "$work/out"
  [ $code = 0 ] && return 0
  fail "$phase" "${command##*/} failed (exit $code): $(last_words "$work/out")"
}


read_attr() { attr=; { read -r attr <"$1"; } 2>/dev/null; }

# last_words FILE: a command's last three lines of output as one line (at most 400 bytes).
last_words() {
  grep -v '^[[:space:]]*$' "$1" | tail -n 3 | tr '\n\t' '  ' | tr -s ' ' | sed 's/^ //; s/ $//' | cut -c 1-400
}

trim() {
  trimmed=$1
  trimmed=${trimmed#"${trimmed%%[! ]*}"}
  trimmed=${trimmed%"${trimmed##*[! ]}"}
}

# seconds since boot, in hundredths
now_cs() {
  if [ -r "$proc/uptime" ]; then
    awk '{ printf "%d\n", $1 * 100 }' "$proc/uptime"
  else
    echo $(($(date +%s) * 100))
  fi
}

# rate BYTES CS: "N bytes in S s (R MB/s)"
rate() {
  awk -v b="$1" -v cs="$2" 'BEGIN { if (cs < 1) cs = 1; printf "%d bytes in %.2f s (%.1f MB/s)\n", b, cs / 100, b / (cs / 100) / 1000000 }'
}

# --- the deployment JSON --------------------------------------------------------------------
# Parsed once by busybox awk into lines `PATH<TAB>TYPE<TAB>VALUE` (PATH: keys and array indices
# joined by `/`, like layout/disks/0/size; TYPE: s string (VALUE still JSON-escaped, so one
# line), n number (as written: 64-bit sizes stay exact), b boolean, z null, a array and o
# object (VALUE: the count of members)). `j PATH` prints a value (strings decoded).
json_flatten='
function bad(m) { if (err == "") err = m " at byte " p; p = n + 1 }
function ws(   c) {
  while (p <= n) { c = substr(s, p, 1); if (c == " " || c == "\t" || c == "\n" || c == "\r") p++; else break }
}
function join(path, key) { return path == "" ? key : path "/" key }
function str(   start, chunk, c) {
  p++; start = p
  while (p <= n) {
    chunk = substr(s, p, 4096)
    if (!match(chunk, /["\\]/)) { p += length(chunk); continue }
    p += RSTART - 1; c = substr(s, p, 1)
    if (c == "\"") { p++; return substr(s, start, p - 1 - start) }
    p += 2
  }
  bad("unterminated string"); return ""
}
function value(path,   c, count, key) {
  if (err != "") return
  ws(); c = substr(s, p, 1)
  if (c == "{") {
    p++; ws(); count = 0
    if (substr(s, p, 1) == "}") { p++; print path "\to\t0"; return }
    while (err == "") {
      ws(); if (substr(s, p, 1) != "\"") { bad("expected a key"); return }
      key = str(); ws()
      if (substr(s, p, 1) != ":") { bad("expected :"); return }
      p++; value(join(path, key)); count++; ws()
      c = substr(s, p, 1); p++
      if (c == "}") break
      if (c != ",") { bad("expected , or }"); return }
    }
    print path "\to\t" count
  } else if (c == "[") {
    p++; ws(); count = 0
    if (substr(s, p, 1) == "]") { p++; print path "\ta\t0"; return }
    while (err == "") {
      value(join(path, count)); count++; ws()
      c = substr(s, p, 1); p++
      if (c == "]") break
      if (c != ",") { bad("expected , or ]"); return }
    }
    print path "\ta\t" count
  } else if (c == "\"") {
    key = str(); print path "\ts\t" key
  } else if (match(substr(s, p, 64), /^-?[0-9][0-9.eE+-]*/)) {
    print path "\tn\t" substr(s, p, RLENGTH); p += RLENGTH
  } else if (substr(s, p, 4) == "true") { print path "\tb\ttrue"; p += 4
  } else if (substr(s, p, 5) == "false") { print path "\tb\tfalse"; p += 5
  } else if (substr(s, p, 4) == "null") { print path "\tz\t"; p += 4
  } else bad("unexpected character")
}
BEGIN { RS = "\001" }
{ s = s $0 }
END {
  n = length(s); p = 1
  value(""); ws()
  if (err == "" && p <= n) bad("text after the value")
  if (err != "") { print err | "cat 1>&2"; exit 1 }
}'

json_decode='
function hexval(h,   i, v) {
  v = 0
  for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", tolower(substr(h, i, 1))) - 1
  return v
}
function utf8(c) {
  if (c == 0) return ""
  if (c < 128) return sprintf("%c", c)
  if (c < 2048) return sprintf("%c%c", 192 + int(c / 64), 128 + c % 64)
  return sprintf("%c%c%c", 224 + int(c / 4096), 128 + int(c / 64) % 64, 128 + c % 64)
}
function dec(v,   out, i, e) {
  if (index(v, "\\") == 0) return v
  out = ""
  while ((i = index(v, "\\")) > 0) {
    out = out substr(v, 1, i - 1); e = substr(v, i + 1, 1)
    if (e == "u") { out = out utf8(hexval(substr(v, i + 2, 4))); v = substr(v, i + 6); continue }
    if (e == "n") out = out "\n"
    else if (e == "t") out = out "\t"
    else if (e == "r") out = out "\r"
    else if (e == "b") out = out "\b"
    else if (e == "f") out = out "\f"
    else out = out e
    v = substr(v, i + 2)
  }
  return out v
}'

flat=$work/deployment.flat

# j PATH: the value at PATH (a string decoded), nothing when it is absent or null.
j() {
  awk -F '\t' -v want="$1" "$json_decode"'
    $1 == want { if ($2 == "s") printf "%s\n", dec($3); else if ($2 != "z") print $3; exit }' "$flat"
}

# jtype PATH: s n b z a o, or nothing when absent.
jtype() { awk -F '\t' -v want="$1" '$1 == want { print $2; exit }' "$flat"; }

# jcount PATH: the number of members of an array (0 when absent or null).
jcount() {
  awk -F '\t' -v want="$1" '$1 == want { if ($2 == "a" || $2 == "o") n = $3; exit } END { print n + 0 }' "$flat"
}

# jfile PATH FILE: the string at PATH into FILE exactly; fails when it is absent or not a string.
jfile() {
  awk -F '\t' -v want="$1" -v out="$2" "$json_decode"'
    $1 == want { if ($2 != "s") exit 1; printf "%s", dec($3) > out; found = 1; exit }
    END { exit found ? 0 : 1 }' "$flat"
}

# --- disks ------------------------------------------------------------------------------------
# partition_name DISK NUMBER: sda 2 → sda2, nvme0n1 2 → nvme0n1p2
partition_name() {
  case $1 in *[0-9]) echo "${1}p$2" ;; *) echo "$1$2" ;; esac
}

# The disks of this machine: kernel names under $sys/block that are disks (as commissioning
# sees them).
local_disks() {
  for path in "$sys"/block/*; do
    [ -e "$path" ] || continue
    name=${path##*/}
    case $name in loop* | ram* | zram* | dm-* | md* | sr* | fd* | nbd* | bcache* | mmcblk*boot* | mmcblk*rpmb) continue ;; esac
    read_attr "$path/hidden"
    [ "$attr" != 1 ] || continue
    read_attr "$path/size"
    case $attr in '' | *[!0-9]* | 0) continue ;; esac
    echo "$name"
  done
}

# disk_bytes NAME: the size in bytes (sysfs counts 512-byte sectors).
disk_bytes() {
  read_attr "$sys/class/block/$1/size"
  [ -n "$attr" ] || read_attr "$sys/block/$1/size"
  echo $((${attr:-0} * 512))
}

# disk_serials NAME: every serial sysfs gives the disk, one a line (serial, device/serial, the
# unit serial of VPD page 0x80, wwid), trimmed.
disk_serials() {
  for file in "$sys/block/$1/serial" "$sys/block/$1/device/serial" "$sys/block/$1/device/wwid"; do
    read_attr "$file"
    trim "$attr"
    [ -n "$trimmed" ] && echo "$trimmed"
  done
  if [ -r "$sys/block/$1/device/vpd_pg80" ]; then
    trim "$(dd if="$sys/block/$1/device/vpd_pg80" bs=1 skip=4 2>/dev/null | tr -d '\000')"
    [ -n "$trimmed" ] && echo "$trimmed"
  fi
}

# find_disk NAME SERIAL ID_PATH: the local disk for a planned one: by serial, by its by-id link
# (where /dev/disk/by-id exists), then by name. Prints nothing when none is found.
find_disk() {
  if [ -n "$2" ]; then
    for candidate in $(local_disks); do
      if disk_serials "$candidate" | grep -qxF "$2"; then echo "$candidate"; return; fi
    done
  fi
  if [ -n "$3" ] && [ -e "$dev/${3#/dev/}" ]; then
    linked=$(readlink -f "$dev/${3#/dev/}")
    linked=${linked##*/}
    if [ -e "$sys/block/$linked" ]; then echo "$linked"; return; fi
  fi
  if [ -z "$2" ] && [ -e "$sys/block/$1" ]; then echo "$1"; fi
}

# What is here, for messages: "sda (32212254720 bytes, serial S1), ..."
disks_here() {
  list=""
  for name in $(local_disks); do
    serial=$(disk_serials "$name" | head -n 1)
    list="$list${list:+, }$name ($(disk_bytes "$name") bytes${serial:+, serial $serial})"
  done
  echo "${list:-none}"
}

# mapped NAME: the local disk a planned disk was found as.
mapped() { awk -v want="$1" '$1 == want { print $2; exit }' "$work/map"; }

# node NAME: the device node of a kernel block device (disk, partition, md, dm, bcache), made
# from sysfs when the environment's /dev lacks it; waits up to 20 s for it to appear.
node() {
  waited=0
  while :; do
    if [ -b "$dev/$1" ] || [ -f "$dev/$1" ]; then echo "$dev/$1"; return 0; fi
    read_attr "$sys/class/block/$1/dev"
    if [ -n "$attr" ] && mknod "$dev/$1" b "${attr%:*}" "${attr#*:}" 2>/dev/null; then
      echo "$dev/$1"
      return 0
    fi
    [ $waited -lt "$settle" ] || return 1
    if [ $waited = 0 ] && [ "$dev" = /dev ]; then mdev -s 2>/dev/null; fi
    sleep 1
    waited=$((waited + 1))
  done
}

need_node() { node "$1" || fail "$phase" "no device node for $1 in $dev (and none could be made from $sys/class/block/$1/dev)"; }

# --- references to the layout's block devices -----------------------------------------------
# A layout Device ({kind: disk|partition|array, ...}) at PATH as a reference: disk:NAME,
# part:NAME:NUMBER, array:NAME (planned names).
device_ref() {
  case $(j "$1/kind") in
    disk) echo "disk:$(j "$1/disk")" ;;
    partition) echo "part:$(j "$1/disk"):$(j "$1/number")" ;;
    array) echo "array:$(j "$1/name")" ;;
    *) fail check "unknown device kind '$(j "$1/kind")' at $1 in the layout" ;;
  esac
}

# device_of REF: the device node of a reference, once it exists (lv:VG:LV, bcache:NAME too).
device_of() {
  ref=$1
  case $ref in
    disk:*) need_node "$(mapped "${ref#disk:}")" ;;
    part:*)
      rest=${ref#part:}
      need_node "$(partition_name "$(mapped "${rest%:*}")" "${rest##*:}")" ;;
    array:*) need_node "${ref#array:}" ;;
    bcache:*)
      actual=$(awk -v want="${ref#bcache:}" '$1 == want { print $2; exit }' "$work/bcaches")
      need_node "${actual:-${ref#bcache:}}" ;;
    lv:*)
      rest=${ref#lv:}
      if [ -e "$dev/${rest%%:*}/${rest#*:}" ]; then echo "$dev/${rest%%:*}/${rest#*:}"
      else echo "$dev/mapper/$(echo "${rest%%:*}" | sed 's/-/--/g')-$(echo "${rest#*:}" | sed 's/-/--/g')"
      fi ;;
  esac
}

# kernel_name REF: the kernel name of a disk, partition or array reference (sda2, md0).
kernel_name() {
  case $1 in
    disk:*) mapped "${1#disk:}" ;;
    part:*) rest=${1#part:}; partition_name "$(mapped "${rest%:*}")" "${rest##*:}" ;;
    array:*) echo "${1#array:}" ;;
  esac
}

# --- 1. check ---------------------------------------------------------------------------------
progress check
[ -n "$deployment" ] && [ -r "$deployment" ] || fail check "no deployment to read (FLEET_DEPLOYMENT='$deployment'): the runner fetches it for a deploying run"
if ! awk "$json_flatten" "$deployment" >"$flat" 2>"$work/json.err"; then
  fail check "the deployment JSON does not parse: $(head -n 1 "$work/json.err")"
fi
[ "$(jtype "")" = o ] || fail check "the deployment JSON is not an object"

machine=$(j machine)
hostname=$(j hostname)
firmware=$(j firmware)
format=$(j image/format)
image_name=$(j image/name)
image_url=$(j image/url)
image_size=$(j image/size)
image_sha=$(j image/sha256)
raw_size=$(j image/raw_size)
raw_sha=$(j image/raw_sha256)
[ -n "$hostname" ] || hostname=$machine
say "deploying ${machine:-?} (hostname ${hostname:-?}, firmware ${firmware:-?}): image ${image_name:-?} ($format, ${image_size:-?} bytes, ${raw_size:-?} unpacked) from $image_url"
case $format in
  tgz) unpack="$(tool gzip) -dc" kind=tarball ;;
  tar-xz) unpack="$(tool xz) -dc" kind=tarball ;;
  tar-zst) unpack="$(tool zstd) -dcq" kind=tarball ;;
  raw) unpack="" kind=disk ;;
  raw-gz) unpack="$(tool gzip) -dc" kind=disk ;;
  raw-xz) unpack="$(tool xz) -dc" kind=disk ;;
  raw-zst) unpack="$(tool zstd) -dcq" kind=disk ;;
  *) fail check "image format '${format}' is not one this script writes (tgz, tar-xz, tar-zst, raw, raw-gz, raw-xz, raw-zst)" ;;
esac
case $firmware in bios | uefi) ;; *) fail check "firmware '$firmware' is neither bios nor uefi" ;; esac
[ -n "$image_url" ] || fail check "the deployment names no image URL"
# Digests in lower case; one that is not 64 hex digits is refused, not skipped.
image_sha=$(printf '%s' "$image_sha" | tr 'A-F' 'a-f')
raw_sha=$(printf '%s' "$raw_sha" | tr 'A-F' 'a-f')
for digest in "sha256:$image_sha" "raw_sha256:$raw_sha"; do
  value=${digest#*:}
  [ -z "$value" ] && continue
  case $value in *[!0-9a-f]*) value=bad ;; esac
  [ ${#value} = 64 ] || fail check "the image's ${digest%%:*} '${digest#*:}' is not 64 hex digits"
done
case $raw_size in *[!0-9]*) fail check "the image's raw_size '$raw_size' is not a number of bytes" ;; esac
if [ -z "$image_sha" ] && [ -z "$raw_sha" ]; then
  fail check "the image ${image_name} has neither sha256 nor raw_sha256: refusing to write an image that cannot be verified"
fi
[ -n "$raw_sha" ] || say "note: no raw_sha256 for the image: only the download's sha256 is checked"

# Test hooks (set through the machine's ephemeral kernel parameters).
corrupt_at="" dd_baseline=""
for word in $(cat "$proc/cmdline" 2>/dev/null); do
  case $word in
    fleet.test.corrupt_at=*) corrupt_at=${word#*=} ;;
    fleet.test.dd_baseline=1) dd_baseline=1 ;;
  esac
done
case $corrupt_at in *[!0-9]*) corrupt_at="" ;; esac
[ -z "$corrupt_at" ] || say "TEST HOOK: the byte at $corrupt_at of the image stream will be flipped"

# Every tool this deployment needs, before anything is touched.
missing=""
need() {
  command -v "$(tool "$1")" >/dev/null 2>&1 && return 0
  case " $missing " in *" ${1##*/} "*) ;; *) missing="$missing ${1##*/}" ;; esac
}
for program in ${unpack%% *} sha256sum tee mkfifo dd wipefs blkid; do need "$program"; done
if command -v "$(tool curl)" >/dev/null 2>&1; then fetch_with=curl; else fetch_with=wget; need "$(tool wget)"; fi

: >"$work/map"
: >"$work/filesystems"
: >"$work/bcaches"

# map_disk NAME SERIAL ID_PATH PLANNED_SIZE: finds the disk, checks its size, records it.
map_disk() {
  found=$(find_disk "$1" "$2" "$3")
  [ -n "$found" ] || fail check "disk $1${2:+ (serial $2)} is not on this machine: disks here: $(disks_here)"
  if awk -v d="$found" '$2 == d { f = 1 } END { exit !f }' "$work/map"; then
    fail check "disks $(awk -v d="$found" '$2 == d { print $1 }' "$work/map") and $1 were both found as $found"
  fi
  bytes=$(disk_bytes "$found")
  if [ -n "$4" ] && [ "$bytes" -lt "$4" ]; then
    fail check "disk $1 (found as $found) holds $bytes bytes, less than the $4 bytes the layout was planned for"
  fi
  echo "$1 $found" >>"$work/map"
  say "disk $1${2:+ (serial $2)}: $found, $bytes bytes"
}

# identity NAME FIELD: serial or id_path of a disk from the layout, else from `disks`.
identity() {
  value=$(j "layout/disks/$layout_index/$2")
  if [ -z "$value" ]; then
    count=$(jcount disks) i=0
    while [ $i -lt "$count" ]; do
      if [ "$(j "disks/$i/name")" = "$1" ]; then value=$(j "disks/$i/$2"); break; fi
      i=$((i + 1))
    done
  fi
  echo "$value"
}

# add_fs REF PATH SIZE: records the filesystem at PATH (if any) of device REF in
# $work/filesystems: REF FSTYPE MOUNT LABEL OPTIONS SIZE, tab-separated, `-` for none.
add_fs() {
  [ "$(jtype "$2/filesystem")" = o ] || return 0
  fstype=$(j "$2/filesystem/fstype")
  mount_point=$(j "$2/filesystem/mount")
  label=$(j "$2/filesystem/label")
  options=$(j "$2/filesystem/mount_options")
  case $mount_point in *"$tab"* | *" "*) fail check "mount point '$mount_point' holds white space" ;; esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$fstype" "${mount_point:--}" "${label:--}" "${options:--}" "$3" >>"$work/filesystems"
}

disk_count=$(jcount layout/disks)
if [ $kind = disk ]; then
  [ "$disk_count" = 0 ] || say "note: a whole-disk image: the layout's $disk_count disk(s) are not laid out, the image brings its own"
  target_name=$(j target_disk)
  [ -n "$target_name" ] || target_name=$(j disks/0/name)
  [ -n "$target_name" ] || fail check "a whole-disk image needs a target disk: the deployment names none"
  layout_index=-1
  map_disk "$target_name" "$(identity "$target_name" serial)" "$(identity "$target_name" id_path)" ""
  target_dev=$(mapped "$target_name")
  target_bytes=$(disk_bytes "$target_dev")
  [ -n "$raw_size" ] || fail check "the image ${image_name} has no raw_size: a whole-disk image is not written without knowing that it fits"
  if [ "$raw_size" -gt "$target_bytes" ]; then
    fail check "the image ${image_name} is $raw_size bytes (raw size) but the target disk $target_name ($target_dev) holds $target_bytes bytes: nothing was written"
  fi
  say "the image fits: $raw_size bytes on $target_dev's $target_bytes"
else
  [ "$disk_count" -gt 0 ] || fail check "a root tarball needs a layout with disks (the layout '$(j layout/template)' is $(j layout/kind))"
  need sfdisk
  need tar
  boot_disk=""
  layout_index=0
  while [ $layout_index -lt "$disk_count" ]; do
    at=layout/disks/$layout_index
    name=$(j "$at/name")
    map_disk "$name" "$(identity "$name" serial)" "$(identity "$name" id_path)" "$(j "$at/size")"
    [ "$(j "$at/boot")" = true ] && boot_disk=$name
    [ $layout_index = 0 ] && first_disk=$name
    add_fs "disk:$name" "$at" "$(j "$at/size")"
    parts=$(jcount "$at/partitions") k=0
    while [ $k -lt "$parts" ]; do
      add_fs "part:$name:$(j "$at/partitions/$k/number")" "$at/partitions/$k" "$(j "$at/partitions/$k/size")"
      k=$((k + 1))
    done
    layout_index=$((layout_index + 1))
  done
  [ -n "$boot_disk" ] || boot_disk=$first_disk
  i=0
  while [ $i -lt "$(jcount layout/arrays)" ]; do
    need mdadm
    add_fs "array:$(j "layout/arrays/$i/name")" "layout/arrays/$i" "$(j "layout/arrays/$i/size")"
    i=$((i + 1))
  done
  i=0
  while [ $i -lt "$(jcount layout/volume_groups)" ]; do
    need lvm
    group=$(j "layout/volume_groups/$i/name") k=0
    while [ $k -lt "$(jcount "layout/volume_groups/$i/logical_volumes")" ]; do
      at=layout/volume_groups/$i/logical_volumes/$k
      add_fs "lv:$group:$(j "$at/name")" "$at" "$(j "$at/size")"
      k=$((k + 1))
    done
    i=$((i + 1))
  done
  i=0
  while [ $i -lt "$(jcount layout/bcaches)" ]; do
    need make-bcache
    add_fs "bcache:$(j "layout/bcaches/$i/name")" "layout/bcaches/$i" "$(j "layout/bcaches/$i/size")"
    i=$((i + 1))
  done
  while IFS="$tab" read -r ref fstype mount_point _ _ _; do
    case $fstype in
      ext2 | ext3 | ext4) need mkfs.ext4 ;;
      vfat) need mkfs.vfat ;;
      swap) need mkswap ;;
      xfs) need mkfs.xfs ;;
      btrfs) need mkfs.btrfs ;;
      *) fail check "$ref: filesystem type '$fstype' is not one this script makes" ;;
    esac
  done <"$work/filesystems"
  root_ref=$(awk -F '\t' '$3 == "/" { print $1; exit }' "$work/filesystems")
  [ -n "$root_ref" ] || fail check "the layout mounts nothing at /"
  # The boot loader's filesystem: /boot if the layout has one, else /.
  boot_ref=$(awk -F '\t' '$3 == "/boot" { print $1; exit }' "$work/filesystems")
  boot_ref=${boot_ref:-$root_ref}
  boot_fstype=$(awk -F '\t' -v r="$boot_ref" '$1 == r { print $2; exit }' "$work/filesystems")
  if [ "$firmware" = bios ]; then
    need extlinux
    case $boot_ref in
      part:"$boot_disk":*) ;;
      *) fail check "extlinux boots from a partition of the boot disk $boot_disk, but /boot is on $boot_ref: give the storage template a boot_size (a /boot partition)" ;;
    esac
    case $boot_fstype in ext2 | ext3 | ext4 | vfat) ;; *) fail check "extlinux cannot boot from $boot_fstype (/boot on $boot_ref): use ext4" ;; esac
    boot_table=$(j "layout/disks/$(awk -v d="$boot_disk" '{ if ($1 == d) { print NR - 1; exit } }' "$work/map")/table")
    mbr=$syslinux/mbr/mbr.bin
    [ "$boot_table" = gpt ] && mbr=$syslinux/mbr/gptmbr.bin
    [ -r "$mbr" ] || missing="$missing $mbr"
  else
    esp_ref=$(awk -F '\t' '$3 == "/boot/efi" { print $1; exit }' "$work/filesystems")
    [ -n "$esp_ref" ] || fail check "a UEFI machine needs an EFI system partition mounted at /boot/efi; the layout has none"
    [ -r "$sdboot" ] || missing="$missing $sdboot"
  fi
  # The tarball unpacks into the layout's filesystems.
  room=$(awk -F '\t' '$3 != "-" && $2 != "swap" { sum += $6 } END { printf "%.0f\n", sum }' "$work/filesystems")
  if [ -n "$raw_size" ] && [ "$raw_size" -gt "$room" ]; then
    fail check "the image ${image_name} unpacks to $raw_size bytes (raw size) but the layout's filesystems hold $room bytes: nothing was written"
  fi
  [ -n "$raw_size" ] || say "note: no raw_size for the image: its fit is not checked"
fi
[ -z "$missing" ] || fail check "missing in this environment:$missing"

# --- 2. clear ---------------------------------------------------------------------------------
# The block devices built on NAME (a disk, a partition, an array ...), deepest first, each once.
holders_of() {
  local holder # (busybox sh and dash have local: the recursion needs its own)
  for holder in "$sys/class/block/$1/holders"/*; do
    [ -e "$holder" ] || continue
    holders_of "${holder##*/}"
    echo "${holder##*/}"
  done
}

# gone PATH: waits (up to $settle seconds) for a sysfs PATH to go away.
gone() {
  waited=0
  while [ -e "$1" ] && [ $waited -lt "$settle" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  [ ! -e "$1" ]
}

# stop_holder NAME: takes one holder apart (bcache, device-mapper, md), its signatures wiped
# first (what it held must not come back when the same offsets are used again).
stop_holder() {
  [ -e "$dev/$1" ] && run wipefs -a "$dev/$1"
  case $1 in
    bcache*)
      say "stopping $1"
      { echo 1 >"$sys/block/$1/bcache/stop"; } 2>/dev/null || say "  (could not stop $1)"
      gone "$sys/block/$1" || say "  ($1 is still there after ${settle}s)"
      ;;
    dm-*)
      read_attr "$sys/block/$1/dm/name"
      dm_name=$attr
      read_attr "$sys/block/$1/dm/uuid"
      case $attr in
        LVM-*)
          # VG-LV, with each - inside a name doubled
          lv=$(printf '%s' "$dm_name" | awk '{ gsub(/--/, "\001"); sub(/-/, "/"); gsub(/\001/, "-"); print }')
          run lvm lvchange -an "$lv" ;;
        *) run dmsetup remove "$dm_name" ;;
      esac
      ;;
    md*)
      run mdadm --stop "$(need_node "$1")"
      ;;
    *) say "note: $1 holds a disk of the layout and is not one this script stops" ;;
  esac
}

# The kernel names of a disk and its partitions.
disk_and_partitions() {
  echo "$1"
  for path in "$sys/block/$1/$1"*; do
    [ -e "$path/partition" ] && echo "${path##*/}"
  done
}

clear_disks() {
  : >"$work/tree"
  for name in $(awk '{ print $2 }' "$work/map"); do
    disk_and_partitions "$name" >>"$work/tree"
  done
  for name in $(cat "$work/tree"); do holders_of "$name"; done >>"$work/tree.holders"
  # Mounts and swaps on any of them (by kernel name, /dev/mapper names included).
  for name in $(cat "$work/tree" "$work/tree.holders"); do
    read_attr "$sys/class/block/$name/dm/name"
    for source in "/dev/$name" ${attr:+"/dev/mapper/$attr"}; do
      awk -v s="$source" '$1 == s { print $2 }' "$proc/mounts" 2>/dev/null | sort -r | while read -r point; do
        run umount "$point"
      done
      if awk -v s="$source" '$1 == s { f = 1 } END { exit !f }' "$proc/swaps" 2>/dev/null; then run swapoff "$source"; fi
    done
  done
  # Holders, deepest first, each once: bcache, then LVM, then md (as they were stacked).
  awk '!seen[$0]++' "$work/tree.holders" >"$work/holders"
  while read -r holder; do
    [ -e "$sys/block/$holder" ] || continue
    stop_holder "$holder"
  done <"$work/holders"
  # A bcache cache set on one of them is unregistered too.
  for name in $(cat "$work/tree"); do
    if [ -e "$sys/class/block/$name/bcache/set/unregister" ]; then
      say "unregistering the bcache cache set on $name"
      { echo 1 >"$sys/class/block/$name/bcache/set/unregister"; } 2>/dev/null
      gone "$sys/class/block/$name/bcache/set" || say "  (the cache set on $name is still there after ${settle}s)"
    fi
  done
  # Signatures: partitions first, then the disks; then both ends zeroed.
  for name in $(cat "$work/tree"); do
    case " $(awk '{ print $2 }' "$work/map" | tr '\n' ' ') " in *" $name "*) continue ;; esac
    run wipefs -a "$(need_node "$name")"
  done
  for name in $(awk '{ print $2 }' "$work/map"); do
    disk=$(need_node "$name")
    run wipefs -a "$disk"
    mib=$(($(disk_bytes "$name") / 1048576))
    run dd if=/dev/zero of="$disk" bs=1048576 count=1 conv=notrunc,fsync
    [ "$mib" -gt 1 ] && run dd if=/dev/zero of="$disk" bs=1048576 seek=$((mib - 1)) count=1 conv=notrunc,fsync
    reread "$name"
  done
}

# reread NAME: the kernel re-reads the disk's partition table; then partx -u adds, updates or
# removes each partition itself (BLKPG), where the re-read left the kernel's view behind (a
# re-read of a disk in use fails; some kernels drop loop partitions on BLKRRPART).
reread() {
  disk=$(need_node "$1")
  "$(tool blockdev)" --rereadpt "$disk" >/dev/null 2>&1
  reread_status=$?
  if command -v "$(tool partx)" >/dev/null 2>&1; then
    "$(tool partx)" -u "$disk" >/dev/null 2>&1 || [ $reread_status = 0 ] || say "  (the kernel did not re-read $1's partition table)"
  fi
}

# wipe_start: a failure after writing began zeroes the first MiB of each disk written.
wipe_start() {
  for name in $(awk '{ print $2 }' "$work/map"); do
    if dd if=/dev/zero of="$dev/$name" bs=1048576 count=1 conv=notrunc,fsync 2>/dev/null; then
      say "zeroed the first MiB of $name: it cannot boot what was written"
    fi
  done
}

progress clear
clear_disks

# --- 3a. a root tarball: partition, format, mount ---------------------------------------------
# sfdisk's partition types: GPT type GUIDs and MBR ids.
gpt_type() {
  case $1 in
    esp) echo C12A7328-F81F-11D2-BA4B-00A0C93EC93B ;;
    bios_grub) echo 21686148-6449-6E6F-744E-656564454649 ;;
    swap) echo 0657FD6D-A4AB-43C4-84E5-0933C84B4F4F ;;
    raid) echo A19D880F-05FC-4D3B-A006-743F0F84911E ;;
    lvm) echo E6D6D379-F507-44C2-A23C-238F2A3DF928 ;;
    *) echo 0FC63DAF-8483-4772-8E79-3D69D8477DE4 ;;
  esac
}
mbr_type() {
  case $1 in esp) echo ef ;; swap) echo 82 ;; raid) echo fd ;; lvm) echo 8e ;; *) echo 83 ;; esac
}

# sfdisk_script INDEX: the sfdisk input for layout disk INDEX (sectors of the disk's logical
# block size; the boot partition flagged for the BIOS boot code).
sfdisk_script() {
  at=layout/disks/$1
  name=$(j "$at/name")
  table=$(j "$at/table")
  read_attr "$sys/block/$(mapped "$name")/queue/logical_block_size"
  sector=${attr:-512}
  case $table in gpt) echo "label: gpt" ;; msdos) echo "label: dos" ;; *) fail partition "disk $name: unknown table '$table'" ;; esac
  echo "unit: sectors"
  echo
  parts=$(jcount "$at/partitions") k=0
  while [ $k -lt "$parts" ]; do
    number=$(j "$at/partitions/$k/number")
    [ "$number" = $((k + 1)) ] || fail partition "disk $name: partition $number is listed at position $((k + 1)) (sfdisk numbers them in order)"
    start=$(j "$at/partitions/$k/start") size=$(j "$at/partitions/$k/size") pkind=$(j "$at/partitions/$k/kind")
    if [ $((start % sector)) != 0 ] || [ $((size % sector)) != 0 ]; then
      fail partition "disk $name: partition $number (start $start, size $size) is not whole $sector-byte sectors"
    fi
    line="start=$((start / sector)), size=$((size / sector))"
    if [ "$table" = gpt ]; then
      line="$line, type=$(gpt_type "$pkind")"
      [ "$firmware" = bios ] && [ "$boot_ref" = "part:$name:$number" ] && line="$line, attrs=\"LegacyBIOSBootable\""
    else
      line="$line, type=$(mbr_type "$pkind")"
      [ "$firmware" = bios ] && [ "$boot_ref" = "part:$name:$number" ] && line="$line, bootable"
    fi
    echo "$line"
    k=$((k + 1))
  done
}

partition_disks() {
  i=0
  while [ $i -lt "$disk_count" ]; do
    name=$(j "layout/disks/$i/name")
    if [ -n "$(j "layout/disks/$i/table")" ]; then
      sfdisk_script $i >"$work/sfdisk.$i"
      sed 's/^/  | /' "$work/sfdisk.$i"
      run_input "$work/sfdisk.$i" sfdisk --wipe always --wipe-partitions always "$(need_node "$(mapped "$name")")"
      reread "$(mapped "$name")"
      k=0
      while [ $k -lt "$(jcount "layout/disks/$i/partitions")" ]; do
        need_node "$(partition_name "$(mapped "$name")" "$(j "layout/disks/$i/partitions/$k/number")")" >/dev/null
        k=$((k + 1))
      done
    else
      say "disk $name: used whole (no partition table)"
    fi
    i=$((i + 1))
  done
}

# devices AT: the device nodes of a list of layout Devices at AT.
devices() {
  count=$(jcount "$1") d=0 list=""
  while [ $d -lt "$count" ]; do
    list="$list $(device_of "$(device_ref "$1/$d")")"
    d=$((d + 1))
  done
  echo "$list"
}

make_arrays() {
  i=0
  while [ $i -lt "$(jcount layout/arrays)" ]; do
    at=layout/arrays/$i
    name=$(j "$at/name")
    members=$(devices "$at/members")
    spares=$(devices "$at/spares")
    set -- $members
    member_count=$#
    set -- $spares
    # shellcheck disable=SC2086
    run mdadm --create "$dev/$name" --run --metadata=1.2 --level="$(j "$at/level")" \
      --raid-devices="$member_count" ${spares:+--spare-devices=$#} $members $spares
    need_node "$name" >/dev/null
    i=$((i + 1))
  done
}

make_bcaches() {
  [ "$(jcount layout/bcaches)" = 0 ] || "$(tool modprobe)" -q bcache 2>/dev/null
  i=0
  while [ $i -lt "$(jcount layout/bcaches)" ]; do
    at=layout/bcaches/$i
    name=$(j "$at/name")
    backing_ref=$(device_ref "$at/backing")
    backing=$(device_of "$backing_ref")
    cache=$(device_of "$(device_ref "$at/cache")")
    run make-bcache --wipe-bcache -B "$backing" -C "$cache"
    for device in "$cache" "$backing"; do
      { echo "$device" >"$sys/fs/bcache/register"; } 2>/dev/null
    done
    # The kernel numbers bcache devices itself: find the one on the backing device.
    backing_name=$(kernel_name "$backing_ref")
    waited=0 actual=""
    while [ $waited -lt "$settle" ]; do
      actual=$(readlink "$sys/class/block/$backing_name/bcache/dev" 2>/dev/null)
      actual=${actual##*/}
      [ -n "$actual" ] && break
      sleep 1
      waited=$((waited + 1))
    done
    [ -n "$actual" ] || fail format "bcache on $backing: no bcache device appeared (is the bcache module loaded?)"
    echo "$name $actual" >>"$work/bcaches"
    { j "$at/mode" >"$sys/block/$actual/bcache/cache_mode"; } 2>/dev/null || say "  (could not set the cache mode of $actual)"
    say "bcache $name: $actual ($(j "$at/mode"))"
    i=$((i + 1))
  done
}

make_volume_groups() {
  [ "$(jcount layout/volume_groups)" = 0 ] || "$(tool modprobe)" -q dm-mod 2>/dev/null
  i=0
  while [ $i -lt "$(jcount layout/volume_groups)" ]; do
    at=layout/volume_groups/$i
    group=$(j "$at/name")
    members=$(devices "$at/members")
    # shellcheck disable=SC2086
    run lvm pvcreate -ff -y --zero y $members
    # shellcheck disable=SC2086
    run lvm vgcreate -y --physicalextentsize 4m "$group" $members
    k=0
    while [ $k -lt "$(jcount "$at/logical_volumes")" ]; do
      run lvm lvcreate -y --wipesignatures y --zero y -L "$(j "$at/logical_volumes/$k/size")b" \
        -n "$(j "$at/logical_volumes/$k/name")" "$group"
      k=$((k + 1))
    done
    i=$((i + 1))
  done
}

make_filesystems() {
  while IFS="$tab" read -r ref fstype mount_point label _ size; do
    device=$(device_of "$ref")
    [ "$label" = - ] && label=""
    case $fstype in
      ext2 | ext3 | ext4)
        # extlinux's filesystem without the 64bit feature (syslinux reads it only without).
        features=""
        [ "$firmware" = bios ] && [ "$ref" = "$boot_ref" ] && [ "$fstype" = ext4 ] && features="^64bit"
        # (mkfs.ext4 is e2fsprogs': busybox's mke2fs knows no -t)
        run mkfs.ext4 -t "$fstype" -F -q ${label:+-L "$label"} ${features:+-O "$features"} "$device" ;;
      vfat)
        fat=""
        [ "$size" -ge 268435456 ] && fat="-F 32"
        # shellcheck disable=SC2086
        run mkfs.vfat $fat ${label:+-n "$label"} "$device" ;;
      swap) run mkswap ${label:+-L "$label"} "$device" ;;
      xfs) run mkfs.xfs -f ${label:+-L "$label"} "$device" ;;
      btrfs) run mkfs.btrfs -f ${label:+-L "$label"} "$device" ;;
    esac
  done <"$work/filesystems"
}

mount_filesystems() {
  for module in ext4 vfat nls_cp437 nls_iso8859_1; do "$(tool modprobe)" -q "$module" 2>/dev/null; done
  # Parents before children: / < /boot < /boot/efi.
  awk -F '\t' '$3 != "-" && $2 != "swap"' "$work/filesystems" | sort -t "$tab" -k 3,3 >"$work/mounts"
  while IFS="$tab" read -r ref fstype mount_point _ _ _; do
    point=$target${mount_point%/}
    [ "$mount_point" = / ] && point=$target
    mkdir -p "$point" || fail mount "cannot make the mount point $point"
    run mount -t "$fstype" "$(device_of "$ref")" "$point"
    mounted="$point $mounted"
  done <"$work/mounts"
}

# --- 3b. the image stream ------------------------------------------------------------------
# fetch URL: the image on stdout.
fetch() {
  if [ "$fetch_with" = curl ]; then
    "$(tool curl)" -fsS "$1"
  else
    "$(tool wget)" -q -O - "$1"
  fi
}

# corrupt: copies stdin to stdout with the byte at $corrupt_at flipped (the test hook).
corrupt() {
  if [ -z "$corrupt_at" ]; then
    cat
    return
  fi
  whole=$((corrupt_at / 1048576)) rest=$((corrupt_at % 1048576))
  [ $whole = 0 ] || dd bs=1048576 count=$whole iflag=fullblock 2>/dev/null
  [ $rest = 0 ] || dd bs=$rest count=1 iflag=fullblock 2>/dev/null
  byte=$(dd bs=1 count=1 2>/dev/null | od -An -tu1 | tr -d ' \n')
  # shellcheck disable=SC2059
  [ -z "$byte" ] || printf "\\$(printf %03o $((byte ^ 255)))"
  cat
}

# stream CONSUMER...: downloads the image, unpacks it and feeds CONSUMER (its stdin), while
# sha256sum reads the download and the unpacked stream through fifos and wc counts the bytes.
# Sets download_sum raw_sum raw_bytes and the exit statuses fetch_status unpack_status
# consumer_status; logs the rate.
stream() {
  rm -f "$work"/*.fifo "$work"/*.status
  mkfifo "$work/download.fifo" "$work/raw.fifo" "$work/count.fifo" || fail write-image "mkfifo failed in $work"
  sha256sum <"$work/raw.fifo" >"$work/raw.sum" &
  raw_job=$!
  wc -c <"$work/count.fifo" >"$work/raw.count" &
  count_job=$!
  download_job=""
  if [ -n "$unpack" ]; then
    sha256sum <"$work/download.fifo" >"$work/download.sum" &
    download_job=$!
  fi
  watch_progress "$count_job" &
  watch_job=$!
  started=$(now_cs)
  if [ -n "$unpack" ]; then
    { fetch "$image_url"; echo $? >"$work/fetch.status"; } | tee "$work/download.fifo" \
      | { $unpack; echo $? >"$work/unpack.status"; } | corrupt | tee "$work/raw.fifo" "$work/count.fifo" \
      | { "$@"; echo $? >"$work/consumer.status"; cat >/dev/null; }
  else
    { fetch "$image_url"; echo $? >"$work/fetch.status"; } \
      | corrupt | tee "$work/raw.fifo" "$work/count.fifo" \
      | { "$@"; echo $? >"$work/consumer.status"; cat >/dev/null; }
  fi
  wait $raw_job $count_job $download_job
  elapsed=$(($(now_cs) - started))
  kill $watch_job 2>/dev/null
  wait $watch_job 2>/dev/null
  read_attr "$work/fetch.status"; fetch_status=${attr:-1}
  read_attr "$work/unpack.status"; unpack_status=${attr:-0}
  read_attr "$work/consumer.status"; consumer_status=${attr:-1}
  raw_sum=$(cut -d ' ' -f 1 "$work/raw.sum")
  if [ -n "$unpack" ]; then download_sum=$(cut -d ' ' -f 1 "$work/download.sum"); else download_sum=$raw_sum; fi
  raw_bytes=$(tr -d ' \n' <"$work/raw.count")
  write_seconds=$(awk -v cs="$elapsed" 'BEGIN { printf "%.2f\n", cs / 100 }')
  say "write-image: $(rate "${raw_bytes:-0}" "$elapsed")"
}

# watch_progress PID: every 2 s, the bytes the counting process has read (its rchar).
watch_progress() {
  trap - TERM INT HUP
  while kill -0 "$1" 2>/dev/null; do
    done_bytes=$(awk '$1 == "rchar:" { print $2 }' "$proc/$1/io" 2>/dev/null)
    [ -n "$done_bytes" ] && progress write-image "$done_bytes" "${raw_size:-0}"
    sleep 2
  done
}

# check_stream WHAT: the statuses, the digests and the byte count of the stream just written;
# any failure zeroes the first MiB of the disks written and fails write-image.
check_stream() {
  problem=""
  if [ "$fetch_status" != 0 ]; then
    problem="downloading $image_url failed ($fetch_with exit $fetch_status)"
  elif [ "$unpack_status" != 0 ]; then
    problem="unpacking the $format image failed (${unpack%% *} exit $unpack_status)"
  elif [ -n "$image_sha" ] && [ -n "$unpack" ] && [ "$download_sum" != "$image_sha" ]; then
    problem="sha256 mismatch: expected $image_sha, got $download_sum (the download, $image_size bytes expected)"
  elif [ -n "$image_sha" ] && [ -z "$unpack" ] && [ "$download_sum" != "$image_sha" ]; then
    problem="sha256 mismatch: expected $image_sha, got $download_sum (the image, $raw_bytes bytes)"
  elif [ -n "$raw_sha" ] && [ "$raw_sum" != "$raw_sha" ]; then
    problem="sha256 mismatch: expected $raw_sha, got $raw_sum (the unpacked image, $raw_bytes bytes)"
  elif [ -n "$raw_size" ] && [ "$raw_bytes" != "$raw_size" ]; then
    problem="the unpacked image is $raw_bytes bytes, not the $raw_size announced"
  elif [ "$consumer_status" != 0 ]; then
    problem="$1 failed (exit $consumer_status): $(tail -n 1 "$work/consumer.err" 2>/dev/null)"
  fi
  [ -z "$problem" ] && return 0
  unmount_all
  wipe_start
  fail write-image "$problem"
}

# tar_into DIR: GNU tar keeps owners by number and extended attributes (file capabilities).
tar_into() {
  tar=$(tool tar)
  if "$tar" --version 2>/dev/null | grep -q 'GNU tar'; then
    # (--no-overwrite-dir: the mount points keep their own owner and mode, a FAT ESP refuses others)
    "$tar" -x -p -f - -C "$1" --numeric-owner --no-overwrite-dir --xattrs --xattrs-include='*' 2>"$work/consumer.err"
  else
    "$tar" -x -p -f - -C "$1" 2>"$work/consumer.err"
  fi
}

dd_to() { dd of="$1" bs=4M iflag=fullblock conv=notrunc,fsync 2>"$work/consumer.err"; }

# --- 3c. configuration (written under ROOT) ---------------------------------------------------
yaml_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"; }

first_boot_script() {
  cat <<'EOF'
#!/bin/sh
# fleet first boot: tells the controller, once, that the installed system is up (written by
# fleet-deploy). Reads /etc/fleet/callback (`url URL`, `secret S`) and deletes it once accepted.
config=/etc/fleet/callback
[ -r "$config" ] || exit 0
url=$(sed -n 's/^url //p' "$config")
secret=$(sed -n 's/^secret //p' "$config")
# The body in a file of root's (the secret stays out of the process list).
body=$(mktemp) || exit 1
trap 'rm -f "$body"' EXIT
printf '{"callback": "%s"}' "$secret" >"$body"
say() { echo "fleet first boot: $*"; [ -w /dev/kmsg ] && echo "fleet first boot: $*" >/dev/kmsg; }
try=1
while [ $try -le 120 ]; do
  if command -v curl >/dev/null 2>&1; then
    code=$(curl -sS -m 30 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
      --data-binary "@$body" "$url" 2>/dev/null)
  else
    code=$(wget -q -S -O /dev/null --header 'Content-Type: application/json' --post-file "$body" \
      "$url" 2>&1 | sed -n 's/.*HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' | tail -n 1)
  fi
  case $code in
    2??) rm -f "$config"; say "the controller took the call-back: deployed"; exit 0 ;;
    400 | 403 | 404 | 409) say "the controller refused the call-back (HTTP $code): giving up"; exit 1 ;;
  esac
  say "call-back to $url: ${code:-no answer} (try $try); trying again in 10 s"
  sleep 10
  try=$((try + 1))
done
exit 1
EOF
}

first_boot_unit() {
  cat <<'EOF'
[Unit]
Description=fleet: tell the controller the installed system is up
Wants=network-online.target
After=network-online.target
ConditionPathExists=/etc/fleet/callback

[Service]
Type=oneshot
ExecStart=/usr/lib/fleet/first-boot
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
EOF
}

# vendor_data_yaml: cloud-config from the vendor data (proxy, NTP servers, DNS search).
vendor_data_yaml() {
  echo "#cloud-config"
  apt_proxy=$(j vendor_data/apt_proxy)
  http_proxy=$(j vendor_data/http_proxy)
  if [ -n "$apt_proxy" ]; then
    printf 'apt:\n  http_proxy: %s\n  https_proxy: %s\n' "$(yaml_string "$apt_proxy")" "$(yaml_string "$apt_proxy")"
  fi
  if [ -n "$http_proxy" ]; then
    printf 'write_files:\n  - path: /etc/profile.d/fleet-proxy.sh\n    content: |\n      export http_proxy=%s https_proxy=%s\n' "$http_proxy" "$http_proxy"
  fi
  # (dns_search: the network configuration carries the search domains)
  count=$(jcount vendor_data/ntp_servers)
  [ "$count" -gt 0 ] && printf 'ntp:\n  enabled: true\n  servers:\n'
  k=0
  while [ $k -lt "$count" ]; do
    printf '    - %s\n' "$(yaml_string "$(j "vendor_data/ntp_servers/$k")")"
    k=$((k + 1))
  done
}

# configure ROOT: the files CONTRACT.md lists, in the installed system mounted at ROOT.
configure() {
  root=$1
  instance=${machine:-machine}-${FLEET_RUN:-$(date +%s)}
  mkdir -p "$root/etc/fleet" "$root/usr/lib/fleet" "$root/etc/systemd/system/multi-user.target.wants" \
    "$root/etc/netplan" "$root/var/lib/cloud/seed/nocloud" "$root/root/.ssh" \
    || fail configure "cannot make directories under $root"
  # The call-back: URL and one-shot secret, for root only.
  callback_url=$(j callback/url)
  callback_secret=$(j callback/secret)
  [ -n "$callback_url" ] && [ -n "$callback_secret" ] || fail configure "the deployment has no call-back URL and secret"
  (umask 077 && printf 'url %s\nsecret %s\n' "$callback_url" "$callback_secret" >"$root/etc/fleet/callback") \
    || fail configure "cannot write $root/etc/fleet/callback"
  chmod 0600 "$root/etc/fleet/callback"
  first_boot_script >"$root/usr/lib/fleet/first-boot" && chmod 0755 "$root/usr/lib/fleet/first-boot"
  first_boot_unit >"$root/etc/systemd/system/fleet-first-boot.service"
  ln -sf ../fleet-first-boot.service "$root/etc/systemd/system/multi-user.target.wants/fleet-first-boot.service"
  say "configure: call-back to $callback_url at first boot (/usr/lib/fleet/first-boot, fleet-first-boot.service)"
  # Network.
  if jfile network/netplan "$work/netplan"; then
    cp "$work/netplan" "$root/etc/netplan/50-fleet.yaml" && chmod 0600 "$root/etc/netplan/50-fleet.yaml"
    cp "$work/netplan" "$root/var/lib/cloud/seed/nocloud/network-config"
    say "configure: netplan /etc/netplan/50-fleet.yaml ($(wc -l <"$work/netplan") lines)"
  else
    say "configure: no network configuration (the image's own applies)"
  fi
  # cloud-init NoCloud seed.
  {
    printf 'instance-id: %s\n' "$(yaml_string "$instance")"
    printf 'local-hostname: %s\n' "$(yaml_string "$hostname")"
    count=$(jcount ssh_keys)
    if [ "$count" -gt 0 ]; then
      echo "public-keys:"
      k=0
      while [ $k -lt "$count" ]; do printf '  - %s\n' "$(yaml_string "$(j "ssh_keys/$k")")"; k=$((k + 1)); done
    fi
  } >"$root/var/lib/cloud/seed/nocloud/meta-data"
  (umask 077 && { jfile user_data "$root/var/lib/cloud/seed/nocloud/user-data" || : >"$root/var/lib/cloud/seed/nocloud/user-data"; })
  vendor_data_yaml >"$root/var/lib/cloud/seed/nocloud/vendor-data"
  say "configure: cloud-init seed /var/lib/cloud/seed/nocloud (instance $instance)"
  # Keys and hostname.
  count=$(jcount ssh_keys)
  k=0
  (umask 077 && : >"$root/root/.ssh/authorized_keys.fleet")
  while [ $k -lt "$count" ]; do j "ssh_keys/$k" >>"$root/root/.ssh/authorized_keys.fleet"; k=$((k + 1)); done
  mv -f "$root/root/.ssh/authorized_keys.fleet" "$root/root/.ssh/authorized_keys"
  chmod 0700 "$root/root/.ssh"
  chmod 0600 "$root/root/.ssh/authorized_keys"
  say "configure: $count SSH key(s) in /root/.ssh/authorized_keys"
  [ -z "$hostname" ] || echo "$hostname" >"$root/etc/hostname"
}

# probe DEVICE FIELD: UUID, LABEL or TYPE of what DEVICE holds, from blkid's plain output
# (util-linux's without its cache, else busybox's: they share `DEV: LABEL="x" UUID="y" ...`).
probe() {
  found=$("$(tool blkid)" -c /dev/null "$1" 2>/dev/null) || found=$("$(tool blkid)" "$1" 2>/dev/null)
  printf '%s\n' "$found" | sed -n "s/.* $2=\"\([^\"]*\)\".*/\1/p" | head -n 1
}

uuid_of() { probe "$1" UUID; }

# The kernel command line: root= (an LVM root by its mapper name, which Debian's initramfs
# activates; else by UUID), ro, the deployment's kernel parameters.
kernel_command_line() {
  case $root_ref in
    lv:*)
      rest=${root_ref#lv:}
      root_arg=/dev/mapper/$(echo "${rest%%:*}" | sed 's/-/--/g')-$(echo "${rest#*:}" | sed 's/-/--/g') ;;
    *) root_arg=UUID=$(uuid_of "$(device_of "$root_ref")") ;;
  esac
  params=$(j kernel_params)
  echo "root=$root_arg ro${params:+ $params}"
}

write_fstab() {
  {
    echo "# written by fleet-deploy: the layout's filesystems by UUID"
    sort -t "$tab" -k 3,3 "$work/filesystems" | while IFS="$tab" read -r ref fstype mount_point _ options _; do
      [ "$mount_point" != - ] || [ "$fstype" = swap ] || continue
      uuid=$(uuid_of "$(device_of "$ref")")
      [ -n "$uuid" ] || fail configure "no UUID for $ref ($(device_of "$ref")) from blkid"
      [ "$options" = - ] && options=defaults
      if [ "$fstype" = swap ]; then
        echo "UUID=$uuid none swap sw 0 0"
        continue
      fi
      pass=2
      [ "$mount_point" = / ] && pass=1
      case $fstype in xfs | btrfs) pass=0 ;; vfat) [ "$options" = defaults ] && options=umask=0077 ;; esac
      echo "UUID=$uuid $mount_point $fstype $options 0 $pass"
    done
  } >"$target/etc/fstab.fleet" && mv -f "$target/etc/fstab.fleet" "$target/etc/fstab" || fail configure "cannot write $target/etc/fstab"
  sed 's/^/  /' "$target/etc/fstab"
}

# find_kernel: sets kernel and initrd (files under $target/boot, not links: extlinux and the
# ESP copy need the files) from the image's /boot, the newest version first.
find_kernel() {
  kernel="" initrd=""
  for candidate in $(ls "$target/boot" 2>/dev/null | grep '^vmlinuz' | sort -V -r); do
    if [ -f "$target/boot/$candidate" ] && [ ! -L "$target/boot/$candidate" ]; then
      kernel=$target/boot/$candidate
      break
    fi
  done
  [ -n "$kernel" ] || fail bootloader "the image has no kernel in /boot (no vmlinuz* file that is not a link)"
  version=${kernel##*/vmlinuz}
  version=${version#-}
  for candidate in "$target/boot/initrd.img${version:+-$version}" "$target/boot/initrd.img" "$target/boot/initrd"; do
    if [ -f "$candidate" ] && [ ! -L "$candidate" ]; then initrd=$candidate; break; fi
  done
  say "bootloader: kernel ${kernel#"$target"}${initrd:+, initrd ${initrd#"$target"}}"
}

install_extlinux() {
  command_line=$1
  # Paths as extlinux sees them: from the root of the filesystem it is on.
  prefix=/boot
  [ "$boot_ref" = "$root_ref" ] || prefix=""
  mkdir -p "$target/boot/extlinux"
  {
    echo "# written by fleet-deploy"
    echo "DEFAULT fleet"
    echo "PROMPT 0"
    echo "TIMEOUT 1"
    echo "LABEL fleet"
    echo "  LINUX $prefix/${kernel##*/}"
    [ -z "$initrd" ] || echo "  INITRD $prefix/${initrd##*/}"
    echo "  APPEND $command_line"
  } >"$target/boot/extlinux/extlinux.conf"
  sed 's/^/  /' "$target/boot/extlinux/extlinux.conf"
  run extlinux --install "$target/boot/extlinux"
  run dd if="$mbr" of="$(device_of "disk:$boot_disk")" bs=440 count=1 conv=notrunc,fsync
}

install_systemd_boot() {
  command_line=$1
  esp=$target/boot/efi
  mkdir -p "$esp/EFI/BOOT" "$esp/EFI/systemd" "$esp/loader/entries" "$esp/fleet" || fail bootloader "cannot make directories on the ESP"
  run cp "$sdboot" "$esp/EFI/BOOT/BOOTX64.EFI"
  run cp "$sdboot" "$esp/EFI/systemd/systemd-bootx64.efi"
  run cp "$kernel" "$esp/fleet/vmlinuz"
  [ -z "$initrd" ] || run cp "$initrd" "$esp/fleet/initrd.img"
  printf 'default fleet.conf\ntimeout 0\n' >"$esp/loader/loader.conf"
  {
    echo "title ${image_name:-fleet} (fleet)"
    echo "linux /fleet/vmlinuz"
    [ -z "$initrd" ] || echo "initrd /fleet/initrd.img"
    echo "options $command_line"
  } >"$esp/loader/entries/fleet.conf" || fail bootloader "cannot write the loader entry on the ESP"
  sed 's/^/  /' "$esp/loader/entries/fleet.conf"
}

# uefi_boot_entry DISK: an EFI boot entry for \EFI\BOOT\BOOTX64.EFI on DISK's EFI system partition,
# put right after the network entry this environment was booted through (BootCurrent), so the
# network stays first (as MAAS keeps it: later commissioning, rescue and release still reach fleet)
# and the firmware boots the disk next when the netboot hands back (the local-disk script's
# `exit 1`). Right after that one entry, not after all the network entries: the firmware would
# try each of those first (OVMF has PXEv4 through the NIC's iPXE, PXEv4 fetching ipxe.efi, PXEv6,
# HTTPv4, HTTPv6 for one NIC), timing out or running iPXE again. Many servers make no entry by
# themselves for a disk that had no ESP when they last enumerated, and a firmware's own entry for
# the disk (OVMF's "UEFI QEMU NVMe Ctrl ...") comes after fleet's. Not fatal: without EFI variables
# it says so.
uefi_boot_entry() {
  [ "$firmware" = uefi ] || return 0
  efibootmgr=$(tool efibootmgr)
  if [ ! -d "$sys/firmware/efi/efivars" ] || ! command -v "$efibootmgr" >/dev/null 2>&1; then
    say "bootloader: no EFI variables or no efibootmgr here: no boot entry made for $1"
    return 0
  fi
  esp_number=""
  for part in "$sys/block/$1/$1"*; do
    [ -r "$part/partition" ] || continue
    type=$("$(tool blkid)" -p -o value -s PART_ENTRY_TYPE "$(need_node "${part##*/}")" 2>/dev/null)
    case $type in
      c12a7328-f81f-11d2-ba4b-00a0c93ec93b | 0xef)
        read_attr "$part/partition"
        esp_number=$attr
        break
        ;;
    esac
  done
  if [ -z "$esp_number" ]; then
    say "bootloader: no EFI system partition on $1: no boot entry made"
    return 0
  fi
  # Entries an earlier deployment made go first, then the new one after the others.
  for number in $("$efibootmgr" 2>/dev/null | sed -n 's/^Boot\([0-9A-Fa-f]\{4\}\)\*\{0,1\} fleet$/\1/p'); do
    "$efibootmgr" -q -b "$number" -B >/dev/null 2>&1
  done
  order=$("$efibootmgr" 2>/dev/null | sed -n 's/^BootOrder: //p')
  if ! "$efibootmgr" -q -c -d "$(need_node "$1")" -p "$esp_number" -L fleet -l '\EFI\BOOT\BOOTX64.EFI' >"$work/efibootmgr.out" 2>&1; then
    say "bootloader: WARNING: efibootmgr could not add a boot entry for $1: $(last_words "$work/efibootmgr.out")"
    return 0
  fi
  "$efibootmgr" >"$work/efibootmgr.out" 2>/dev/null
  number=$(sed -n 's/^Boot\([0-9A-Fa-f]\{4\}\)\*\{0,1\} fleet$/\1/p' "$work/efibootmgr.out" | head -n 1)
  current=$(sed -n 's/^BootCurrent: //p' "$work/efibootmgr.out")
  # First the network entry this environment came through (or, when it came another way, all the
  # network entries), then the disk, then the rest in their order (the other network entries,
  # the firmware's own disk entries, its setup application, shells...).
  network="" rest=""
  for entry in $(printf '%s\n' "$order" | tr ',' ' '); do
    if grep -qiE "^Boot$entry\\*? .*(PXE|HTTP|Network|IPv4|IPv6)" "$work/efibootmgr.out"; then
      network="$network${network:+,}$entry"
    fi
  done
  case ",$network," in
    *",$current,"*) [ -z "$current" ] || network=$current ;;
  esac
  for entry in $(printf '%s\n' "$order" | tr ',' ' '); do
    case ",$network," in *",$entry,"*) continue ;; esac
    rest="$rest${rest:+,}$entry"
  done
  [ -z "$number" ] || "$efibootmgr" -q -o "$network${network:+,}$number${rest:+,}$rest" >/dev/null 2>&1
  say "bootloader: EFI boot entry $number (fleet) for $1 partition $esp_number after the netboot (${network:-none}): $("$efibootmgr" 2>/dev/null | sed -n 's/^BootOrder: //p')"
  # The firmware's variables as they are now, with each entry's device path, for whoever reads
  # this log when the machine does not boot its disk.
  "$efibootmgr" -v 2>/dev/null | sed 's/^/  /'
}

# --- 4. the deployment -------------------------------------------------------------------------
if [ $kind = tarball ]; then
  progress partition
  partition_disks
  progress format
  make_arrays
  make_bcaches
  make_volume_groups
  make_filesystems
  progress mount
  mount_filesystems
  progress write-image 0 "${raw_size:-0}"
  [ -z "$dd_baseline" ] || say "note: fleet.test.dd_baseline applies to whole-disk images only"
  stream tar_into "$target"
  check_stream "tar"
  progress verify "$raw_bytes" "${raw_size:-$raw_bytes}"
  say "verify: sha256 ${raw_sum} of $raw_bytes unpacked bytes${raw_sha:+ matches raw_sha256}; the download's ${download_sum}${image_sha:+ matches sha256}"
  progress bootloader
  find_kernel
  command_line=$(kernel_command_line)
  if [ "$firmware" = bios ]; then install_extlinux "$command_line"; else install_systemd_boot "$command_line"; fi
  uefi_boot_entry "$(mapped "$boot_disk")"
  progress configure
  write_fstab
  configure "$target"
else
  disk_node=$(need_node "$target_dev")
  if [ -n "$dd_baseline" ]; then
    progress write-image 0 "$raw_size"
    say "TEST HOOK: baseline: the image written with plain dd first"
    started=$(now_cs)
    if [ -n "$unpack" ]; then
      fetch "$image_url" | $unpack | dd of="$disk_node" bs=4M iflag=fullblock conv=notrunc,fsync 2>/dev/null
    else
      fetch "$image_url" | dd of="$disk_node" bs=4M iflag=fullblock conv=notrunc,fsync 2>/dev/null
    fi
    say "write-image: baseline (plain dd): $(rate "$raw_size" $(($(now_cs) - started)))"
  fi
  progress write-image 0 "$raw_size"
  stream dd_to "$disk_node"
  check_stream "dd to $disk_node"
  progress verify "$raw_bytes" "$raw_size"
  say "verify: sha256 ${raw_sum} of $raw_bytes bytes${raw_sha:+ matches raw_sha256}; the download's ${download_sum}${image_sha:+ matches sha256}"
  sync
  read_attr "$sys/block/$target_dev/queue/logical_block_size"
  signature=$(dd if="$disk_node" bs="${attr:-512}" skip=1 count=1 2>/dev/null | head -c 8)
  if [ "$signature" = "EFI PART" ] && [ "$raw_size" -lt "$target_bytes" ]; then
    if command -v "$(tool sgdisk)" >/dev/null 2>&1; then
      run sgdisk -e "$disk_node"
    else
      run sfdisk --relocate gpt-bak-std "$disk_node"
    fi
  fi
  reread "$target_dev"
  # The image's root filesystem: by label, else the biggest ext4.
  root_part="" best=0
  for name in $(disk_and_partitions "$target_dev"); do
    [ "$name" = "$target_dev" ] && continue
    part_node=$(need_node "$name")
    label=$(probe "$part_node" LABEL)
    fstype=$(probe "$part_node" TYPE)
    say "verify: $name: ${fstype:-no filesystem}${label:+ labelled $label}"
    case $label in cloudimg-rootfs | root | fleet-root) root_part=$name; break ;; esac
    bytes=$(disk_bytes "$name")
    if [ "$fstype" = ext4 ] && [ "$bytes" -gt "$best" ]; then best=$bytes root_part=$name; fi
  done
  [ -n "$root_part" ] || fail verify "no root filesystem on $target_dev after writing the image (no partition labelled cloudimg-rootfs, root or fleet-root, no ext4)"
  say "verify: the image's root filesystem is $root_part"
  progress configure
  root_type=$(probe "$(need_node "$root_part")" TYPE)
  mkdir -p "$target" || fail configure "cannot make $target"
  "$(tool modprobe)" -q "${root_type:-ext4}" 2>/dev/null
  run mount ${root_type:+-t "$root_type"} "$(need_node "$root_part")" "$target"
  mounted=$target
  [ -z "$(j kernel_params)" ] || say "note: kernel_params are not applied to a whole-disk image (its boot loader is its own)"
  configure "$target"
  uefi_boot_entry "$target_dev"
fi

unmount_all
sync
progress configure 1 1
say "deployed: ${image_name:-the image} on $(awk '{ printf "%s%s", sep, $2; sep = ", " }' "$work/map")"
# The results: what was written where, and how fast.
if [ -n "${FLEET_RESULTS:-}" ]; then
  {
    printf '{"image": "%s", "format": "%s", "bytes": %s, "seconds": %s, "disks": [' \
      "$(printf '%s' "$image_name" | sed 's/[\\"]/\\&/g')" "$format" "${raw_bytes:-0}" "${write_seconds:-0}"
    awk '{ printf "%s{\"planned\": \"%s\", \"found\": \"%s\"}", sep, $1, $2; sep = ", " }' "$work/map"
    printf ']}\n'
  } >"$FLEET_RESULTS"
fi
rm -rf "$work"
exit 0
