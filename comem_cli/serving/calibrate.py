"""`--calibrate-engine`: fit the cost model's `EngineParams` to the live vLLM engines.

The grid: per engine, single requests over prompt length x cached prefix x output length, and
batches of simultaneous requests (`grid`). Prompts are random token ids (exact lengths; no two
share a block unless meant to); a cached prefix is made by sending it first (1 output token),
so the measured request finds it in vLLM's prefix cache. Output lengths are forced
(`min_tokens` = `max_tokens`, `ignore_eos`). Each point's latency is the mean of its requests'
wall-clock times (client side: HTTP included), the fastest of `REPEATS` tries made in
separate rounds over the grid (interference from other processes only adds time).

The fit: the same event-driven engine the replay uses (`costmodel.Engine`) replays each grid
point (`predict_point`); the seven time parameters (the per-request overhead included) of `FIT_NAMES` are fitted by the pattern search
of `comem_cli.bench.latency.fit_engines` (log space, factor 2 square-rooted when a sweep finds
nothing) to minimise the squared log error over the grid; KV capacity, max_seqs and chunk size
are the engine's own (`/metrics` cache_config_info and the flags). `FIT_TOLERANCE` is the check
that the fit reproduces its own measurements: the mean absolute relative error over the grid.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Callable

from comem_cli.bench.costmodel import Clock, CostParams, Engine, EngineParams, Request
from comem_cli.errors import UserError
from comem_cli.parallel import in_parallel

FIT_NAMES = ("decode_base_s", "decode_per_seq_s", "decode_per_kv_token_s", "prefill_per_token_s",
             "prefill_attn_per_ctx_token", "cached_token_cost", "request_overhead_s")
FIT_TOLERANCE = 0.35  # mean |predicted / measured - 1| over the grid (CPU runs on a shared machine are noisy)
SPEEDUP_TOLERANCE = 0.15  # the target: predicted speed-up vs full within 15% of the measured one
REPEATS = 3
TOKEN_LOW, TOKEN_HIGH = 1000, 150000  # plain-text ids of the Qwen2.5 vocabulary


@dataclass(frozen=True)
class Point:
    prompt: int
    cached: int
    output: int
    batch: int = 1


def grid(device: str, max_model_len: int) -> list[Point]:
    """A small grid: on a CPU (tiny shapes) 12 points, on a GPU 16. The output lengths reach those
    of the replay (agent replies of a few hundred tokens, summaries longer), so that the per-token
    decode cost is fitted on long decodes and the fixed per-request cost on short ones."""
    if device == "cpu":
        prompts, outputs, batches, bprompts, bout = (256, 2048), (8, 32, 256), (4,), (512, 2048), 32
    else:
        prompts, outputs, batches, bprompts, bout = (512, 4096, 16384), (16, 128, 512), (8, 32), (2048,), 64
    points = []
    for p in prompts:
        if p + max(outputs) >= max_model_len:
            continue
        for o in outputs:
            points.append(Point(p, 0, o))
        points.append(Point(p, p // 16 * 12, outputs[0]))  # three quarters of it cached (whole blocks)
    for b in batches:  # batched decoding over short and long contexts (the KV-read cost per token)
        for bprompt in bprompts:
            points.append(Point(bprompt, 0, bout, b))
            points.append(Point(bprompt, bprompt // 16 * 12, bout, b))
    return points


# ---------------------------------------------------------------------------- measuring
def _complete(api_base: str, model: str, ids: list[int], n: int, timeout: float = 600) -> float:
    body = {"model": model, "prompt": ids, "max_tokens": n, "min_tokens": n, "ignore_eos": True, "temperature": 0.0}
    req = urllib.request.Request(f"{api_base}/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = json.loads(r.read())
    except Exception as e:
        raise UserError(f"--calibrate-engine: request to {api_base} failed: {' '.join(str(e).split())[:160]}") from None
    elapsed = time.perf_counter() - t0
    got = (data.get("usage") or {}).get("completion_tokens")
    if got is not None and got != n:
        raise UserError(f"--calibrate-engine: asked {n} output tokens, the engine gave {got} (min_tokens/ignore_eos ignored?)")
    return elapsed


def measure_point(api_base: str, model: str, point: Point, rng: random.Random) -> float:
    """Mean latency (s) of the point's requests, sent at once after their prefixes were cached."""
    prompts = []
    for _ in range(point.batch):
        prefix = [rng.randrange(TOKEN_LOW, TOKEN_HIGH) for _ in range(point.cached)]
        if prefix:
            _complete(api_base, model, prefix, 1)
        prompts.append(prefix + [rng.randrange(TOKEN_LOW, TOKEN_HIGH) for _ in range(point.prompt - point.cached)])
    times = in_parallel([lambda prompt=prompt: _complete(api_base, model, prompt, point.output) for prompt in prompts])
    return sum(times) / len(times)


