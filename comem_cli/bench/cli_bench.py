"""`comem bench ...`: the command-line shape of the benchmarks (Typer), nothing else.

Two programs, each with only its own options, grouped in help panels:
  comem bench swe-mini | swebench-verified | swebench-lite   run agents on instances (bench/run_command.py)
  comem bench latency                                         replay trajectories and time the arms (comem_cli/latency/)
  comem bench memory                                          score what a memory model's summaries keep (bench/quality.py)
Each command turns its flags into one typed settings object and hands it down. Heavy imports
(pydantic settings included) happen inside the commands, so `comem --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from comem_cli import options as opt
from comem_cli.bench.datasets import BENCHMARKS
from comem_cli.bench.settings import BenchSettings, QualitySettings
from comem_cli.config import ARMS, Backend, Executor, LocalBackend, MemoryEngine, Serving, default_of
from comem_cli.latency.settings import LatencySettings

MODEL, MEMORY, RUN, OUTPUT = opt.MODEL_PANEL, opt.MEMORY_PANEL, opt.RUN_PANEL, opt.OUTPUT_PANEL
ARM_LIST = ",".join(ARMS)

class _BenchGroup(TyperGroup):
    """`comem bench NAME`: an unknown NAME is bad input with a one-line error, like every other."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            from comem_cli.errors import UserError

            raise UserError(f"unknown benchmark {args[0]!r}; choose one of {', '.join(self.commands)}")
        return super().resolve_command(ctx, args)


bench_app = typer.Typer(no_args_is_help=True, cls=_BenchGroup,
                        help="Run a benchmark and compare memory arms side by side, or time the arms on recorded runs (`latency`).")


def _runner(name: str):
    def command(
        model: Optional[str] = opt.MODEL,
        api_base: Optional[str] = opt.API_BASE,
        memory: str = typer.Option(default_of(BenchSettings, "memory"), "--memory", help=f"Arm(s), comma-separated, run on the same instances: {ARM_LIST}.", rich_help_panel=MEMORY),
        k: int = opt.K,
        every: Optional[int] = opt.EVERY,
        launch_tokens: int = opt.LAUNCH_TOKENS,
        raw_budget: int = opt.RAW_BUDGET,
        memory_backend: Backend = opt.MEMORY_BACKEND,
        memory_model: Optional[str] = opt.MEMORY_MODEL,
        memory_api_base: Optional[str] = opt.MEMORY_API_BASE,
        prewarm: bool = opt.PREWARM,
        summary_sections: int = opt.SUMMARY_SECTIONS,
        workers: int = typer.Option(default_of(BenchSettings, "workers"), "--workers", "-w", min=1, help="Instances run in parallel (one container each).", rich_help_panel=RUN),
        instances: Optional[str] = typer.Option(None, "--instances", help="Comma-separated instance ids.", rich_help_panel=RUN),
        filter: Optional[str] = typer.Option(None, "--filter", help="Regex on instance ids.", rich_help_panel=RUN),
        slice_: Optional[str] = typer.Option(None, "--slice", help="A:B over the (filtered) instance list.", rich_help_panel=RUN),
        redo_existing: bool = typer.Option(False, "--redo-existing", help="Run finished instances again.", rich_help_panel=RUN),
        evaluate: bool = typer.Option(default_of(BenchSettings, "evaluate"), "--evaluate/--no-evaluate", rich_help_panel=RUN),
        dataset: Optional[Path] = typer.Option(None, "--dataset", help="Instances from a json/jsonl/parquet file in the SWE-bench 5 schema (image, eval_script, log_parser, ...).", rich_help_panel=RUN),
        image_template: Optional[str] = typer.Option(None, "--image-template", help="Instance image, e.g. 'myreg/sweb.eval.{id_docker}:latest'.", rich_help_panel=RUN),
        executor: Executor = typer.Option(default_of(BenchSettings, "executor"), "--executor", help="How instances run in parallel.", rich_help_panel=RUN),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (default: start a local one).", rich_help_panel=RUN),
        max_steps: int = opt.MAX_STEPS,
        cost_limit: float = opt.COST_LIMIT,
        timeout: int = opt.TIMEOUT,
        output: Path = typer.Option(default_of(BenchSettings, "output"), "--output", "-o", rich_help_panel=OUTPUT),
        run_id: Optional[str] = typer.Option(None, "--run-id", help="Sub-folder of --output (default: the benchmark name); rerun with the same one to resume.", rich_help_panel=OUTPUT),
        export_dataset: Optional[Path] = typer.Option(None, "--export-dataset", help="Write the selected instances as JSONL and stop.", rich_help_panel=OUTPUT),
        evaluate_only: Optional[Path] = typer.Option(None, "--evaluate-only", help="Evaluate an existing predictions file (SWE-bench format) and stop.", rich_help_panel=OUTPUT),
    ) -> None:
        from comem_cli.bench.run_command import bench_command

        settings = BenchSettings(
            name=name, model=model, api_base=api_base, memory=memory, k=k, every=every, launch_tokens=launch_tokens,
            raw_budget=raw_budget, memory_backend=memory_backend, memory_model=memory_model, memory_api_base=memory_api_base,
            prewarm=prewarm, summary_sections=summary_sections, workers=workers, instances=instances, filter=filter, slice=slice_, redo_existing=redo_existing,
            evaluate=evaluate, dataset=dataset, image_template=image_template, executor=executor, ray_address=ray_address,
            max_steps=max_steps, cost_limit=cost_limit, timeout=timeout, output=output, run_id=run_id,
            export_dataset=export_dataset, evaluate_only=evaluate_only)
        raise typer.Exit(bench_command(settings))

    command.__doc__ = f"Run {name}: agents on its instances, one arm after another, then evaluate and compare the arms."
    return command


