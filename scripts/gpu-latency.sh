#!/usr/bin/env bash
# comem bench latency on real vLLM engines on one GPU (issue 12): an 8B-shaped main model and a
# 1.7B-shaped memory model (random weights, real Qwen2.5 tokenizer, built once), the cost model
# calibrated on them, then every arm replayed at 1 / 8 / 32 / 128 concurrent runs, measured and
# predicted side by side. Writes under OUT (default gpu-latency-out/):
#   engine-params.json        the cost model fitted to these engines (--cost-params FILE)
#   rows-C.json (+ .serving.json)  one file per concurrency C: measured rows with predictions
#   latency.json  report.html  latency.png
# Resumable per row: a concurrency whose rows-C.json exists is skipped (delete it to redo).
# Budget (an estimate: not yet run on a GPU): about ten minutes on one H100: two builds ~2 min the
# first time, four engine starts, 4 trajectories cut to 12 steps, 0.3 s per command, 256-token summaries.
# Knobs: OUT, TRAJECTORIES (default: the bundled comem_cli/data/trajectories/mini-swe-agent), N_TRAJ, PYTHON,
#        LEVELS ("1 8 32 128"), MAIN_ARCH (qwen3-8b), MEMORY_ARCH (qwen3-1.7b), MAX_STEPS, ARMS.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu-latency-out}"
TRAJ="${TRAJECTORIES:-$REPO/comem_cli/data/trajectories/mini-swe-agent}"
LEVELS="${LEVELS:-1 8 32 128}"
MAIN_ARCH="${MAIN_ARCH:-qwen3-8b}"
MEMORY_ARCH="${MEMORY_ARCH:-qwen3-1.7b}"
MAX_STEPS="${MAX_STEPS:-12}"
ARMS="${ARMS:-full,comem}"  # sync is always added (the ratios need it); full,mask,sync,comem takes longer
N_TRAJ="${N_TRAJ:-4}"  # trajectories cycled: max(C, N_TRAJ) runs per row
VENV="${GPU_VENV:-$REPO/.venv-gpu}"
mkdir -p "$OUT/trajs"
ls "$TRAJ"/*.traj.json* | head -n "$N_TRAJ" | while read -r f; do cp -n "$f" "$OUT/trajs/"; done
export COMEM_MODEL_CACHE="${COMEM_MODEL_CACHE:-$OUT/models}"

# 1. CUDA vLLM + comem (bench extra: the Qwen2.5 tokenizer) in their own venv, once.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm, comem_cli" 2>/dev/null; then
    echo "gpu-latency: installing vllm (CUDA) and comem[bench] into $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q vllm
    "$VENV/bin/python" -m pip install -q -e "$REPO[bench]"
fi
PY="$VENV/bin/python"
export PYTHONPATH="$REPO"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

COMMON=(bench latency --trajectories "$OUT/trajs" --serving vllm --main-arch "$MAIN_ARCH" --memory-arch "$MEMORY_ARCH"
        --memory "$ARMS" --k 2 --max-steps "$MAX_STEPS" --command-s 0.3 --summary-tokens 256 --no-prewarm)

# 2. Calibrate once (the grid, then concurrency 1 measured and predicted), 3. the other levels
#    against the saved fit. Each level is one invocation (engines started and stopped by comem).
for C in $LEVELS; do
    if [ -s "$OUT/rows-$C.json" ]; then echo "gpu-latency: concurrency $C done, skipped"; continue; fi
    if [ ! -s "$OUT/engine-params.json" ]; then
        "$PY" -m comem_cli "${COMMON[@]}" --concurrency "$C" --calibrate-engine --cost-params "$OUT/engine-params.json" \
            --json "$OUT/rows-$C.json" || [ -s "$OUT/rows-$C.json" ]  # a fit outside tolerance still leaves its rows
    else
        "$PY" -m comem_cli "${COMMON[@]}" --concurrency "$C" --cost-params "$OUT/engine-params.json" --json "$OUT/rows-$C.json"
    fi
done

# 4. One table, one page, one PNG.
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [r for f in sorted(out.glob("rows-*.json")) if not f.name.endswith(".serving.json") for r in json.loads(f.read_text())]
(out / "latency.json").write_text(json.dumps({"gpu": (out / "gpu.txt").read_text().strip(), "rows": rows}, indent=1))
PYEOF
"$PY" -m comem_cli.latency.report "$OUT/latency.json" --output "$OUT" \
    --title "comem bench latency on vLLM: $MAIN_ARCH main + $MEMORY_ARCH memory, $(head -n1 "$OUT/gpu.txt")"
echo "gpu-latency: done: $OUT/latency.json $OUT/report.html $OUT/latency.png"
