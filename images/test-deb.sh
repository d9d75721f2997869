#!/usr/bin/env bash
# End-to-end test of the Debian package: build it, install it with apt into a fresh
# Debian 12 (bookworm) chroot made by debootstrap, and use it there the way a technician
# would; then remove and purge it.
#
#   sudo images/test-deb.sh [--deb FILE] [--arch amd64|arm64|armhf] [--demo] [--keep]
#                           [--cache DIR] [--compress xz|gzip] [--exec CMD]
#
# Needs root (chroot, mount), debootstrap and dpkg-deb, and Debian's and PyPI's package
# repositories; for another architecture also qemu-user-static and binfmt-support (the
# chroot's programs run under emulation). --demo installs mosquitto in the chroot and runs
# `edgegw demo --duration 20 --json` there (simulated Modbus, OPC UA and S7 PLCs, the
# shipped model, a verifying receiver), requiring every polled point verified, and prints
# the footprint (disk, peak RSS of the gateway process). --cache DIR keeps the bare chroot
# as a tarball there, so that later runs skip debootstrap. --exec CMD runs CMD (a shell
# command, on this machine) once the package is installed and checked, before it is
# removed, with EDGEGW_CHROOT set to the chroot (its /proc mounted); a failure of CMD fails
# the test (benchmarks/footprint_chroot.py measures the footprint this way). --keep keeps the
# work directory. EDGEGW_DEBIAN_MIRROR overrides http://deb.debian.org/debian. Ends with
# "test-deb: OK (N s)", or "test-deb: FAILED: why" and exit status 1.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MIRROR=${EDGEGW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
DEB=""
KEEP=0
CACHE=""
ARCH=""
DEMO=0
COMPRESS=xz
EXEC=""
START=$(date +%s)

fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
step() { echo "test-deb: [$(($(date +%s) - START)) s] $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
    --deb) DEB=$(realpath "$2"); shift 2 ;;
    --keep) KEEP=1; shift ;;
    --cache) CACHE=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --demo) DEMO=1; shift ;;
    --compress) COMPRESS=$2; shift 2 ;;
    --exec) EXEC=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument '$1' (try --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, chroot and mount need it)"
command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap"
command -v dpkg-deb >/dev/null || fail "dpkg-deb is missing: apt-get install dpkg"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgegw-test-deb.XXXXXX")
ROOT=$WORK/root
cleanup() {
    [ -z "${SAMPLER:-}" ] || kill "$SAMPLER" 2>/dev/null || true
    umount "$ROOT/proc" 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then
        echo "test-deb: kept $WORK (chroot in $ROOT)" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# 1. The package.
if [ -z "$DEB" ]; then
    step "building the package${ARCH:+ for $ARCH}"
    DEB=$(PYTHON=${PYTHON:-python3} "$REPO/images/build-deb.sh" --out "$WORK/dist" \
        --compress "$COMPRESS" ${ARCH:+--arch "$ARCH"} | tail -1) || fail "building the package"
fi
[ -f "$DEB" ] || fail "no package at '$DEB'"
ARCH=$(dpkg-deb -f "$DEB" Architecture)
if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
    case "$ARCH" in arm64) EMU=aarch64 ;; armhf) EMU=arm ;; *) EMU=$ARCH ;; esac
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$EMU" ] || fail "$ARCH programs cannot run here: \
apt-get install qemu-user-static binfmt-support (and mount binfmt_misc: \
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable)"
fi

# 2. A bare Debian 12: what a fresh gateway has before edgegw (minbase: no systemd).
TARBALL=${CACHE:+$CACHE/$SUITE-minbase-$ARCH.tar}
if [ -n "$TARBALL" ] && [ -f "$TARBALL" ]; then
    step "unpacking the cached $SUITE chroot $TARBALL"
    mkdir -p "$ROOT" && tar -C "$ROOT" -xf "$TARBALL"
else
    step "debootstrap $SUITE ($ARCH) from $MIRROR"
    debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed (log above)"; }
    if [ -n "$TARBALL" ]; then
        mkdir -p "$CACHE" && tar -C "$ROOT" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
    fi
fi
mount -t proc proc "$ROOT/proc"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"  # start no services
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"