for _name in BENCHMARKS:
    bench_app.command(_name)(_runner(_name))


@bench_app.command("latency")
def latency(
    serving: Serving = typer.Option(default_of(LatencySettings, "serving"), "--serving", help="model: the calibrated cost model, virtual time; local: tiny real models; endpoint: real servers; vllm: comem starts two vLLM engines.", rich_help_panel=MODEL),
    main_arch: Optional[str] = typer.Option(None, "--main-arch", help="vllm: main model: tiny | qwen3-0.6b | qwen3-1.7b | qwen3-4b | qwen3-8b (random weights, built once) | a model dir | an HF id (default: tiny).", rich_help_panel=MODEL),
    memory_arch: Optional[str] = typer.Option(None, "--memory-arch", help="vllm: memory model, as --main-arch (default: tiny).", rich_help_panel=MODEL),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="endpoint: the main model's served name.", rich_help_panel=MODEL),
    api_base: Optional[str] = typer.Option(None, "--api-base", help="endpoint: the main server.", rich_help_panel=MODEL),
    memory_model: Optional[str] = typer.Option(None, "--memory-model", help="endpoint: the memory model's served name.", rich_help_panel=MODEL),
    memory_api_base: Optional[str] = typer.Option(None, "--memory-api-base", help="endpoint: the memory server.", rich_help_panel=MODEL),
    memory_engine: MemoryEngine = typer.Option(default_of(LatencySettings, "memory_engine"), "--memory-engine", help="separate: extra hardware beside the main engine; main: summaries served by the main engine.", rich_help_panel=MODEL),
    cost_param: Optional[list[str]] = typer.Option(None, "--cost-param", help="Cost-model override NAME=VALUE (main.NAME, memory.NAME or NAME for both); repeatable.", rich_help_panel=MODEL),
    summary_tokens: int = typer.Option(default_of(LatencySettings, "summary_tokens"), "--summary-tokens", min=1, help="Tokens the memory model writes per summary.", rich_help_panel=MODEL),
    summary_sections: int = typer.Option(default_of(LatencySettings, "sections"), "--summary-sections", min=1, max=5, help="Parallel requests that write a summary's sections (1: one request); batching servers only.", rich_help_panel=MODEL),
    cost_params: Optional[Path] = typer.Option(None, "--cost-params", help="Cost-model parameters from this JSON file (with --calibrate-engine: where the fit is written).", rich_help_panel=MODEL),
    memory: str = typer.Option(default_of(LatencySettings, "arms"), "--memory", help="Arms, comma-separated (full and sync are always replayed: the ratios need them).", rich_help_panel=MEMORY),
    k: str = typer.Option(default_of(LatencySettings, "k"), "--k", help="comem's k, a comma list (e.g. 1,2,4).", rich_help_panel=MEMORY),
    every: Optional[int] = typer.Option(None, "--every", min=1, help="Launch period in steps (default: comem on raw-tail tokens only; sync 2).", rich_help_panel=MEMORY),
    launch_tokens: Optional[int] = typer.Option(None, "--launch-tokens", min=0, help="comem: launch once this many raw-tail tokens are not covered (0: off; default 2000).", rich_help_panel=MEMORY),
    raw_budget: int = opt.RAW_BUDGET,
    prewarm: bool = opt.PREWARM,
    memory_free: bool = typer.Option(False, "--memory-free", help="Only the limits: every memory model costs nothing.", rich_help_panel=MEMORY),
    memory_workers: int = typer.Option(default_of(LatencySettings, "workers"), "--memory-workers", min=1, help="Memory requests in flight at once (the memory pool).", rich_help_panel=MEMORY),
    trajectories: Optional[list[Path]] = typer.Option(None, "--trajectories", help="Recorded runs to replay (comem run folders, mini-swe-agent *.traj.json, or folders of them); repeatable.", rich_help_panel=RUN),
    concurrency: str = typer.Option(default_of(LatencySettings, "concurrency"), "--concurrency", help="Concurrent runs sharing the servers, comma-separated.", rich_help_panel=RUN),
    max_steps: int = typer.Option(default_of(LatencySettings, "max_steps"), "--max-steps", min=1, rich_help_panel=RUN),
    command_s: float = typer.Option(default_of(LatencySettings, "command_s"), "--command-s", min=0.0, help="Seconds per command when the recording has no timings.", rich_help_panel=RUN),
    calibrate: bool = typer.Option(False, "--calibrate", help="Check the cost model against the paper's GLM-4.7 figures (exit 1 if a ratio is off by > 25%).", rich_help_panel=RUN),
    repeat: int = typer.Option(default_of(LatencySettings, "repeat"), "--repeat", min=1, help="endpoint | vllm | local: replay the plan this many times in rounds and keep each row's fastest (wall-clock noise only adds time).", rich_help_panel=RUN),
    calibrate_engine: bool = typer.Option(False, "--calibrate-engine", help="vllm: fit the cost model to the engines, save it (--cost-params FILE), and print predicted vs measured.", rich_help_panel=RUN),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows to this JSON file.", rich_help_panel=OUTPUT),
) -> None:
    """Replay recorded trajectories and time every context arm side by side (no Docker, no agent)."""
    from comem_cli.latency.command import run

    settings = LatencySettings(
        trajectories=trajectories or [], serving=serving, concurrency=concurrency, arms=memory, k=k, every=every,
        launch_tokens=launch_tokens, raw_budget=raw_budget, prewarm=prewarm, memory_free=memory_free,
        memory_engine=memory_engine, repeat=repeat, workers=memory_workers, max_steps=max_steps, command_s=command_s,
        summary_tokens=summary_tokens, sections=summary_sections, cost_param=cost_param or [], calibrate=calibrate, model=model, api_base=api_base,
        memory_model=memory_model, memory_api_base=memory_api_base, json_out=json_out,
        main_arch=main_arch, memory_arch=memory_arch, calibrate_engine=calibrate_engine, cost_params=cost_params)
    raise typer.Exit(run(settings))


