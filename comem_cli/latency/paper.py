"""Calibration of the cost model against the CoMem paper's published GLM-4.7 latencies.

`comem bench latency --calibrate` replays the trajectories with the paper's pipeline (arm `paper`:
a summary every 4 steps, one step of budget, then block) at 32 / 64 / 128 / 256 concurrent runs,
prints the per-step latencies and full/CoMem ratios next to the paper's figures (`PAPER_GLM47`)
and fails if any ratio is off by more than 25%. `python -m comem_cli.latency fit` reruns the fit
(prints new `FITTED` constants for costmodel.py); `... check` is the check alone.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from comem_cli.config import PAPER_EVERY, PAPER_K, MemoryConfig
from comem_cli.latency.costmodel import CostParams
from comem_cli.latency.results import Variant
from comem_cli.latency.simulation import simulate
from comem_cli.latency.workload import Replay, Workload

# The paper's GLM-4.7 per-step latencies in ms, read off its figure: {concurrent runs: (CoMem, full)}.
PAPER_GLM47 = {32: (1400.0, 1220.0), 64: (1950.0, 2050.0), 128: (2820.0, 5870.0), 256: (3840.0, 9680.0)}
CALIBRATION_TOLERANCE = 0.25


def paper_check(replays: list[Replay], params: CostParams, workload: Workload, config: MemoryConfig,
                batches: Sequence[int] = tuple(PAPER_GLM47), arms: Sequence[str] = ("full", "comem")) -> list[dict[str, Any]]:
    """Per-step latency (main call + waits, ms) of full context and the paper's pipeline, per batch."""
    out = []
    config = config.model_copy(update={"sections": 1})  # the paper's pipeline as published: one request per summary
    paper = Variant("paper", PAPER_K, PAPER_EVERY, False)
    for b in batches:
        p_comem, p_full = PAPER_GLM47[b]
        row: dict[str, Any] = {"concurrency": b, "paper_full_ms": p_full, "paper_comem_ms": p_comem,
                               "paper_ratio": round(p_full / p_comem, 3)}
        if "full" in arms:
            full = simulate(replays, Variant("full"), b, params=params, workload=workload, config=config)
            row["full_ms"] = round(full["mean_step_s"] * 1000)
        if "comem" in arms:
            comem = simulate(replays, paper, b, params=params, workload=workload, config=config)
            row["comem_ms"] = round(comem["mean_step_s"] * 1000)
        if "full_ms" in row and "comem_ms" in row:
            row["ratio"] = round(row["full_ms"] / row["comem_ms"], 3)
            row["off"] = round(row["ratio"] / row["paper_ratio"] - 1, 3)
        out.append(row)
    return out


def _with(values: dict[str, float]) -> CostParams:
    data = CostParams().model_dump()
    for name, value in values.items():
        engine, field_name = name.split(".")
        data[engine][field_name] = int(value) if field_name == "kv_capacity_tokens" else value
    return CostParams.model_validate(data)


def fit_engines(replays: list[Replay], workload: Workload, config: MemoryConfig, *, max_evals: int = 60,
                start: dict[str, float] | None = None, log: Callable[[str], None] = print) -> dict[str, float]:
    """Fit costmodel's ten FITTED parameters (both engines) to PAPER_GLM47.

    Loss: the squared log error of the eight per-step latencies (full context and the paper's CoMem
    pipeline at each batch) plus ten times that of the four full/CoMem ratios (what --calibrate
    checks), minimised by `search.pattern_search` (factor down to 1.05, at most `max_evals`
    evaluations).
    """
    from comem_cli.latency.costmodel import PUBLISHED
    from comem_cli.latency.search import pattern_search

    def loss(values: dict[str, float]) -> float:
        rows = paper_check(replays, _with(values), workload, config)
        return sum(math.log(r["full_ms"] / r["paper_full_ms"]) ** 2 + math.log(r["comem_ms"] / r["paper_comem_ms"]) ** 2
                   + 10 * math.log(r["ratio"] / r["paper_ratio"]) ** 2 for r in rows)

    return pattern_search(dict(start or PUBLISHED), loss, max_evals=max_evals, min_factor=1.05, log=log)


def main(argv: list[str] | None = None) -> int:
    """`python -m comem_cli.latency fit|check [PATH]`: rerun the calibration fit, or the check alone."""
    import argparse

    from comem_cli.latency.report import print_paper_check
    from comem_cli.latency.settings import DEFAULT_COMMAND_S, DEFAULT_SUMMARY_TOKENS
    from comem_cli.latency.workload import TokenCounter, load_replays
    from comem_cli.resources import default_trajectories

    ap = argparse.ArgumentParser(prog="python -m comem_cli.latency")
    ap.add_argument("command", choices=["fit", "check"])
    ap.add_argument("paths", nargs="*", default=[str(p) for p in default_trajectories()])
    ap.add_argument("--max-evals", type=int, default=60)
    ap.add_argument("--start", choices=["published", "seed", "fitted"], default="seed",
                    help="start from costmodel.SEED (default), costmodel.PUBLISHED, or refine costmodel.FITTED")
    args = ap.parse_args(argv)
    counter = TokenCounter()
    config = MemoryConfig(arm="paper")
    replays = load_replays(args.paths, max_steps=100, command_s=DEFAULT_COMMAND_S, counter=counter)
    workload = Workload(counter, config, DEFAULT_SUMMARY_TOKENS)
    if args.command == "check":
        return 0 if print_paper_check(paper_check(replays, CostParams(), workload, config), CALIBRATION_TOLERANCE) else 1
    from comem_cli.latency.costmodel import FITTED, PUBLISHED, SEED

    fitted = fit_engines(replays, workload, config, max_evals=args.max_evals,
                         start=dict({"published": PUBLISHED, "seed": SEED, "fitted": FITTED}[args.start]))
    print("FITTED = {")
    for k, v in fitted.items():
        print(f'    "{k}": {int(v) if k.endswith("kv_capacity_tokens") else float(f"{v:.4g}")!r},')
    print("}")
    return 0
