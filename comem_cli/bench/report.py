"""Compare the arms of a benchmark: resolve rate and latency, as report.json and a rich table.

Latency figures are medians / p95 over one run, and speedups are ratios measured in that same run
(never absolute seconds compared across runs or machines), over the instances both arms finished,
with the spread (p25-p75) of the per-instance ratios beside: the runner runs the arms of one
instance side by side, so each ratio compares runs made under the same load.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from comem_cli.config import SUMMARIZING_ARMS
from comem_cli.rollouts import atomic_write_json, read_run


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def arm_report(arm_dir: Path, arm: str, instance_ids: list[str]) -> dict[str, Any]:
    step_latency, prompt_tokens, resolved, evaluated = [], [], [], 0
    e2e: dict[str, float] = {}  # instance id -> wall seconds of its finished run
    cost = memory_s = hidden_s = wait_s = 0.0
    waits = summaries = 0
    k = None
    for iid in instance_ids:
        run_dir = arm_dir / "runs" / iid
        if (run_dir / "trajectory.jsonl").exists():
            run = read_run(run_dir)
            step_latency += [s.model.seconds for s in run.steps]
            prompt_tokens += [s.prompt_tokens for s in run.steps]
            totals = run.meta.get("totals", {})
            if totals:
                e2e[iid] = totals.get("wall_s", 0.0)
                cost += totals.get("cost", 0.0)
                memory_s += totals.get("memory_s", 0.0) or 0.0
                hidden_s += (totals.get("hidden_fraction") or 0.0) * (totals.get("memory_s") or 0.0)
                waits += totals.get("waits", 0) or 0
                wait_s += totals.get("wait_s", 0.0) or 0.0
                summaries += totals.get("summaries", 0) or 0
            k = run.meta.get("config", {}).get("memory", {}).get("k")
        eval_file = arm_dir / "eval" / f"{iid}.json"
        if eval_file.exists():
            evaluated += 1
            if json.loads(eval_file.read_text()).get("resolved"):
                resolved.append(iid)
    n = len(instance_ids)
    return {
        "arm": arm, "k": k if arm in SUMMARIZING_ARMS else None, "instances": n, "evaluated": evaluated,
        "resolved": sorted(resolved), "resolved_count": len(resolved),
        "resolved_rate": len(resolved) / n if n and evaluated else None,  # None: nothing graded (--no-evaluate)
        "step_latency_median_s": statistics.median(step_latency) if step_latency else None,
        "step_latency_p95_s": percentile(step_latency, 0.95),
        "e2e_median_s": statistics.median(e2e.values()) if e2e else None,
        "e2e_total_s": sum(e2e.values()),
        "e2e_s": e2e,
        "prompt_tokens_per_step_median": statistics.median(prompt_tokens) if prompt_tokens else None,
        "steps": len(step_latency), "cost": round(cost, 6),
        "summaries": summaries, "memory_s": round(memory_s, 3),
        "hidden_fraction": round(hidden_s / memory_s, 4) if memory_s else None,
        "waits": waits, "wait_s": round(wait_s, 3),
    }


def speedup(base: dict[str, float], arm: dict[str, float]) -> tuple[float | None, list[float] | None]:
    """Total wall time of `base` over that of `arm` on the instances both finished, and the p25-p75 of
    the per-instance ratios: a headline carried by one instance (a cold start, a slow container) shows
    as a wide spread instead of passing for a speed-up."""
    paired = [iid for iid in base if iid in arm]
    base_s, arm_s = sum(base[i] for i in paired), sum(arm[i] for i in paired)
    if not base_s or not arm_s:
        return None, None
    ratios = [base[i] / arm[i] for i in paired if arm[i] > 0]
    spread = [round(percentile(ratios, 0.25), 3), round(percentile(ratios, 0.75), 3)] if ratios else None
    return round(base_s / arm_s, 3), spread


def bench_report(output: Path, arms: list[str], instance_ids: list[str], name: str) -> dict[str, Any]:
    rows = [arm_report(output / arm, arm, instance_ids) for arm in arms]
    base = next((r for r in rows if r["arm"] == "full"), None)
    for r in rows:
        r["speedup_vs_full"], r["speedup_vs_full_p25_p75"] = speedup(base["e2e_s"], r["e2e_s"]) if base else (None, None)
        if r["speedup_vs_full"] is not None and r["step_latency_median_s"] and base["step_latency_median_s"]:
            r["step_latency_speedup_vs_full"] = round(base["step_latency_median_s"] / r["step_latency_median_s"], 3)
    report = {"benchmark": name, "instances": instance_ids, "arms": rows}
    atomic_write_json(output / "report.json", report)
    return report


def report_table(report: dict[str, Any]):
    from rich.table import Table

    def fmt(value, spec=".2f", suffix=""):
        return "-" if value is None else f"{value:{spec}}{suffix}"

    table = Table(title=f"comem bench {report['benchmark']} ({len(report['instances'])} instances)", title_justify="left")
    for col in ("arm", "resolved", "step p50", "step p95", "e2e p50", "tokens/step", "cost", "hidden", "waits",
                "speedup vs full (p25-p75)"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in report["arms"]:
        arm = r["arm"] + (f" k={r['k']}" if r["k"] is not None else "")
        table.add_row(arm, resolved_cell(r),
                      fmt(r["step_latency_median_s"], ".2f", "s"), fmt(r["step_latency_p95_s"], ".2f", "s"),
                      fmt(r["e2e_median_s"], ".1f", "s"), fmt(r["prompt_tokens_per_step_median"], ",.0f"),
                      f"${r['cost']:.3f}", fmt(None if r["hidden_fraction"] is None else 100 * r["hidden_fraction"], ".0f", "%"),
                      f"{r['waits']} ({r['wait_s']:.1f}s)", speedup_cell(r))
    return table


def resolved_cell(row: dict[str, Any]) -> str:
    """`resolved/instances (rate)`; `-` when nothing was graded (a 0% there would read as a result)."""
    if not row["evaluated"]:
        return "-"
    cell = f"{row['resolved_count']}/{row['instances']} ({100 * row['resolved_rate']:.0f}%)"
    ungraded = row["instances"] - row["evaluated"]
    return cell + (f", {ungraded} not graded" if ungraded > 0 else "")


def speedup_cell(row: dict[str, Any]) -> str:
    """`1.02x (0.97-1.08)`: the speed-up and the p25-p75 of the per-instance ratios."""
    if row.get("speedup_vs_full") is None:
        return "-"
    spread = row.get("speedup_vs_full_p25_p75")
    return f"{row['speedup_vs_full']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")
