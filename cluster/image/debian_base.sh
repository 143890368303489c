#!/usr/bin/env bash
# Build a Debian bookworm base image from Debian's own packages (debootstrap) and import it into podman.
#
#   cluster/image/debian_base.sh [TAG]    # default localhost/grounding-debian-base:bookworm; needs root
#
# Why: a machine that reaches only the package registries (Debian, PyPI) cannot pull rayproject/ray or
# any other registry image, so cluster/image/Containerfile.debian starts from this instead.
# Needs: apt-get install podman debootstrap. DEBIAN_MIRROR overrides the mirror (default: the one apt uses).
set -euo pipefail
TAG="${1:-localhost/grounding-debian-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d /var/tmp/grounding-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
# minbase + what the image needs to make a venv and reach PyPI over TLS; no recommends, no docs.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
    bookworm "$ROOTFS" "$MIRROR"
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
tar -C "$ROOTFS" --numeric-owner -c . | podman import --change 'CMD ["/bin/bash"]' - "$TAG"
podman image inspect --format '{{.Id}} {{.Size}}' "$TAG"
