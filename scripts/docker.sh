#!/usr/bin/env bash
# Make sure a Docker daemon answers: install Debian's docker.io if needed, start dockerd if none runs.
set -euo pipefail
# Functions exported into the environment (export -f) never stand in for the programs checked here.
for f in $(compgen -A function); do unset -f "$f"; done
log() { echo "setup: $*" >&2; }
docker info >/dev/null 2>&1 && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
if ! type -P dockerd >/dev/null; then
  log "installing docker.io and debootstrap (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd in the background (log: /tmp/comem-dockerd.log)"
  $sudo sh -c 'nohup dockerd > /tmp/comem-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /tmp/comem-dockerd.log"; tail -5 /tmp/comem-dockerd.log >&2; exit 1; }
log "docker daemon is up"
