#!/usr/bin/env bash
# Build a Debian base image locally, for hosts that cannot pull from an image registry.
#
#   sudo infra/container/bootstrap-base.sh [IMAGE] [SUITE] [MIRROR]
#
# debootstrap writes a minimal Debian root file system (with python3, venv, pip, CA
# certificates and wget already in it), and `podman import` turns it into an image
# (default name localhost/textworker-base:bookworm). Build the Dockerfile on it with
#   podman build --build-arg BASE=localhost/textworker-base:bookworm ...
# (infra/container/smoke.sh does that and runs the image). Needs root, debootstrap and
# podman (both in Debian: apt-get install debootstrap podman runc).
set -euo pipefail
IMAGE=${1:-localhost/textworker-base:bookworm}
SUITE=${2:-bookworm}
MIRROR=${3:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /var/tmp/textworker-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,wget \
    "$SUITE" "$ROOT" "$MIRROR"
# apt in the image reads the same mirror; no package lists or caches in the image
echo "deb $MIRROR $SUITE main" > "$ROOT/etc/apt/sources.list"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/tmp/*
tar -C "$ROOT" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $SUITE minbase from $MIRROR" \
    - "$IMAGE"
podman image ls "$IMAGE"
