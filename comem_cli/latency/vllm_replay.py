"""`comem bench latency --serving vllm`: start the engines, measure on them, predict with the fitted model.

1. `EngineSet` starts the main and memory vLLM servers (`--main-arch`, `--memory-arch`; ports
   from `--api-base` / `--memory-api-base` when given) and prints their flags.
2. With `--calibrate-engine`: the request grid is measured on each engine, `EngineParams` are
   fitted and written to `--cost-params FILE` (default `engine-params.json`, or beside `--json`).
3. The trajectories are replayed against the engines by `measure.measure` with `--serving
   endpoint` (real prompts, recorded reply lengths forced). vLLM's prefix-cache counters
   (`/metrics`) are read before and after.
4. The engines are stopped (on every exit path). With `--calibrate-engine` (or a `--cost-params
   FILE` fitted before) the same plan is then measured on the fitted cost model (`--serving model
   --cost-params FILE`) and printed side by side with the measurement, with the error.

`--json FILE` gets the measured rows (serving "vllm"; with the prediction and its error when
calibrated) and `FILE` with suffix `.serving.json` the engines' flags, the prefix-cache counters
and the calibration report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from comem_cli.errors import UserError
from comem_cli.latency.measure import LatencySettings, measure, show


def run_vllm(s: LatencySettings) -> int:
    """The command with `--serving vllm`; 1 when the engine fit misses its tolerance."""
    from comem_cli.latency import engine_fit
    from comem_cli.latency.costmodel import save_cost_params
    from comem_cli.latency.engines import EngineSet, metrics, port_of, prefix_cache_delta
    from comem_cli.latency.report import print_comparison, print_engine_fit, write_json
    from comem_cli.latency.results import SPEEDUP_TOLERANCE, compare
    from comem_cli.ui import console

    if s.calibrate:
        raise UserError("--calibrate checks the cost model against the paper's figures; with --serving vllm use --calibrate-engine")
    json_out = Path(s.json_out) if s.json_out else None
    params_path = Path(s.cost_params or ((json_out.parent if json_out else Path(".")) / "engine-params.json"))
    predict = bool(s.calibrate_engine or s.cost_params)  # a given file: predict with it, no new fit
    if predict and not s.calibrate_engine and not params_path.is_file():
        raise UserError(f"--cost-params: {params_path} does not exist (write it with --calibrate-engine)")
    log_dir = (json_out.parent / "engine-logs") if json_out else Path(tempfile.mkdtemp(prefix="comem-vllm-latency-")) / "logs"
    main_port = port_of(s.api_base, "--api-base")
    memory_port = port_of(s.memory_api_base, "--memory-api-base")
    serving: dict[str, Any] = {}
    fit_report = None
    engines = EngineSet(s.main_arch or "tiny", s.memory_arch or "tiny",
                        main_port=main_port, memory_port=memory_port, log_dir=log_dir)
    with engines:
        serving["engines"] = engines.describe()
        if s.calibrate_engine:
            params, fit_report = engine_fit.calibrate(engines, log=lambda line: console.print(f"[dim]{line}[/dim]", soft_wrap=True))
            print_engine_fit(fit_report)
            save_cost_params(params, params_path, meta={"engines": serving["engines"], "fit": {
                role: {k: v for k, v in e.items() if k != "points"} for role, e in fit_report["engines"].items()}})
            console.print(f"fitted cost model written to {params_path} (pass it back with --cost-params {params_path})", soft_wrap=True)
        before = {server.role: metrics(server) for server in engines.servers}
        measured = measure(s.model_copy(update={
            "serving": "endpoint", "model": engines.main.served_name, "api_base": engines.main.api_base,
            "memory_model": engines.memory.served_name, "memory_api_base": engines.memory.api_base,
            "json_out": None, "cost_params": None}))
        show(measured)
        after = {server.role: metrics(server) for server in engines.servers}
        serving["prefix_cache"] = {role: prefix_cache_delta(before[role], after[role]) for role in before}
    console.print("engines stopped · prefix cache during the replay: " + ", ".join(
        f"{role} {d['prefix_cache_hit_tokens']:.0f} of {d['prefix_cache_query_tokens']:.0f} prompt tokens hit"
        for role, d in serving["prefix_cache"].items()), soft_wrap=True)
    rows = [{**row, "serving": "vllm"} for row in measured.rows]
    if predict:
        console.print("[bold]the same replay on the fitted cost model[/bold] (virtual time):")
        predicted = measure(s.model_copy(update={"serving": "model", "cost_params": params_path, "json_out": None,
                                                 "calibrate_engine": False}))
        show(predicted)
        compare(rows, predicted.rows)
        serving["cost_params"] = str(params_path)
        if fit_report is not None:
            serving["calibration"] = fit_report
        serving["speedups_within_tolerance"] = print_comparison(
            rows, "vllm engines: measured vs the cost model fitted to them", SPEEDUP_TOLERANCE)
    if json_out:
        write_json(json_out, rows, serving)
    return 0 if fit_report is None or fit_report["ok"] else 1
