#!/usr/bin/env bash
# Build comem's sandbox images locally, without a registry.
#
#   comem-base:bookworm   debootstrap --variant=minbase + docker import (python3, git, bash, patch)
#   comem-sandbox:latest  sandbox/Dockerfile layered on the base (the image `comem fix` uses)
#
# Idempotent: an image that already exists is kept unless FORCE=1, so a second run takes seconds.
set -euo pipefail
# Functions exported into the environment (export -f) never stand in for the programs checked here.
for f in $(compgen -A function); do unset -f "$f"; done
here="$(cd "$(dirname "$0")" && pwd)"
BASE_IMAGE="${COMEM_BASE_IMAGE:-comem-base:bookworm}"
SANDBOX_IMAGE="${COMEM_SANDBOX_IMAGE:-comem-sandbox:latest}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
FORCE="${FORCE:-0}"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if [ "$FORCE" = 1 ] || ! have_image "$BASE_IMAGE"; then
  type -P debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  type -P debootstrap >/dev/null || { echo "comem: debootstrap is not installed and could not be installed" >&2; exit 1; }
  root="$(mktemp -d /tmp/comem-rootfs.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  echo "comem: debootstrap bookworm into $root (a few minutes, once)" >&2
  debootstrap --variant=minbase \
    --include=python3,python3-venv,git,bash,coreutils,patch,ca-certificates,procps \
    bookworm "$root" "$MIRROR" >/tmp/comem-debootstrap.log 2>&1 \
    || { tail -20 /tmp/comem-debootstrap.log >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  echo "comem: built $BASE_IMAGE" >&2
fi

if [ "$FORCE" = 1 ] || ! have_image "$SANDBOX_IMAGE"; then
  docker build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$SANDBOX_IMAGE" "$here" >/dev/null
  echo "comem: built $SANDBOX_IMAGE" >&2
fi
have_image "$SANDBOX_IMAGE" || { echo "comem: $SANDBOX_IMAGE is missing after the build" >&2; exit 1; }
docker run --rm --network none "$SANDBOX_IMAGE" bash -c 'python3 --version && git --version' >/dev/null \
  || { echo "comem: $SANDBOX_IMAGE does not run python3 and git" >&2; exit 1; }
echo "comem: images ready: $BASE_IMAGE $SANDBOX_IMAGE" >&2
