"""The benchmark runner command (`comem bench swe-mini | swebench-verified | swebench-lite`):
validate the settings, then run / evaluate / export, with a live display and a table."""

from __future__ import annotations

import time
from pathlib import Path
from comem_cli.bench.settings import BenchSettings


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
    from comem_cli.bench.runner import BenchPlan, ensure_images, load_backends, run_bench
    from comem_cli.config import DEFAULT_MODEL, AgentConfig, MemoryConfig, ModelConfig, RunConfig, SandboxConfig
    from comem_cli.ui import console

    from comem_cli.config import parse_arms

    arms = parse_arms(s.memory)
    k = s.k
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
                            launch_tokens=s.launch_tokens, backend=s.memory_backend,
                            model=s.memory_model, api_base=s.memory_api_base, prewarm=bool(s.prewarm),
                            sections=s.summary_sections),
    )
    output = Path(s.output) / (s.run_id or s.name)
    plan = BenchPlan(name=s.name, instances=instances, arms=arms, config=config, output=output,
                     workers=s.workers, redo=s.redo_existing, evaluate=s.evaluate,
                     image_template=s.image_template, executor=s.executor, ray_address=s.ray_address)
    if s.evaluate_only:
        return evaluate_only(plan, Path(s.evaluate_only))
    ensure_images(plan)

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
            run_bench(plan, backends=backends, progress=progress, stop=stop)
    finally:
        for backend in backends.values():
            if backend is not None:
                backend.close()
    report = bench_report(output, arms, [i["instance_id"] for i in instances], plan.name)
    console.print(report_table(report))
    console.print(f"[dim]report {output / 'report.json'} · predictions {', '.join(str(plan.arm_dir(a) / 'preds.json') for a in arms)}[/dim]")
    return 0


def evaluate_only(plan, preds_path: Path) -> int:
    """Grade a predictions file with the official harness and show the verdicts."""
    import json

    from comem_cli.bench.report import bench_report, report_table
    from comem_cli.bench.runner import EVALUATE_ONLY, evaluate_only as grade
    from comem_cli.ui import console

    ids = grade(plan, preds_path)
    for iid in ids:
        verdict = json.loads((plan.arm_dir(EVALUATE_ONLY) / "eval" / f"{iid}.json").read_text())
        mark = "[green]resolved[/green]" if verdict.get("resolved") else f"[red]not resolved[/red] ({verdict.get('status')})"
        console.print(f"{iid}: {mark}")
    console.print(report_table(bench_report(plan.output, [EVALUATE_ONLY], ids, plan.name)))
    return 0
