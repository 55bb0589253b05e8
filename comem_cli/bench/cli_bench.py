"""`comem bench`: validate the flags, then run / evaluate / export, with a live display and a table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from comem_cli.errors import UserError

ARMS = ("full", "mask", "sync", "comem")


def parse_arms(memory: str) -> list[str]:
    arms = [a.strip() for a in memory.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if not arms or bad:
        raise UserError(f"--memory takes arms from {', '.join(ARMS)} (got {memory!r})")
    return list(dict.fromkeys(arms))


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


def bench_command(**o: Any) -> int:
    if o.get("name") == "latency":  # replay recorded runs and time the arms (comem_cli/bench/latency.py)
        return __import__("comem_cli.bench.latency", fromlist=["latency_command"]).latency_command(**o)
    from rich.live import Live

    from comem_cli.bench import datasets
    from comem_cli.bench.report import bench_report, report_table
    from comem_cli.bench.runner import BenchPlan, Predictions, ensure_images, load_backends, run_bench
    from comem_cli.config import DEFAULT_MODEL, AgentConfig, MemoryConfig, ModelConfig, RunConfig, SandboxConfig
    from comem_cli.ui import console

    arms = parse_arms(o["memory"])
    if o["executor"] not in ("threads", "ray"):
        raise UserError(f"--executor must be threads or ray (got {o['executor']!r})")
    instances = datasets.select(datasets.load_instances(o["name"], o["dataset"]),
                                ids=[i.strip() for i in o["instances"].split(",")] if o["instances"] else None,
                                pattern=o["filter"], slice_spec=o["slice_"])
    if o["export_dataset"]:
        datasets.export_jsonl(instances, o["export_dataset"])
        console.print(f"wrote {len(instances)} instances to {o['export_dataset']}")
        return 0
    config = RunConfig(
        model=ModelConfig(name=o["model"] or DEFAULT_MODEL, api_base=o["api_base"]),
        sandbox=SandboxConfig(command_timeout_s=o["timeout"]),
        agent=AgentConfig(max_steps=o["max_steps"], cost_limit=o["cost_limit"]),
        memory=MemoryConfig(k=o["k"], every=o["every"], raw_budget=o["raw_budget"], backend=o["memory_backend"],
                            model=o["memory_model"], api_base=o["memory_api_base"], prewarm=bool(o.get("prewarm"))),
    )
    output = Path(o["output"]) / (o["run_id"] or o["name"])
    plan = BenchPlan(name=o["name"], instances=instances, arms=arms, config=config, output=output,
                     workers=o["workers"], redo=o["redo_existing"], evaluate=o["evaluate"],
                     image_template=o["image_template"], executor=o["executor"], ray_address=o["ray_address"])
    ensure_images(plan)
    official = uses_official_harness(plan)
    evaluate_fn = None if official else make_evaluator(plan)
    harness_dataset = str(Path(o["dataset"]).resolve()) if o["dataset"] else datasets.HF_DATASETS.get(plan.name, "")

    if o["evaluate_only"]:
        if official:
            return evaluate_only_with_harness(plan, Path(o["evaluate_only"]), harness_dataset)
        return evaluate_only(plan, Path(o["evaluate_only"]), evaluate_fn)

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
