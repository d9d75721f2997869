#!/bin/bash -e
# pi-gen, inside the image: install edgegw from the package (apt pulls python3.11).
# postinst sees a chroot and leaves the device key to the first start on each Pi:
# an image must never carry a key, or every gateway made from it would share it.
apt-get install -y --no-install-recommends /tmp/edgegw.deb
rm -f /tmp/edgegw.deb
systemctl enable systemd-timesyncd.service

# Belt and braces: no identity and no runtime state in the image.
rm -rf /var/lib/edgegw/keys /var/lib/edgegw/outbox.db* /var/lib/edgegw/status.json

# The technician account pi-gen creates (FIRST_USER_NAME) may read `edgegw status`.
if [ -n "${FIRST_USER_NAME:-}" ] && id "${FIRST_USER_NAME}" >/dev/null 2>&1; then
    usermod -aG edgegw "${FIRST_USER_NAME}"
fi
