"""`--calibrate-engine`: fit the cost model's `EngineParams` to the live vLLM engines.

The grid: per engine, single requests over prompt length x cached prefix x output length, and
batches of simultaneous requests (`grid`). Prompts are random token ids (exact lengths; no two
share a block unless meant to); a cached prefix is made by sending it first (1 output token),
so the measured request finds it in vLLM's prefix cache. Output lengths are forced
(`min_tokens` = `max_tokens`, `ignore_eos`). Each point's latency is the mean of its requests'
wall-clock times (client side: HTTP included), the fastest of `REPEATS` tries made in
separate rounds over the grid (interference from other processes only adds time).

The fit: the same event-driven engine the replay uses (`costmodel.Engine`) replays each grid
point (`predict_point`); the seven time parameters (the per-request overhead included) of
`FIT_NAMES` are fitted by `search.pattern_search` (the fitter of the paper calibration too) to
minimise the squared log error over the grid; KV capacity, max_seqs and chunk size are the
engine's own (`/metrics` cache_config_info and the flags). `FIT_TOLERANCE` is the check that the
fit reproduces its own measurements: the mean absolute relative error over the grid. The tables
are report.py's.
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

from comem_cli.errors import UserError
from comem_cli.latency.costmodel import Clock, CostParams, Engine, EngineParams, Request
from comem_cli.latency.search import pattern_search
from comem_cli.parallel import in_parallel

FIT_NAMES = ("decode_base_s", "decode_per_seq_s", "decode_per_kv_token_s", "prefill_per_token_s",
             "prefill_attn_per_ctx_token", "cached_token_cost", "request_overhead_s")
FIT_TOLERANCE = 0.35  # mean |predicted / measured - 1| over the grid (CPU runs on a shared machine are noisy)
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


def measure_grid(api_base: str, model: str, points: list[Point], *, seed: int = 0,
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
    """EngineParams whose predicted grid latencies are closest to `measured` (squared log error), from
    `initial_guess`, by the pattern search over FIT_NAMES (factor down to 1.02)."""
    def loss(values: dict[str, Any]) -> float:
        p = EngineParams.model_validate(values)
        return sum(math.log(predict_point(p, pt) / m) ** 2 for pt, m in zip(points, measured))

    start = initial_guess(base, points, measured).model_dump()
    return EngineParams.model_validate(pattern_search(start, loss, names=FIT_NAMES, max_evals=max_evals, min_factor=1.02))


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
        measured = measure_grid(server.api_base, server.served_name, points, seed=len(fitted), log=log)
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
