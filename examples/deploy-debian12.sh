#!/usr/bin/env bash
# Deploys a real Debian 12 to a QEMU virtual machine with fleet, the whole way, and shows that
# what the fleet file asked for took effect on the installed system: its hostname, the SSH key
# and the planned static address. Not part of CI (it downloads ~250 MB of Debian packages once
# and takes several minutes under TCG); run it as root on a machine where `bash .ci/setup` ran:
#
#   bash examples/deploy-debian12.sh            (KEEP=1 keeps the work directory)
#
# 1. A Debian 12 root filesystem tarball (tar-zst) built with mmdebstrap from Debian's packages:
#    the generic kernel, systemd, cloud-init, openssh-server, netplan.io; cached in
#    /var/cache/fleet-debian12 (rebuilt when this script's package list changes).
# 2. A namespace `fleetdeb` with a bridge (10.99.0.1/24, the controller) and a tap for QEMU; no
#    packet leaves it. `fleet serve` runs inside it with a fleet file that declares one machine
#    (BIOS, one 8 GiB virtio disk, power type qemu: fleet starts and stops the VM) with
#    state = "deployed", image debian12, the flat storage template, a static address 10.99.0.50
#    and an SSH key made for this run.
# 3. `fleet apply --yes` takes it through enlist-free commissioning, testing, allocation and
#    deployment to deployed; the script then SSHes to debian@10.99.0.50 (cloud-init's default
#    user) with the key and prints the hostname, the address and the authorized key the
#    installed system has, with the timings.
set -euo pipefail
cd "$(dirname "$0")/.."

packages="linux-image-amd64,systemd-sysv,udev,cloud-init,openssh-server,netplan.io,iproute2,curl,ca-certificates,dbus,locales,sudo"
cache=/var/cache/fleet-debian12
namespace=fleetdeb
mac=52:54:00:de:b1:01
address=10.99.0.50

