#!/bin/bash -e
# pi-gen, on the build host: hand the edgegw package to the image's chroot.
# Put exactly one edgegw_*_arm64.deb (images/build-deb.sh --arch arm64) into files/.
shopt -s nullglob
debs=(files/edgegw_*_arm64.deb)
if [ "${#debs[@]}" -ne 1 ]; then
    echo "stage-edgegw: put exactly one edgegw_*_arm64.deb into $(pwd)/files (images/build-deb.sh --arch arm64)" >&2
    exit 1
fi
install -m 0644 "${debs[0]}" "${ROOTFS_DIR}/tmp/edgegw.deb"

# Modbus RTU on the Pi's own UART (GPIO 14/15, an RS-485 HAT): opt in with
# EDGEGW_PI_UART=1 in pi-gen's config. It frees the UART from the serial console.
if [ "${EDGEGW_PI_UART:-0}" = 1 ]; then
    grep -q '^enable_uart=1' "${ROOTFS_DIR}/boot/firmware/config.txt" \
        || echo 'enable_uart=1' >>"${ROOTFS_DIR}/boot/firmware/config.txt"
    sed -i 's/console=serial0,[0-9]* //' "${ROOTFS_DIR}/boot/firmware/cmdline.txt"
fi