def measure(api_base: str, model: str, points: list[Point], *, seed: int = 0,
            log: Callable[[str], None] = lambda s: None) -> list[float]:
    rng = random.Random(seed)
    _complete(api_base, model, [rng.randrange(TOKEN_LOW, TOKEN_HIGH) for _ in range(64)], 4)  # warm-up, off the clock
    # REPEATS rounds over the whole grid (a burst of interference spreads over points instead of
    # hitting every try of one), then the fastest try of each point: interference only adds time.
    tries: list[list[float]] = [[] for _ in points]
    for _ in range(REPEATS):
        for i, p in enumerate(points):
            tries[i].append(measure_point(api_base, model, p, rng))
    out = [min(t) for t in tries]
    for p, m in zip(points, out):
        log(f"  prompt {p.prompt:>6} cached {p.cached:>6} output {p.output:>4} batch {p.batch:>3}: {m:.3f} s")
    return out


# ---------------------------------------------------------------------------- the model's side
def predict_point(params: EngineParams, point: Point) -> float:
    """Mean latency of the point's requests on the cost model's engine (same procedure as measured)."""
    clock = Clock()
    engine = Engine(params, clock)
    ids = itertools.count()
    prefixes = []
    for run in range(point.batch):
        prefix = (next(ids), point.cached) if point.cached else None
        prefixes.append(prefix)
        if prefix:
            engine.submit(Request(run=run, pieces=(prefix,), output_tokens=1))
            clock.run()
    requests = [engine.submit(Request(run=run, pieces=((prefix,) if prefix else ()) + ((next(ids), point.prompt - point.cached),),
                                      output_tokens=point.output)) for run, prefix in enumerate(prefixes)]
    clock.run()
    return sum(r.finished - r.submitted for r in requests) / len(requests)


def errors(params: EngineParams, points: list[Point], measured: list[float]) -> list[float]:
    return [predict_point(params, p) / m - 1 for p, m in zip(points, measured)]


def initial_guess(base: EngineParams, points: list[Point], measured: list[float]) -> EngineParams:
    """Rough values from differences of grid points (decode per token, prefill per token)."""
    single = {(p.prompt, p.cached, p.output): m for p, m in zip(points, measured) if p.batch == 1}
    values = base.model_dump()
    nocache = sorted((k, m) for k, m in single.items() if k[1] == 0)
    by_prompt: dict[int, dict[int, float]] = {}
    for (prompt, _, out), m in nocache:
        by_prompt.setdefault(prompt, {})[out] = m
    p0 = min(by_prompt)
    outs = sorted(by_prompt[p0])
    if len(outs) >= 2:
        values["decode_base_s"] = max((by_prompt[p0][outs[-1]] - by_prompt[p0][outs[0]]) / (outs[-1] - outs[0]), 1e-5)
        # what the shortest request costs beyond its decode steps (a floor: the fit can lower it)
        values["request_overhead_s"] = max(by_prompt[p0][outs[0]] - outs[0] * values["decode_base_s"], 0.0) / 2
    if len(by_prompt) >= 2:
        p1 = max(by_prompt)
        o = min(by_prompt[p1])
        if o in by_prompt[p0]:
            values["prefill_per_token_s"] = max((by_prompt[p1][o] - by_prompt[p0][o]) / (p1 - p0), 1e-8)
    values["decode_per_seq_s"] = values["decode_base_s"] * 0.02
    values["decode_per_kv_token_s"] = max(values["decode_per_kv_token_s"], 1e-10)
    values["prefill_attn_per_ctx_token"] = max(values["prefill_attn_per_ctx_token"], 1e-7)
    values["cached_token_cost"] = max(values["cached_token_cost"], 1e-3)
    values["request_overhead_s"] = max(values["request_overhead_s"], 1e-4)  # the search scales it: never from 0
    return EngineParams.model_validate(values)


def fit(base: EngineParams, points: list[Point], measured: list[float], *, max_evals: int = 1000) -> EngineParams:
    """Pattern search in log space over FIT_NAMES (the algorithm of latency.fit_engines), minimising
    the squared log error of the predicted grid latencies."""
    current = initial_guess(base, points, measured).model_dump()

    def loss(values: dict[str, Any]) -> float:
        p = EngineParams.model_validate(values)
        return sum(math.log(predict_point(p, pt) / m) ** 2 for pt, m in zip(points, measured))

    evals, best, factor = 1, loss(current), 2.0
    while evals < max_evals and factor > 1.02:
        improved = False
        for name in FIT_NAMES:
            for f in (factor, 1 / factor):
                if evals >= max_evals:
                    break
                trial = dict(current, **{name: current[name] * f})
                evals += 1
                value = loss(trial)
                if value < best:
                    best, current, improved = value, trial, True
                    break
        if not improved:
            factor = math.sqrt(factor)
    return EngineParams.model_validate(current)


