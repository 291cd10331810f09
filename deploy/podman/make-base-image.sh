#!/usr/bin/env bash
# make-base-image.sh TAG: a Debian 12 (bookworm) image with Python 3.11, made
# locally with debootstrap and imported into podman as TAG, for machines that
# cannot pull python:3.11-slim. Build the service image on it with
#   podman build --build-arg BASE=TAG ...
# Needs root, debootstrap and podman. DEBIAN_MIRROR overrides the mirror
# (default: the machine's own, from /etc/apt/sources.list.d/debian.sources).
# Takes about a minute and 280 MB; tests/deploy keys the tag by this file's hash.
set -euo pipefail
TAG=${1:?usage: make-base-image.sh TAG}
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS=$(mktemp -d /var/tmp/bookworm-py.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# no package caches or lists in the image
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | podman import --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "$TAG"
