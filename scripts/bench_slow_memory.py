"""A memory model slower than two agent steps must not make `comem fix --memory comem` slower than
`--memory full`. One run of each, same scripted main model, same repository, real Docker; prints
both run times (meta.json: start to end of the run) and their ratio (comem / full), the whole
process times too (they include loading a local memory model), and what the memory pipeline did.

    python scripts/bench_slow_memory.py                    # scripted memory server, 5 s per summary
    python scripts/bench_slow_memory.py --memory-delay 10
    python scripts/bench_slow_memory.py --hang             # a memory server that never answers
    python scripts/bench_slow_memory.py --smollm2          # SmolLM2-135M on this CPU as the memory model
    python scripts/bench_slow_memory.py --raw-budget 3000  # a budget the raw tail overflows: masks, no stalls

Exit status 0 when the run-time ratio comem / full <= 1 + --tolerance (default 0.10, for noise), else 1.
Needs Docker and the sandbox image (`comem sandbox build`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import socketserver

from comem_cli.replay_server import Script, ScriptedServer

# a summary request still in flight when the memory server stops is expected: no traceback for it
socketserver.BaseServer.handle_error = lambda self, request, client_address: None

SUMMARY = ("## Task\nMake total() ignore blank lines.\n## Files and code state\nnumbers.py read; data files listed.\n"
           "## Actions and outcomes\nListed and printed the data files.\n## Tests\nNot run yet.\n## Open questions\nNone.")


def make_repo(root: Path) -> Path:
    repo = root / "numbers-repo"
    (repo / "data").mkdir(parents=True)
    (repo / "numbers.py").write_text("def total(path):\n    return sum(int(line) for line in open(path))\n")
    for i in range(4):
        (repo / "data" / f"part{i}.txt").write_text("\n".join(str(n) for n in range(i * 400, i * 400 + 400)) + "\n")
    (repo / "ISSUE.md").write_text("# total() fails on blank lines\n\nA data file with an empty line makes total() raise.\n")
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "bench"], ["config", "user.email", "bench@localhost"],
                 ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    return repo


def script(steps: int) -> list[str]:
    """Agent steps whose observations are a few hundred tokens each (the raw tail grows as in real runs)."""
    commands = [f"cat data/part{i % 4}.txt | head -n {200 + 20 * (i % 5)}" for i in range(steps)]
    replies = [f"THOUGHT: read part {i % 4} of the data.\n\n```bash\n{c}\n```" for i, c in enumerate(commands)]
    fix = ("THOUGHT: skip blank lines.\n\n```bash\ncat > numbers.py <<'EOF'\ndef total(path):\n"
           "    return sum(int(line) for line in open(path) if line.strip())\nEOF\n```")
    return replies + [fix, "THOUGHT: done.\n\n```bash\necho COMEM_SUBMIT\n```"]


def run_arm(arm: str, repo: Path, out: Path, main_url: str, memory_args: list[str], extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "comem_cli", "fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/main",
           "--api-base", main_url, "-o", str(out / arm), "--no-apply", "--memory", arm, *memory_args, *extra]
    started = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    wall = time.time() - started
    if r.returncode != 0:
        sys.exit(f"comem fix --memory {arm} failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    (run_dir,) = list((out / arm).iterdir())
    meta = json.loads((run_dir / "meta.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "trajectory.jsonl").read_text().splitlines() if line.strip()]
    model_s = sum(s["model"]["end"] - s["model"]["start"] for s in steps)
    command_s = sum(s["command"]["end"] - s["command"]["start"] for s in steps if s.get("command"))
    return {"arm": arm, "process_s": wall, "run_s": meta["ended"] - meta["started"], "model_s": model_s,
            "command_s": command_s, "totals": meta.get("totals", {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-delay", type=float, default=5.0, help="seconds the scripted memory server takes per summary")
    ap.add_argument("--hang", action="store_true", help="the memory server accepts requests and never answers")
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct on this CPU as the memory model")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--main-delay", type=float, default=0.5, help="seconds per main-model call")
    ap.add_argument("--raw-budget", type=int, default=None)
    ap.add_argument("--memory-timeout", type=float, default=30.0)
    ap.add_argument("--tolerance", type=float, default=0.10)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="comem-slow-memory-"))
    repo = make_repo(root)
    extra = ["--memory-timeout", str(args.memory_timeout)] + (["--raw-budget", str(args.raw_budget)] if args.raw_budget else [])
    memory = ScriptedServer(lambda body: SUMMARY, latency_s=args.memory_delay,
                            **({"hang_first": 10**6, "hang_s": 3600.0} if args.hang else {})).start()
    try:
        if args.smollm2:
            from comem_cli.testing.tiny_models import smollm2_dir

            memory_args = ["--memory-backend", "transformers", "--memory-model", str(smollm2_dir()), "--max-summary-tokens", "256"]
            what = "SmolLM2-135M-Instruct (transformers, this CPU)"
        else:
            memory_args = ["--memory-backend", "openai", "--memory-model", "openai/memory", "--memory-api-base", memory.url]
            what = "a scripted server that never answers" if args.hang else f"a scripted server, {args.memory_delay:g} s per summary"
        rows = []
        for arm in ("full", "comem"):
            with ScriptedServer(Script(script(args.steps)), latency_s=args.main_delay) as main:
                rows.append(run_arm(arm, repo, root / "runs", main.url, memory_args, extra))
    finally:
        memory.stop()

    full, comem = rows
    steps = comem["totals"].get("steps") or args.steps + 2
    agent_step = comem["run_s"] / max(steps, 1)
    ratio = comem["run_s"] / full["run_s"]
    process_ratio = comem["process_s"] / full["process_s"]
    t = comem["totals"]
    print(f"memory model: {what}; agent step ~{agent_step:.2f} s; main model {args.main_delay:g} s per call")
    print(f"{'arm':6s} {'process s':>10s} {'run s':>8s} {'model s':>8s} {'cmd s':>6s} {'steps':>6s} {'summaries':>10s} {'jobs':>5s} {'waits':>6s} "
          f"{'wait s':>7s} {'masks':>6s} {'failures':>9s}")
    for r in rows:
        x = r["totals"]
        print(f"{r['arm']:6s} {r['process_s']:10.1f} {r['run_s']:8.1f} {r['model_s']:8.1f} {r['command_s']:6.1f} {x.get('steps', '-')!s:>6s} {x.get('summaries', '-')!s:>10s} "
              f"{x.get('memory_jobs', '-')!s:>5s} {x.get('waits', '-')!s:>6s} {x.get('wait_s', '-')!s:>7s} "
              f"{x.get('mask_fallbacks', '-')!s:>6s} {x.get('memory_failures', '-')!s:>9s}")
    print(f"comem / full run time: {ratio:.3f} (one run each; memory jobs took "
          f"{t.get('memory_s', 0) / max(t.get('memory_jobs', 1), 1):.1f} s each on average); whole process "
          f"{process_ratio:.3f} (includes loading a local memory model before the run)")
    return 0 if ratio <= 1 + args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
