"""What a latency replay measures, per (arm, k, concurrency, pre-warm): the rows, their ratios, and the
measured rows set beside a prediction (their tables and files: report.py).

Metrics: end-to-end seconds (when the last run ends); median / p95 per-step main-model latency
(queueing + prefill + decode); mean step time (main call + waits); median prompt tokens per step
and the cached fraction; memory hidden fraction (memory-job time overlapped with the run's
main-model calls and commands, over memory-job time); waits and masks; speed-ups vs `full` and
vs `sync` (end-to-end ratios within the same invocation); and the `limit`: the same replay with a
memory model that costs nothing, and the fraction of it reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from comem_cli.config import SUMMARIZING_ARMS


@dataclass
class StepStat:
    main_s: float
    wait_s: float
    prompt_tokens: int
    cached_tokens: int | None
    command_s: float = 0.0


@dataclass
class RunStat:
    steps: list[StepStat] = field(default_factory=list)
    memory_s: float = 0.0
    hidden_s: float = 0.0
    waits: int = 0
    wait_s: float = 0.0
    masks: int = 0
    start: float = 0.0
    end: float = 0.0
    jobs_run: int = 0  # memory jobs that started
    command_s: float = 0.0


@dataclass(frozen=True)
class Variant:
    """One row's arm: `k` and `every` for the summarizing arms; `free`: the memory model costs nothing."""

    arm: str
    k: int | None = None
    every: int | None = None
    prewarm: bool | None = None
    free: bool = False
    launch_tokens: int | None = None

    @property
    def summarizes(self) -> bool:
        return self.arm in SUMMARIZING_ARMS

    def as_free(self) -> "Variant":
        return Variant(self.arm, self.k, self.every, self.prewarm, True, self.launch_tokens)


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def summarize_runs(v: Variant, concurrency: int, serving: str, runs: list[RunStat], makespan: float) -> dict[str, Any]:
    steps = [s for r in runs for s in r.steps]
    main = [s.main_s for s in steps]
    prompt = [s.prompt_tokens for s in steps]
    cached = [s.cached_tokens for s in steps if s.cached_tokens is not None]
    memory_s = sum(r.memory_s for r in runs)
    jobs = sum(r.jobs_run for r in runs)
    return {
        "serving": serving, "arm": "limit" if v.free else v.arm, "policy": v.arm, "k": v.k, "every": v.every,
        "launch_tokens": v.launch_tokens, "concurrency": concurrency, "prewarm": v.prewarm, "memory_free": v.free,
        "runs": len(runs), "steps": len(steps),
        "end_to_end_s": round(makespan, 3),
        "mean_step_s": round(sum(s.main_s + s.wait_s for s in steps) / len(steps), 4) if steps else None,
        "p50_main_s": _round(_pct(main, 0.5)), "p95_main_s": _round(_pct(main, 0.95)),
        "p50_prompt_tokens": _pct(prompt, 0.5),
        "cached_fraction": round(sum(cached) / sum(prompt), 4) if cached and sum(prompt) else None,
        "memory_s": round(memory_s, 3) if v.summarizes else None,
        "hidden_fraction": round(sum(r.hidden_s for r in runs) / memory_s, 4) if v.summarizes and memory_s > 0 else None,
        "waits": sum(r.waits for r in runs), "wait_s": round(sum(r.wait_s for r in runs), 3),
        "masks": sum(r.masks for r in runs),
        # is the memory model faster than k agent steps? mean memory job vs median agent step (main call + command)
        "memory_job_s": round(memory_s / jobs, 3) if v.summarizes and jobs else None,
        "agent_step_s": _round(_pct([s.main_s + s.command_s for s in steps], 0.5), 3),
        "speedup_vs_full": None, "speedup_vs_sync": None, "limit_s": None, "of_limit": None,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed-ups as end-to-end ratios within the same invocation (same serving, concurrency, pre-warm),
    and each summarizing row's fraction of its limit (the same variant with a free memory model)."""
    def find(arm, row, same_prewarm):
        for r in rows:
            if r["arm"] == arm and r["concurrency"] == row["concurrency"] and r["serving"] == row["serving"]:
                if arm == "sync" and row["policy"] == "sync" and r["every"] != row["every"]:
                    continue  # each sync row is its own baseline
                if not same_prewarm or r["prewarm"] == row["prewarm"] or row["prewarm"] is None:
                    return r
        return None

    for row in rows:
        full = find("full", row, False)
        sync = find("sync", row, True)
        if full and row["end_to_end_s"]:
            row["speedup_vs_full"] = round(full["end_to_end_s"] / row["end_to_end_s"], 3)
        if sync and row["end_to_end_s"]:
            row["speedup_vs_sync"] = round(sync["end_to_end_s"] / row["end_to_end_s"], 3)
        twin = next((r for r in rows if r["memory_free"] and not row["memory_free"]
                     and (r["policy"], r["k"], r["every"], r["launch_tokens"], r["concurrency"], r["prewarm"], r["serving"])
                     == (row["policy"], row["k"], row["every"], row["launch_tokens"], row["concurrency"], row["prewarm"], row["serving"])), None)
        if row["memory_free"]:
            twin = row
        if twin and row["end_to_end_s"]:
            row["limit_s"] = twin["end_to_end_s"]
            row["of_limit"] = round(twin["end_to_end_s"] / row["end_to_end_s"], 3)


# -- measured vs predicted (`--serving vllm` with a fitted cost model) -----------------------------
SPEEDUP_TOLERANCE = 0.15  # the target: predicted speed-up vs full within 15% of the measured one


def _key(row: dict[str, Any]) -> tuple:
    return (row["arm"], row["k"], row["every"], row["concurrency"], row["prewarm"])


def compare(measured: list[dict[str, Any]], predicted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds predicted_* and error fields to the measured rows (in place) and returns them."""
    by_key = {_key(r): r for r in predicted}
    for row in measured:
        p = by_key.get(_key(row))
        if p is None:
            continue
        row["predicted_end_to_end_s"] = p["end_to_end_s"]
        row["end_to_end_error"] = round(p["end_to_end_s"] / row["end_to_end_s"] - 1, 4) if row["end_to_end_s"] else None
        row["predicted_speedup_vs_full"] = p["speedup_vs_full"]
        if p["speedup_vs_full"] and row["speedup_vs_full"]:
            row["speedup_error"] = round(p["speedup_vs_full"] / row["speedup_vs_full"] - 1, 4)
    return measured