# 3. Install as a technician would: apt resolves the dependencies (python3.11) itself.
step "apt-get install ./$(basename "$DEB")"
cp "$DEB" "$ROOT/tmp/"
in_root apt-get update -qq >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; fail "apt-get update"; }
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "/tmp/$(basename "$DEB")" >"$WORK/install.log" 2>&1 \
    || { tail -30 "$WORK/install.log" >&2; fail "installing the package"; }
grep '^edgegw' "$WORK/install.log" >&2 || true

# 4. What the package promises.
step "checks"
out=$(in_root edgegw --version) || fail "edgegw --version"
echo "  $out" >&2
[ "$out" = "edgegw $(dpkg-deb -f "$DEB" Version | sed 's/-[^-]*$//')" ] || fail "unexpected version '$out'"
in_root edgegw validate /etc/edgegw/config.yaml >"$WORK/validate.log" 2>&1 \
    || { cat "$WORK/validate.log" >&2; fail "edgegw validate /etc/edgegw/config.yaml"; }
head -1 "$WORK/validate.log" | sed 's/^/  /' >&2
in_root getent passwd edgegw >/dev/null || fail "no user edgegw"
[ "$(in_root stat -c '%U:%G %a' /var/lib/edgegw)" = "edgegw:edgegw 750" ] \
    || fail "/var/lib/edgegw is $(in_root stat -c '%U:%G %a' /var/lib/edgegw), not edgegw:edgegw 750"
[ ! -e "$ROOT/var/lib/edgegw/keys" ] || fail "a device key was created inside an image build (chroot)"
in_root dpkg-query -W -f='${Conffiles}\n' edgegw | grep -q /etc/edgegw/config.yaml \
    || fail "/etc/edgegw/config.yaml is not a conffile"
[ -f "$ROOT/usr/lib/systemd/system/edgegw.service" ] || fail "no unit"
in_root /opt/edgegw/bin/python -c 'import sys; assert sys.prefix == "/opt/edgegw", sys.prefix' \
    || fail "/opt/edgegw is not a venv of its own"
# The first start's key creation, as the service user (what the daemon does).
in_root runuser -u edgegw -- /opt/edgegw/bin/python -c \
    'from security import DeviceKey; print("  kid", DeviceKey.load_or_create("/var/lib/edgegw")[0].kid.hex())' >&2 \
    || fail "the service user cannot create the device key"
[ "$(in_root stat -c '%U %a' /var/lib/edgegw/keys/device.ed25519.pem)" = "edgegw 600" ] \
    || fail "device key is not edgegw 600"
# edgegw doctor and status, through the CLI when it lists them, else through the modules
# themselves (for builds made before the commands were registered).
edgegw_cmd() {
    if in_root edgegw --help | grep -qw "$1"; then
        in_root edgegw "$@"
    else
        in_root /opt/edgegw/bin/python -c 'import argparse, importlib, sys
p = argparse.ArgumentParser(prog="edgegw")
importlib.import_module("gateway.commands." + sys.argv[1]).register(p.add_subparsers())
a = p.parse_args(sys.argv[1:])
sys.exit(a.func(a))' "$@"
    fi
}
# The unedited example config must fail doctor (gateway.id CHANGE-ME, example addresses);
# doctor connects to nothing here: the broker name does not resolve and the PLC's
# address is from the documentation range, which doctor refuses to try.
rc=0
edgegw_cmd doctor -c /etc/edgegw/config.yaml --timeout 2 >"$WORK/doctor.log" 2>&1 || rc=$?
sed 's/^/  | /' "$WORK/doctor.log" >&2
[ "$rc" = 1 ] || fail "edgegw doctor on the example config exited $rc, not 1"
grep -q "CHANGE-ME" "$WORK/doctor.log" || fail "doctor did not flag the unedited gateway id"
rc=0
edgegw_cmd status --once >"$WORK/status.log" 2>&1 || rc=$?
sed 's/^/  | /' "$WORK/status.log" >&2
[ "$rc" = 1 ] && grep -q "not running" "$WORK/status.log" \
    || fail "edgegw status --once without a daemon: exit $rc, not 1 with 'not running'"

