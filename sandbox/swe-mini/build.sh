#!/usr/bin/env bash
# Build the swe-mini task images locally (no registry; PyPI is needed once, at build time).
#
#   images.txt lists, per task: the image name, the exact source distribution, the task id.
#   Each image: comem-base + a venv with pinned pytest + the sdist unpacked at /testbed with the
#   task's bug.diff applied and committed as the only commit (see Dockerfile).
#
# Idempotent: images that exist are kept unless FORCE=1. Env: SWE_MINI_DATA (folder with the
# task folders; found next to the package by default), CA_BUNDLE (the CA bundle pip trusts inside
# the build; default: the host's), PIP_INDEX_URL, JOBS (parallel builds, default 3), ONLY (space-
# separated image names or task ids to build), COMEM_BASE_IMAGE.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
BASE_IMAGE="${COMEM_BASE_IMAGE:-comem-base:bookworm}"
FORCE="${FORCE:-0}"
JOBS="${JOBS:-3}"
ONLY="${ONLY:-}"
INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}"

die() { echo "swe-mini: $*" >&2; exit 1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

data="${SWE_MINI_DATA:-}"
if [ -z "$data" ]; then
  for d in "$here/../../comem_cli/bench/swe_mini" "$here/../../bench/swe_mini"; do
    [ -f "$d/instances.jsonl" ] && { data="$(cd "$d" && pwd)"; break; }
  done
fi
[ -n "$data" ] && [ -d "$data" ] || die "cannot find the swe-mini data folder (set SWE_MINI_DATA)"

ca="${CA_BUNDLE:-}"
if [ -z "$ca" ]; then
  for f in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    [ -n "$f" ] && [ -f "$f" ] && { ca="$f"; break; }
  done
fi
[ -n "$ca" ] && [ -f "$ca" ] || die "no CA bundle found; set CA_BUNDLE=/path/to/ca-certificates.crt"

docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon; start it with \`make docker\`"
have_image "$BASE_IMAGE" || bash "$here/../build.sh"   # the debootstrap base image, built once

# What to build.
todo=()
while read -r image sdist task _; do
  case "$image" in ''|'#'*) continue ;; esac
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $image "* && " $ONLY " != *" $task "* ]]; then continue; fi
  [ -f "$data/$task/bug.diff" ] || die "missing $data/$task/bug.diff"
  if [ "$FORCE" = 1 ] || ! have_image "$image"; then todo+=("$image $sdist $task"); fi
done < "$here/images.txt"

if [ "${#todo[@]}" = 0 ]; then
  echo "swe-mini: images ready" >&2
  exit 0
fi

# PyPI must answer (with the CA bundle) before we start; say so in one line if it does not.
if command -v python3 >/dev/null; then
  reason="$(python3 - "$INDEX_URL" "$ca" 2>&1 <<'PY'
import ssl, sys, urllib.request
try:
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/pytest/", context=ctx, timeout=20).read(1)
except Exception as e:
    print(str(getattr(e, "reason", None) or e).splitlines()[0][:160])
    sys.exit(1)
PY
)" || die "cannot reach the package index ${INDEX_URL} (${reason}); it is needed once, to fetch the task sources: check the network / proxy, or CA_BUNDLE=$ca"
fi

logdir="$(mktemp -d /tmp/comem-swe-mini-build.XXXXXX)"
trap 'rm -rf "$logdir"/ctx-*' EXIT
nocache=(); [ "$FORCE" = 1 ] && nocache=(--no-cache)

build_one() {  # image sdist task
  local image="$1" sdist="$2" task="$3" ctx="$logdir/ctx-$3" log="$logdir/$3.log" start=$SECONDS
  mkdir -p "$ctx"
  cp "$here/Dockerfile" "$ctx/Dockerfile"
  cp "$data/$task/bug.diff" "$ctx/bug.diff"
  cp "$ca" "$ctx/ca.crt"
  if docker build "${nocache[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg SDIST="$sdist" \
       --build-arg PIP_INDEX_URL="$INDEX_URL" --label comem.swe-mini.task="$task" -t "$image" "$ctx" >"$log" 2>&1; then
    echo "swe-mini: built $image ($((SECONDS - start)) s)" >&2
    rm -f "$log"
  elif grep -qE "NewConnectionError|Max retries exceeded|SSLError|CERTIFICATE_VERIFY_FAILED|Could not fetch URL|Temporary failure in name resolution" "$log"; then
    echo "swe-mini: cannot reach the package index from the build container while building $image (log: $log)" >&2
    return 1
  else
    echo "swe-mini: building $image failed: $(grep -v '^\s*$' "$log" | tail -1) (log: $log)" >&2
    return 1
  fi
}

# The first build alone fills the shared layer (venv + pytest); the rest run in parallel on it.
build_one ${todo[0]} || exit 1
for entry in "${todo[@]:1}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.5; done
  ( build_one $entry || touch "$logdir/failed" ) &
done
wait
[ ! -e "$logdir/failed" ] || exit 1
rmdir "$logdir" 2>/dev/null || true
echo "swe-mini: images ready" >&2