say() { printf '\n[deploy-debian12 %s] %s\n' "$(date +%T)" "$*"; }
die() { printf '[deploy-debian12] error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it makes a network namespace and a tap device)"
[ -e /var/cache/fleet-ephemeral/kernel ] || die "no ephemeral environment: run .ci/setup first"
command -v qemu-system-x86_64 >/dev/null || die "no QEMU: run .ci/setup first"

# --- 1. the image ------------------------------------------------------------------------------
mkdir -p "$cache"
image=$cache/debian12-rootfs.tar.zst
if [ ! -s "$image" ] || [ "$(cat "$cache/packages" 2>/dev/null)" != "$packages" ]; then
  command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap
  say "building $image with mmdebstrap (bookworm: $packages)"
  started=$(date +%s)
  # mmdebstrap picks the output format from the name's extension: the partial file keeps it.
  mmdebstrap --variant=minbase --include="$packages" \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd ssh' \
    bookworm "$cache/partial.tar.zst"
  mv "$cache/partial.tar.zst" "$image"
  echo "$packages" >"$cache/packages"
  say "image built in $(($(date +%s) - started)) s"
fi
image_sha=$(sha256sum "$image" | cut -d' ' -f1)
say "image $image: $(stat -c %s "$image") bytes, sha256 $image_sha"

# --- 2. the boot network and the controller ----------------------------------------------------
cargo build --quiet --bin fleet
fleet=${CARGO_TARGET_DIR:-$PWD/target}/debug/fleet
work=$(mktemp -d -t fleet-debian12.XXXXXX)
cleanup() {
  [ -n "${controller:-}" ] && kill "$controller" 2>/dev/null
  [ -s "$work/qemu.pid" ] && kill "$(cat "$work/qemu.pid")" 2>/dev/null
  ip netns del "$namespace" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
ip netns del "$namespace" 2>/dev/null || true
ip netns add "$namespace"
in_ns() { ip netns exec "$namespace" "$@"; }
in_ns ip link set lo up
in_ns ip link add br0 type bridge
in_ns ip addr add 10.99.0.1/24 dev br0
in_ns ip link set br0 up
in_ns ip tuntap add tap0 mode tap
in_ns ip link set tap0 master br0
in_ns ip link set tap0 up

ssh-keygen -q -t ed25519 -N '' -C fleet-debian12-demo -f "$work/key"
truncate -s 8G "$work/disk.img"
# One vCPU: with two, QEMU's multi-threaded TCG hit an `iotlb_to_section` assertion during boot.
qemu=(qemu-system-x86_64 -accel tcg -display none -m 2048 -smp 1 -boot n -no-shutdown
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no
  -device "virtio-net-pci,netdev=n0,mac=$mac,bootindex=1"
  -drive "file=$work/disk.img,if=none,id=d0,format=raw"
  -device virtio-blk-pci,drive=d0,serial=debian12-demo-disk
  -serial "file:$work/console.log" -pidfile "$work/qemu.pid")
qemu_toml=$(printf '"%s", ' "${qemu[@]}")
qemu_toml="[${qemu_toml%, }]"

cat >"$work/fleet.toml" <<EOF
[controller]
tftp_listen = "10.99.0.1:69"
http_boot_url = "http://10.99.0.1:5248"
loader_dir = "/usr/lib/ipxe"
ephemeral_image = "ephemeral"
dhcp_interfaces = ["br0"]

[subnets.boot]
cidr = "10.99.0.0/24"
interface = "br0"
dynamic_range = { start = "10.99.0.100", end = "10.99.0.199" }

[images.ephemeral]
kernel = { path = "/var/cache/fleet-ephemeral/kernel" }
initrd = { path = "/var/cache/fleet-ephemeral/initrd" }

[images.debian12]
os = "debian"
release = "12"
root = { path = "$image", sha256 = "$image_sha", format = "tar-zst" }

[storage_templates.flat]
layout = "flat"

[network_templates.static]
interfaces = [{ name = "eth0", subnet = "boot", link = "static" }]

[[machine]]
name = "debian-demo"
macs = ["$mac"]
state = "deployed"
image = "debian12"
storage = "flat"
network = "static"
interfaces = [{ name = "eth0", subnet = "boot", ip = "$address" }]
ssh_keys = ["$(cat "$work/key.pub")"]
kernel_params = "console=ttyS0,115200"
power = { type = "qemu", qmp_socket = "$work/qmp.sock", command = $qemu_toml }

[policy.timeouts]
boot = "15m"
heartbeat = "10m"
commissioning = "30m"
testing = "30m"
deploying = "60m"
EOF
"$fleet" validate -f "$work/fleet.toml"

export FLEET_STATE_DIR=$work/state
say "fleet serve in namespace $namespace (log $work/controller.log)"
in_ns "$fleet" serve -f "$work/fleet.toml" --listen 127.0.0.1:5240 --boot-listen 10.99.0.1:5248 \
  >"$work/controller.log" 2>&1 &
controller=$!
for _ in $(seq 300); do [ -s "$FLEET_STATE_DIR/api-url" ] && break; sleep 0.1; done
[ -s "$FLEET_STATE_DIR/api-url" ] || die "the controller did not start: $(tail -n 5 "$work/controller.log")"

# --- 3. the plan, the apply, and what the installed system says --------------------------------
say "fleet plan"
in_ns "$fleet" plan -f "$work/fleet.toml" || true
say "fleet apply --yes (commission, test, allocate, deploy: several minutes under TCG)"
started=$(date +%s)
if ! in_ns "$fleet" apply -f "$work/fleet.toml" --yes; then
  tail -n 40 "$work/console.log" >&2 || true
  in_ns "$fleet" machine show debian-demo >&2 || true
  die "the apply failed"
fi
say "deployed after $(($(date +%s) - started)) s"
in_ns "$fleet" events debian-demo --limit 40 || true

# cloud-init gives the keys to Debian's default user `debian` (root logins only print "Please
# login as the user debian", as on Debian's and Ubuntu's cloud images and MAAS deployments).
say "ssh debian@$address (the key of this run): hostname, address, authorized key"
ssh_opts=(-i "$work/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10)
for _ in $(seq 60); do
  in_ns ssh "${ssh_opts[@]}" "debian@$address" true 2>/dev/null && break
  sleep 5
done
in_ns ssh "${ssh_opts[@]}" "debian@$address" \
  'echo "hostname: $(hostname)"; ip -4 -o addr show | grep -v " lo "; echo "authorized_keys:"; cat ~/.ssh/authorized_keys; head -n 2 /etc/os-release; findmnt / -o SOURCE,FSTYPE; cloud-init status --long || true'
say "done"