# 5. The whole chain on this architecture: simulated PLCs of every protocol, the model,
#    mosquitto and a verifying receiver, all from the installed package.
if [ "$DEMO" = 1 ]; then
    step "edgegw demo --duration 20 --json ($ARCH)"
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        mosquitto >"$WORK/mosquitto.log" 2>&1 || { tail -20 "$WORK/mosquitto.log" >&2; fail "installing mosquitto"; }
    # Peak RSS of the gateway process (under emulation: qemu's own memory included).
    (
        peak=0
        while sleep 0.5; do
            for d in /proc/[0-9]*; do
                [ "$(readlink "$d/root" 2>/dev/null)" = "$ROOT" ] || continue
                tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q "gateway.cli run" || continue
                kb=$(awk '/^VmHWM/ {print $2}' "$d/status" 2>/dev/null || echo 0)
                [ "${kb:-0}" -le "$peak" ] || { peak=$kb; echo "$peak" >"$WORK/rss.kb"; }
            done
        done
    ) &
    SAMPLER=$!
    demo_failed() {
        tail -30 "$WORK/demo.log" >&2
        for f in "$ROOT"/tmp/edgegw-demo-*/gateway.log; do
            [ -f "$f" ] && { echo "  gateway.log:" >&2; tail -30 "$f" | sed 's/^/  | /' >&2; }
        done
        fail "$1"
    }
    in_root env HOME=/root edgegw demo --duration 20 --json >"$WORK/demo.log" 2>&1 \
        || demo_failed "edgegw demo on $ARCH"
    kill "$SAMPLER" 2>/dev/null || true; SAMPLER=""
    result=$(tail -1 "$WORK/demo.log")
    grep -q '^edgegw demo: OK' "$WORK/demo.log" || demo_failed "demo not OK"
    echo "$result" | "${PYTHON:-python3}" -c 'import json, sys
r = json.loads(sys.stdin.read())
assert r["ok"] and r["points_polled"] > 0 and r["points_verified"] == r["points_polled"], r
print("  demo:", r["points_verified"], "points verified of", r["points_polled"], "polled;",
      r["messages_verified"], "messages; gaps", r["gaps"], "; anomaly events", r["anomaly_events"])
for part, why in r.get("left_out", {}).items():
    print("  demo: left out:", part, "-", why)' >&2 \
        || fail "the demo did not verify every polled point: $result"
    rss=$(( $(cat "$WORK/rss.kb" 2>/dev/null || echo 0) / 1024 ))
    opt=$(du -sm "$ROOT/opt/edgegw" | cut -f1)
    echo "test-deb: footprint $ARCH: package $(du -h "$DEB" | cut -f1), installed $(( $(dpkg-deb -f "$DEB" Installed-Size) / 1024 )) MiB (/opt/edgegw $opt MiB), gateway peak RSS $rss MiB$([ "$ARCH" = "$(dpkg --print-architecture)" ] || echo ' (under qemu-user)')"
fi

# 6. Whatever the caller wants to run against the installed package (a benchmark...).
if [ -n "$EXEC" ]; then
    step "--exec: $EXEC"
    EDGEGW_CHROOT=$ROOT bash -c "$EXEC" || fail "--exec '$EXEC' exited $?"
fi

# 7. Remove keeps the config; purge removes it and keeps the device's identity.
step "remove and purge"
in_root env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q edgegw >"$WORK/remove.log" 2>&1 \
    || { tail -20 "$WORK/remove.log" >&2; fail "apt-get remove"; }
[ ! -e "$ROOT/opt/edgegw" ] || fail "/opt/edgegw is left after remove"
[ -f "$ROOT/etc/edgegw/config.yaml" ] || fail "remove deleted the config"
in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q edgegw >"$WORK/purge.log" 2>&1 \
    || { tail -20 "$WORK/purge.log" >&2; fail "apt-get purge"; }
[ ! -e "$ROOT/etc/edgegw" ] || fail "/etc/edgegw is left after purge"
[ -f "$ROOT/var/lib/edgegw/keys/device.ed25519.pem" ] || fail "purge deleted the device key"

echo "test-deb: OK ($(($(date +%s) - START)) s, $(basename "$DEB"), $(du -h "$DEB" | cut -f1))"
