#!/usr/bin/env bash
# A bootable Debian 12 disk image for an x86-64 industrial PC (UEFI), with edgegw
# installed but not yet configured. A recipe: documented in images/README.md, not built
# by CI (it needs loop devices).
#
#   sudo images/x86-ipc/build-image.sh --deb edgegw_X_amd64.deb [--out edgegw-ipc.img]
#        [--size 4G] [--mirror URL]
#
# Needs root, and the Debian packages debootstrap, fdisk (sfdisk), dosfstools,
# e2fsprogs and mount (losetup). Write the result to the IPC's disk with
#   dd if=edgegw-ipc.img of=/dev/sdX bs=4M conv=fsync status=progress
# The root partition fills the disk at first boot (systemd-repart is not in Debian 12's
# systemd; the image's first-boot unit grows it with growpart + resize2fs).
set -euo pipefail

DEB=""
OUT=edgegw-ipc.img
SIZE=4G
MIRROR=${EDGEGW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TECH_PASSWORD=${EDGEGW_TECH_PASSWORD:-}

die() { echo "build-image: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
    --deb) DEB=$(realpath "$2"); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1'" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run as root"
[ -f "$DEB" ] || die "give the amd64 package: --deb edgegw_..._amd64.deb (images/build-deb.sh)"
for t in debootstrap sfdisk mkfs.vfat mkfs.ext4 losetup; do
    command -v "$t" >/dev/null || die "$t is missing (apt-get install debootstrap fdisk dosfstools e2fsprogs mount)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgegw-ipc.XXXXXX")
ROOT=$WORK/root
LOOP=""
cleanup() {
    for m in boot/efi dev/pts dev proc sys run; do umount "$ROOT/$m" 2>/dev/null || true; done
    umount "$ROOT" 2>/dev/null || true
    [ -z "$LOOP" ] || losetup -d "$LOOP" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. The disk: GPT with an EFI system partition and an ext4 root, by label.
truncate -s "$SIZE" "$OUT"
sfdisk --quiet "$OUT" <<EOF
label: gpt
size=256MiB, type=uefi, name=esp
type=linux, name=root
EOF
LOOP=$(losetup --find --show --partscan "$OUT")
mkfs.vfat -F 32 -n ESP "${LOOP}p1" >/dev/null
mkfs.ext4 -q -L edgegw-root "${LOOP}p2"
mkdir -p "$ROOT"
mount "${LOOP}p2" "$ROOT"

# 2. Debian 12 with what an unattended gateway needs: kernel, UEFI boot loader, systemd
#    with networkd/resolved/timesyncd, and the tools to grow the root file system.
debootstrap --arch=amd64 --variant=minbase \
    --include=systemd,systemd-sysv,systemd-resolved,systemd-timesyncd,udev,dbus,linux-image-amd64,grub-efi-amd64,e2fsprogs,cloud-guest-utils,sudo,iproute2,iputils-ping,less,ca-certificates \
    bookworm "$ROOT" "$MIRROR"
mkdir -p "$ROOT/boot/efi"
mount "${LOOP}p1" "$ROOT/boot/efi"
for m in dev dev/pts proc sys run; do mount --bind "/$m" "$ROOT/$m"; done

cat >"$ROOT/etc/fstab" <<'EOF'
LABEL=edgegw-root  /          ext4  defaults,noatime,commit=60  0 1
LABEL=ESP          /boot/efi  vfat  umask=0077                   0 2
EOF
echo edgegw >"$ROOT/etc/hostname"
# DHCP and IPv6 router advertisements on every wired port; set a static address for
# the plant network in /etc/systemd/network/ on site.
cat >"$ROOT/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
IPv6AcceptRA=yes
EOF
# Grow the root partition to the whole disk once, at first boot.
cat >"$ROOT/etc/systemd/system/edgegw-growroot.service" <<'EOF'
[Unit]
Description=Grow the root file system to the whole disk (first boot)
ConditionFirstBoot=yes
DefaultDependencies=no
After=local-fs.target
Before=edgegw.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'dev=$(findmnt -no SOURCE /); growpart "/dev/$(lsblk -no PKNAME "$dev")" "${dev##*[!0-9]}" || true; resize2fs "$dev"'

[Install]
WantedBy=multi-user.target
EOF

# 3. edgegw from its package; the postinst sees a chroot and creates no device key.
cp "$DEB" "$ROOT/tmp/edgegw.deb"
chroot "$ROOT" /bin/bash -euxc '
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends /tmp/edgegw.deb
    rm -f /tmp/edgegw.deb
    systemctl enable systemd-networkd systemd-resolved systemd-timesyncd edgegw-growroot
    # the technician: console login, sudo, may read `edgegw status`
    useradd --create-home --shell /bin/bash --groups sudo,edgegw,dialout technician
    passwd --lock root
    grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram
    sed -i "s/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT=\"quiet console=tty0 console=ttyS0,115200\"/" /etc/default/grub
    update-grub
    apt-get clean
'
if [ -n "$TECH_PASSWORD" ]; then
    echo "technician:$TECH_PASSWORD" | chroot "$ROOT" chpasswd
    chroot "$ROOT" chage -d 0 technician  # must be changed at first login
else
    echo "build-image: no EDGEGW_TECH_PASSWORD: account 'technician' has no password yet;" \
        "set one before shipping (chroot, or systemd-firstboot on the device)" >&2
    chroot "$ROOT" passwd --lock technician
fi

# 4. Per-device identity is made on the device: no machine-id, no edgegw key, no state.
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
rm -rf "$ROOT/var/lib/edgegw/keys" "$ROOT/var/lib/edgegw/outbox.db"* "$ROOT/var/lib/edgegw/status.json"
echo "build-image: $OUT ($SIZE) ready: edgegw installed, not configured" >&2