# ---------------------------------------------------------------------------- both engines
def calibrate(engines, log: Callable[[str], None]) -> tuple[CostParams, dict[str, Any]]:
    """Measure the grid on each engine (one engine at a time), fit, and return (params, report)."""
    fitted: dict[str, EngineParams] = {}
    report: dict[str, Any] = {"tolerance": FIT_TOLERANCE, "engines": {}}
    defaults = CostParams()
    for server in engines.servers:
        info = server.info
        base = getattr(defaults, server.role).model_copy(update={
            k: info[k] for k in ("kv_capacity_tokens", "max_seqs", "chunk_tokens") if k in info})
        points = grid(engines.device, info.get("max_model_len", 32768))
        log(f"calibrating the {server.role} engine: {len(points)} grid points x {REPEATS}")
        measured = measure(server.api_base, server.served_name, points, seed=len(fitted), log=log)
        params = fit(base, points, measured)
        errs = errors(params, points, measured)
        before = errors(base, points, measured)  # the unfitted (paper-fitted) engine on the same grid
        fitted[server.role] = params
        report["engines"][server.role] = {
            "points": [dict(asdict(p), measured_s=round(m, 5), predicted_s=round(m * (1 + e), 5), error=round(e, 4))
                       for p, m, e in zip(points, measured, errs)],
            "mean_abs_error": round(sum(abs(e) for e in errs) / len(errs), 4),
            "max_abs_error": round(max(abs(e) for e in errs), 4),
            "unfitted_mean_abs_error": round(sum(abs(e) for e in before) / len(before), 4),
        }
    report["ok"] = all(e["mean_abs_error"] <= FIT_TOLERANCE for e in report["engines"].values())
    return CostParams(main=fitted["main"], memory=fitted["memory"]), report


def print_fit(report: dict[str, Any]) -> None:
    from rich.table import Table

    from comem_cli.ui import console

    table = Table(title="engine calibration: grid latency, measured vs fitted cost model", title_justify="left")
    for col in ("engine", "prompt", "cached", "output", "batch", "measured s", "model s", "error"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for role, e in report["engines"].items():
        for p in e["points"]:
            bad = abs(p["error"]) > FIT_TOLERANCE
            table.add_row(role, str(p["prompt"]), str(p["cached"]), str(p["output"]), str(p["batch"]),
                          f"{p['measured_s']:.3f}", f"{p['predicted_s']:.3f}", f"[{'red' if bad else 'green'}]{p['error']:+.0%}[/]")
    console.print(table, width=None if console.is_terminal else 160)
    for role, e in report["engines"].items():
        console.print(f"{role}: mean |error| {e['mean_abs_error']:.1%}, max {e['max_abs_error']:.1%}, "
                      f"{e['unfitted_mean_abs_error']:.0%} before the fit "
                      f"(fit tolerance: mean within {FIT_TOLERANCE:.0%})", soft_wrap=True)
    console.print("[green]fit OK[/green]" if report["ok"] else "[red]fit FAILED[/red]")


# ---------------------------------------------------------------------------- the replay, side by side
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


def print_comparison(rows: list[dict[str, Any]], title: str) -> bool:
    from rich.table import Table

    from comem_cli.ui import console

    def f(x, fmt):
        return "-" if x is None else fmt.format(x)

    table = Table(title=title, title_justify="left")
    for col in ("arm", "k", "conc", "prewarm", "measured s", "predicted s", "error", "measured vs full", "predicted vs full", "error"):
        table.add_column(col, justify="left" if col in ("arm", "prewarm") else "right")
    ok = True
    for r in rows:
        err = r.get("speedup_error")
        bad = err is not None and abs(err) > SPEEDUP_TOLERANCE
        ok &= not bad
        table.add_row(r["arm"], f(r["k"], "{}"), str(r["concurrency"]),
                      "-" if r["prewarm"] is None else ("yes" if r["prewarm"] else "no"),
                      f(r["end_to_end_s"], "{:.2f}"), f(r.get("predicted_end_to_end_s"), "{:.2f}"),
                      f(r.get("end_to_end_error"), "{:+.0%}"), f(r["speedup_vs_full"], "{:.2f}x"),
                      f(r.get("predicted_speedup_vs_full"), "{:.2f}x"),
                      "-" if err is None else f"[{'red' if bad else 'green'}]{err:+.0%}[/]")
    console.print(table, width=None if console.is_terminal else 160)
    console.print(("[green]" if ok else "[yellow]") + f"predicted speed-ups vs full within {SPEEDUP_TOLERANCE:.0%} of "
                  f"the measured ones: {'yes' if ok else 'no'}[/]")
    return ok