@bench_app.command("memory")
def memory_quality(
    memory_model: Optional[str] = typer.Option(None, "--memory-model", envvar="COMEM_MEMORY_MODEL", help="Memory model(s), comma-separated: directory, hub id, or openai/<name> with --memory-api-base.", rich_help_panel=MODEL),
    memory_backend: LocalBackend = typer.Option(default_of(QualitySettings, "memory_backend"), "--memory-backend", help="transformers without --memory-model: SmolLM2 on this CPU.", rich_help_panel=MODEL),
    memory_api_base: Optional[str] = opt.MEMORY_API_BASE,
    memory_context: Optional[int] = opt.MEMORY_CONTEXT,
    memory_timeout: float = opt.MEMORY_TIMEOUT,
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="A main model (litellm name) that acts on the full and the summary view: action_consistency.", rich_help_panel=MODEL),
    judge_api_base: Optional[str] = typer.Option(None, "--judge-api-base", help="Base URL of an OpenAI-compatible server for --judge-model.", rich_help_panel=MODEL),
    summary_sections: str = typer.Option(",".join(map(str, default_of(QualitySettings, "sections"))), "--summary-sections", help="Section requests per summary, a comma list compared side by side (e.g. 1,4).", rich_help_panel=MEMORY),
    max_summary_tokens: str = typer.Option(",".join(map(str, default_of(QualitySettings, "max_summary_tokens"))), "--max-summary-tokens", help="Caps, a comma list compared side by side (e.g. 512,2048).", rich_help_panel=MEMORY),
    k: int = opt.K,
    every: Optional[int] = opt.EVERY,
    launch_tokens: int = opt.LAUNCH_TOKENS,
    trajectories: Optional[list[Path]] = typer.Option(None, "--trajectories", help="Recorded runs (comem run folders, mini-swe-agent *.traj.json, or folders of them); repeatable. (default: the bundled sample)", rich_help_panel=RUN),
    max_summaries: Optional[int] = typer.Option(None, "--max-summaries", min=1, help="At most N summaries per trajectory (evenly spread over its cut-offs), to bound a slow model.", rich_help_panel=RUN),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows (one per configuration) to this JSON file.", rich_help_panel=OUTPUT),
) -> None:
    """Score a memory model's summaries of recorded runs: what the agent used next that they keep."""
    from comem_cli.bench.quality import quality_command
    from comem_cli.config import parse_int_list
    from comem_cli.errors import UserError

    models = [m.strip() for m in memory_model.split(",") if m.strip()] if memory_model else [None]
    settings = QualitySettings(
        trajectories=trajectories or [], memory_models=models, memory_backend=memory_backend, memory_api_base=memory_api_base,
        memory_context=memory_context, sections=parse_int_list(summary_sections, "--summary-sections", minimum=1),
        max_summary_tokens=parse_int_list(max_summary_tokens, "--max-summary-tokens", minimum=16), k=k, every=every,
        launch_tokens=launch_tokens, max_summaries=max_summaries, memory_timeout=memory_timeout, judge_model=judge_model,
        judge_api_base=judge_api_base, json_out=json_out)
    if any(s > 5 for s in settings.sections):
        raise UserError(f"--summary-sections takes values from 1 to 5 (got {summary_sections!r})")
    raise typer.Exit(quality_command(settings))
