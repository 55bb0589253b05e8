"""The benchmark runner command (`comem bench swe-mini | swebench-verified | swebench-lite`):
validate the settings, then run / evaluate / export, with a live display and a table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from comem_cli.errors import UserError


class BenchSettings(BaseModel):
    """Everything the benchmark runner command needs, built once at the command line."""

    name: str
    model: Optional[str] = None
    api_base: Optional[str] = None
    memory: str = "comem"
    k: str = "2"
    every: Optional[int] = None
    launch_tokens: Optional[int] = None
    raw_budget: int = 12_000
    memory_backend: str = "auto"
    memory_model: Optional[str] = None
    memory_api_base: Optional[str] = None
    prewarm: bool = False
    workers: int = 2
    instances: Optional[str] = None
    filter: Optional[str] = None
    slice: Optional[str] = None
    redo_existing: bool = False
    evaluate: bool = True
    dataset: Optional[Path] = None
    image_template: Optional[str] = None
    executor: str = "threads"
    ray_address: Optional[str] = None
    max_steps: int = 100
    cost_limit: float = 3.0
    timeout: int = 120
    output: Path = Path("bench-runs")
    run_id: Optional[str] = None
    export_dataset: Optional[Path] = None
    evaluate_only: Optional[Path] = None

    def k_value(self) -> int:
        try:
            k = int(self.k)
        except ValueError:
            raise UserError(f"--k takes one integer >= 0 (got {self.k!r}; a comma list only with `comem bench latency`)") from None
        if k < 0:
            raise UserError(f"--k must be >= 0 (got {k})")
        return k


def live_display(progress, started: float):
    from rich.console import Group
    from rich.table import Table

    def render():
        with progress.lock:
            done, total, cost, workers = progress.done, progress.total, progress.cost, dict(progress.workers)
        elapsed = time.time() - started
        eta = (elapsed / done * (total - done)) if done else None
        width = 30
        filled = int(width * done / total) if total else width
        head = (f"[bold]{done}/{total}[/bold] [{'#' * filled}{'.' * (width - filled)}] "
                f"elapsed {elapsed:5.0f}s  ETA {'-' if eta is None else f'{eta:5.0f}s'}  cost ${cost:.3f}")
        table = Table(show_header=False, box=None, padding=(0, 1))
        for worker, text in sorted(workers.items()):
            table.add_row(f"[dim]{worker.replace('comem-bench_', 'worker ')}[/dim]", text)
        return Group(head, table)

    return render


def bench_command(s: BenchSettings) -> int:
    from rich.live import Live

    from comem_cli.bench import datasets
    from comem_cli.bench.report import bench_report, report_table
    from comem_cli.bench.runner import BenchPlan, Predictions, ensure_images, load_backends, run_bench
    from comem_cli.config import DEFAULT_MODEL, AgentConfig, MemoryConfig, ModelConfig, RunConfig, SandboxConfig
    from comem_cli.ui import console

    from comem_cli.bench.latency.command import parse_arms

    arms = parse_arms(s.memory)
    k = s.k_value()
    if s.memory_backend not in ("auto", "vllm", "openai", "transformers"):
        raise UserError(f"--memory-backend must be one of auto, vllm, openai, transformers (got {s.memory_backend!r})")
    if s.executor not in ("threads", "ray"):
        raise UserError(f"--executor must be threads or ray (got {s.executor!r})")
    instances = datasets.select(datasets.load_instances(s.name, s.dataset),
                                ids=[i.strip() for i in s.instances.split(",")] if s.instances else None,
                                pattern=s.filter, slice_spec=s.slice)
    if s.export_dataset:
        datasets.export_jsonl(instances, s.export_dataset)
        console.print(f"wrote {len(instances)} instances to {s.export_dataset}")
        return 0
    config = RunConfig(
        model=ModelConfig(name=s.model or DEFAULT_MODEL, api_base=s.api_base),
        sandbox=SandboxConfig(command_timeout_s=s.timeout),
        agent=AgentConfig(max_steps=s.max_steps, cost_limit=s.cost_limit),
        memory=MemoryConfig(k=k, every=s.every, raw_budget=s.raw_budget,
                            **({} if s.launch_tokens is None else {"launch_tokens": s.launch_tokens}), backend=s.memory_backend,
                            model=s.memory_model, api_base=s.memory_api_base, prewarm=bool(s.prewarm)),
    )
    output = Path(s.output) / (s.run_id or s.name)
    plan = BenchPlan(name=s.name, instances=instances, arms=arms, config=config, output=output,
                     workers=s.workers, redo=s.redo_existing, evaluate=s.evaluate,
                     image_template=s.image_template, executor=s.executor, ray_address=s.ray_address)
    ensure_images(plan)
    official = uses_official_harness(plan)
    evaluate_fn = None if official else make_evaluator(plan)
    harness_dataset = str(Path(s.dataset).resolve()) if s.dataset else datasets.HF_DATASETS.get(plan.name, "")

    if s.evaluate_only:
        if official:
            return evaluate_only_with_harness(plan, Path(s.evaluate_only), harness_dataset)
        return evaluate_only(plan, Path(s.evaluate_only), evaluate_fn)

    from comem_cli.models import LitellmModel

    LitellmModel(config.model).preflight()
    backends = load_backends(plan)
    started = time.time()
    console.print(f"[bold]comem bench {plan.name}[/bold]: {len(instances)} instances x arms {', '.join(arms)} · "
                  f"model {config.model.name} · {plan.workers} workers · output {output}")
    import threading

    from comem_cli.bench.runner import Progress

    progress, stop = Progress(total=0), threading.Event()
    try:
        with Live(get_renderable=live_display(progress, started), console=console, refresh_per_second=2):
            run_bench(plan, backends=backends, evaluate_fn=evaluate_fn if plan.evaluate else None,
                      progress=progress, stop=stop)
    finally:
        for backend in backends.values():
            if backend is not None:
                backend.close()
    if official and plan.evaluate:
        from comem_cli.bench.harness import harness_evaluate

        for arm in arms:
            console.print(f"evaluating {arm} with the official SWE-bench harness (local images) ...")
            harness_evaluate(plan.arm_dir(arm) / "preds.json", harness_dataset, plan.arm_dir(arm),
                             [i["instance_id"] for i in instances], run_id=f"comem-{arm}", workers=plan.workers)
    report = bench_report(output, arms, [i["instance_id"] for i in instances], plan.name)
    console.print(report_table(report))
    console.print(f"[dim]report {output / 'report.json'} · predictions {', '.join(str(plan.arm_dir(a) / 'preds.json') for a in arms)}[/dim]")
    return 0


def uses_official_harness(plan) -> bool:
    """SWE-bench datasets are graded by the official harness; swe-mini (and instances that carry
    their own `test_cmd`) by comem's evaluation, which uses the same swebench grading code."""
    return plan.name != "swe-mini" and not all("test_cmd" in i for i in plan.instances)


