"""Calibration of the cost model against the CoMem paper's published GLM-4.7 latencies.

`comem bench latency --calibrate` replays the trajectories with the paper's pipeline (arm `paper`:
a summary every 4 steps, one step of budget, then block) at 32 / 64 / 128 / 256 concurrent runs,
prints the per-step latencies and full/CoMem ratios next to the paper's figures (`PAPER_GLM47`)
and fails if any ratio is off by more than 25%. `python -m comem_cli.bench.latency fit` reruns
the fit (prints new `FITTED` constants for costmodel.py); `... check` is the check alone.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from comem_cli.bench.costmodel import CostParams
from comem_cli.bench.latency.results import Variant
from comem_cli.bench.latency.simulation import simulate
from comem_cli.bench.latency.workload import Replay, Workload
from comem_cli.config import PAPER_EVERY, PAPER_K, MemoryConfig

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
    checks). Pattern search in log space: every parameter in turn is tried multiplied and divided
    by a factor; the first improvement is kept; the factor starts at 2 and is square-rooted
    whenever a whole sweep finds no improvement; at most `max_evals` evaluations.
    """
    from comem_cli.bench.costmodel import PUBLISHED

    current = dict(start or PUBLISHED)
    evals = [0]

    def loss(values: dict[str, float]) -> float:
        evals[0] += 1
        rows = paper_check(replays, _with(values), workload, config)
        return sum(math.log(r["full_ms"] / r["paper_full_ms"]) ** 2 + math.log(r["comem_ms"] / r["paper_comem_ms"]) ** 2
                   + 10 * math.log(r["ratio"] / r["paper_ratio"]) ** 2 for r in rows)

    best = loss(current)
    log(f"start: loss {best:.4f}")
    factor = 2.0
    while evals[0] < max_evals and factor > 1.05:
        improved = False
        for name in list(current):
            for f in (factor, 1 / factor):
                if evals[0] >= max_evals:
                    break
                trial = dict(current)
                trial[name] = current[name] * f
                value = loss(trial)
                if value < best:
                    best, current, improved = value, trial, True
                    log(f"eval {evals[0]}: {name} x{f:.3f} -> loss {best:.4f}")
                    break
        if not improved:
            factor = math.sqrt(factor)
    log(f"end: loss {best:.4f} after {evals[0]} evaluations")
    return current


def print_calibration(rows: list[dict[str, Any]]) -> bool:
    from rich.table import Table

    from comem_cli.ui import console

    table = Table(title="calibration: the paper's GLM-4.7 per-step latency (CoMem pipeline: summary every 4 steps, "
                        "one step of budget, blocking) vs the fitted cost model", title_justify="left")
    for col in ("concurrency", "full ms (model / paper)", "CoMem ms (model / paper)", "full/CoMem model", "paper", "off"):
        table.add_column(col, justify="right")
    ok = True
    for r in rows:
        bad = abs(r["off"]) > CALIBRATION_TOLERANCE
        ok &= not bad
        table.add_row(str(r["concurrency"]), f"{r['full_ms']} / {r['paper_full_ms']:.0f}", f"{r['comem_ms']} / {r['paper_comem_ms']:.0f}",
                      f"{r['ratio']:.2f}x", f"{r['paper_ratio']:.2f}x", f"[{'red' if bad else 'green'}]{r['off']:+.0%}[/]")
    console.print(table, width=None if console.is_terminal else 180)
    console.print(("[green]calibration OK[/green]" if ok else "[red]calibration FAILED[/red]")
                  + f": every ratio within {CALIBRATION_TOLERANCE:.0%} of the paper's" + ("" if ok else " is required"))
    return ok


def main(argv: list[str] | None = None) -> int:
    """`python -m comem_cli.bench.latency fit|check [PATH]`: rerun the calibration fit, or the check alone."""
    import argparse

    from comem_cli.bench.latency.workload import DEFAULT_COMMAND_S, DEFAULT_SUMMARY_TOKENS, TokenCounter, default_trajectories, load_replays

    ap = argparse.ArgumentParser(prog="python -m comem_cli.bench.latency")
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
        return 0 if print_calibration(paper_check(replays, CostParams(), workload, config)) else 1
    from comem_cli.bench.costmodel import FITTED, PUBLISHED, SEED

    fitted = fit_engines(replays, workload, config, max_evals=args.max_evals,
                         start=dict({"published": PUBLISHED, "seed": SEED, "fitted": FITTED}[args.start]))
    print("FITTED = {")
    for k, v in fitted.items():
        print(f'    "{k}": {int(v) if k.endswith("kv_capacity_tokens") else float(f"{v:.4g}")!r},')
    print("}")
    return 0