def evaluate_only_with_harness(plan, preds_path: Path, dataset: str) -> int:
    import json

    from comem_cli.bench.harness import harness_evaluate
    from comem_cli.bench.report import bench_report, report_table
    from comem_cli.ui import console

    try:
        data = json.loads(preds_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read predictions file {preds_path}: {e}") from None
    ids = [p["instance_id"] for p in (data if isinstance(data, list) else data.values())]
    arm = "evaluate-only"
    harness_evaluate(preds_path, dataset, plan.output / arm, ids, run_id="comem-evaluate-only", workers=plan.workers)
    console.print(report_table(bench_report(plan.output, [arm], ids, plan.name)))
    return 0


def make_evaluator(plan):
    """comem's per-instance evaluation (swe-mini, or any instance with a `test_cmd`)."""
    from comem_cli.bench.datasets import image_for
    from comem_cli.bench.evaluation import evaluate

    def evaluate_instance(instance, patch):
        return evaluate({**instance, "image": image_for(instance, plan.image_template)}, patch)

    return evaluate_instance


def evaluate_only(plan, preds_path: Path, evaluate_fn) -> int:
    import json

    from comem_cli.bench.report import bench_report, report_table
    from comem_cli.rollouts import atomic_write_json
    from comem_cli.ui import console

    try:
        data = json.loads(preds_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read predictions file {preds_path}: {e}") from None
    preds = data if isinstance(data, list) else list(data.values())
    by_id = {i["instance_id"]: i for i in plan.instances}
    unknown = [p.get("instance_id") for p in preds if p.get("instance_id") not in by_id]
    if unknown:
        raise UserError(f"predictions for instances not in {plan.name}: {', '.join(map(str, unknown[:5]))}")
    arm = "evaluate-only"
    out = plan.output / arm
    for p in preds:
        report = evaluate_fn(by_id[p["instance_id"]], p.get("model_patch") or "")
        atomic_write_json(out / "eval" / f"{p['instance_id']}.json", report)
        mark = "[green]resolved[/green]" if report.get("resolved") else "[red]not resolved[/red]"
        console.print(f"{p['instance_id']}: {mark}")
    report = bench_report(plan.output, [arm], [p["instance_id"] for p in preds], plan.name)
    console.print(report_table(report))
    return 0
