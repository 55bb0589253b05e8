"""Run a benchmark: arms x instances on a thread pool (or Ray), resumable, observable.

Outputs, per arm, under OUTPUT/RUN_ID/ARM/:
  runs/<instance_id>/   the `comem fix` run format (trajectory.jsonl, meta.json, patch.diff)
  preds.json            SWE-bench predictions ({instance_id: {instance_id, model_name_or_path, model_patch}})
  eval/<instance_id>.json  the official SWE-bench harness's verdict (bench/harness.py)
  harness/              the harness's own dataset, predictions, logs and run report
and OUTPUT/RUN_ID/report.json comparing the arms. Every file is written atomically; a rerun with
the same output skips finished instances, redoes unfinished ones and grades what is not graded yet.
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from comem_cli.config import SUMMARIZING_ARMS, RunConfig
from comem_cli.errors import FINAL_STATUSES, UserError
from comem_cli.rollouts import META, atomic_write_json


@dataclass
class BenchPlan:
    name: str
    instances: list[dict[str, Any]]
    arms: list[str]
    config: RunConfig  # the base config; memory.arm is set per arm
    output: Path
    workers: int = 2
    redo: bool = False
    evaluate: bool = True
    image_template: str | None = None
    executor: str = "threads"
    ray_address: str | None = None

    def arm_dir(self, arm: str) -> Path:
        return self.output / arm

    def arm_config(self, arm: str, instance: dict[str, Any]) -> RunConfig:
        from comem_cli.bench.datasets import image_for

        config = self.config.model_copy(deep=True)
        config.memory = config.memory.model_copy(update={"arm": arm})
        config.memory = type(config.memory).model_validate(config.memory.model_dump())  # re-derive every / k
        config.sandbox.image = image_for(instance, self.image_template)
        config.sandbox.workdir = "/testbed"
        return config


@dataclass
class Progress:
    """What the live display shows; updated from worker threads."""

    total: int
    done: int = 0
    cost: float = 0.0
    workers: dict[str, str] = field(default_factory=dict)  # thread name -> "arm instance step n"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, key: str, text: str | None) -> None:
        with self.lock:
            if text is None:
                self.workers.pop(key, None)
            else:
                self.workers[key] = text


class Predictions:
    """preds.json of one arm, rewritten atomically after every instance."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        self.items: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self.items = json.loads(path.read_text())
            except json.JSONDecodeError:
                backup = path.with_suffix(".corrupt.json")
                path.replace(backup)  # never lose data: keep the unreadable file beside
                self.items = {}

    def add(self, instance_id: str, model: str, patch: str) -> None:
        with self.lock:
            self.items[instance_id] = {"instance_id": instance_id, "model_name_or_path": model, "model_patch": patch}
            atomic_write_json(self.path, self.items)


def finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / META).read_text()).get("status") in FINAL_STATUSES
    except (OSError, json.JSONDecodeError):
        return False


def run_one(plan: BenchPlan, arm: str, instance: dict[str, Any], backend, progress: Progress,
            stop: threading.Event | None = None) -> dict[str, Any]:
    """One instance of one arm, recorded in arm/runs/<id>. Returns the run's meta."""
    from comem_cli.run import execute

    iid = instance["instance_id"]
    run_dir = plan.arm_dir(arm) / "runs" / iid
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished run from a killed bench: redo it from scratch
    (plan.arm_dir(arm) / "eval" / f"{iid}.json").unlink(missing_ok=True)  # its old verdict is stale
    key = threading.current_thread().name

    def on_step(step) -> None:
        with progress.lock:
            progress.cost += step.cost
        progress.set(key, f"{arm:6s} {iid}  step {step.step + 1}")

    progress.set(key, f"{arm:6s} {iid}  starting")
    _, meta = execute(instance["problem_statement"], plan.arm_config(arm, instance), run_dir, backend=backend,
                      prepare=lambda sandbox: sandbox.adopt_repo(),
                      on_step=on_step, stop=stop, meta={"instance_id": iid, "benchmark": plan.name, "arm": arm},
                      labels={"comem.bench": str(plan.output.resolve())})
    progress.set(key, None)
    return meta


def interleaved(arms: list[str], instances: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every (arm, instance), instance by instance, the arms' order turning by one each instance.
    The arms of one instance then run side by side, under the same load and warm-up, and no arm always
    goes first: run arm after arm, the first one paid the cold start alone and a speed-up between arms
    was partly that."""
    return [(arms[(i + j) % len(arms)], inst) for i, inst in enumerate(instances) for j in range(len(arms))]


def run_bench(plan: BenchPlan, *, backends: dict[str, Any], progress: Progress | None = None,
              stop: threading.Event | None = None) -> None:
    """Run every (arm, instance) not finished yet, writing preds as they complete; then grade every
    prediction not graded yet with the official harness (when plan.evaluate)."""
    preds = {arm: Predictions(plan.arm_dir(arm) / "preds.json") for arm in plan.arms}
    todo = [(arm, inst) for arm, inst in interleaved(plan.arms, plan.instances)
            if plan.redo or not finished(plan.arm_dir(arm) / "runs" / inst["instance_id"])
            or inst["instance_id"] not in preds[arm].items]
    progress = progress or Progress(total=0)
    progress.total = len(todo)
    model_name = f"comem-{plan.config.model.name}"

    def complete(arm: str, inst: dict[str, Any], patch: str) -> None:
        preds[arm].add(inst["instance_id"], f"{model_name}-{arm}", patch)
        with progress.lock:
            progress.done += 1

    if plan.executor == "ray":
        from comem_cli.bench.ray_executor import run_on_ray

        run_on_ray(plan, todo, complete, progress, run_one)
    else:
        def task(arm, inst):
            meta = run_one(plan, arm, inst, backends.get(arm), progress, stop)
            patch = (plan.arm_dir(arm) / "runs" / inst["instance_id"] / "patch.diff").read_text()
            if meta.get("status") == "interrupted":
                raise KeyboardInterrupt
            return patch

        with ThreadPoolExecutor(max_workers=max(plan.workers, 1), thread_name_prefix="comem-bench") as pool:
            futures = {pool.submit(task, arm, inst): (arm, inst) for arm, inst in todo}
            try:
                for future in as_completed(futures):
                    arm, inst = futures[future]
                    complete(arm, inst, future.result())
            except BaseException:  # Ctrl-C: cancel what has not started, stop the running agents
                for f in futures:
                    f.cancel()
                if stop is not None:
                    stop.set()
                raise
    if plan.evaluate:
        for arm in plan.arms:
            evaluate_arm(plan, arm, preds[arm].items, progress)


def evaluate_arm(plan: BenchPlan, arm: str, preds: dict[str, dict[str, Any]], progress: Progress | None = None) -> None:
    """Grade the arm's predictions that have no eval/<id>.json yet, with the official harness."""
    from comem_cli.bench.harness import harness_evaluate

    eval_dir = plan.arm_dir(arm) / "eval"
    pending = [i for i in plan.instances
               if i["instance_id"] in preds and not (eval_dir / f"{i['instance_id']}.json").exists()]
    if not pending:
        return
    if progress is not None:
        progress.set("harness", f"{arm:6s} official SWE-bench harness: grading {len(pending)} predictions")
    reports = harness_evaluate(pending, preds, plan.arm_dir(arm) / "harness", image_template=plan.image_template,
                               workers=plan.workers, label=arm)
    for iid, report in reports.items():
        atomic_write_json(eval_dir / f"{iid}.json", report)
    if progress is not None:
        progress.set("harness", None)


def load_backends(plan: BenchPlan) -> dict[str, Any]:
    """One memory backend per summarizing arm, shared by all its instances (a vLLM engine batches them)."""
    from comem_cli.run import load_memory_backend

    backends = {}
    for arm in plan.arms:
        if arm in SUMMARIZING_ARMS:
            config = plan.config.model_copy(deep=True)
            config.memory = config.memory.model_copy(update={"arm": arm})
            backends[arm], _ = load_memory_backend(config)
    return backends


def ensure_images(plan: BenchPlan) -> None:
    """Every instance image exists locally, or is pulled; a clear error when neither works."""
    from comem_cli.bench.datasets import image_for
    from comem_cli.sandbox import docker_client

    client = docker_client()
    images = sorted({image_for(i, plan.image_template) for i in plan.instances})
    missing = []
    for image in images:
        try:
            client.images.get(image)
        except Exception:
            missing.append(image)
    ours = [m for m in missing if m.startswith("comem-swe-mini-")]
    if ours:  # the swe-mini images are built here, never pulled
        from comem_cli.bench.swe_mini import build_swe_mini_images

        build_swe_mini_images(only=ours)
        missing = [m for m in missing if not _exists(client, m)]
    for image in list(missing):
        try:
            client.images.pull(image)
            missing.remove(image)
        except Exception as e:
            reason = str(e).splitlines()[0][:120]
            raise UserError(f"image {image} is not available locally and cannot be pulled ({reason}); "
                            "build it, or pass --image-template") from None


def _exists(client, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except Exception:
        return False


EVALUATE_ONLY = "evaluate-only"


def evaluate_only(plan: BenchPlan, preds_path: Path) -> list[str]:
    """Grade an existing predictions file (harness / sb-cli format) into OUTPUT/evaluate-only/eval/;
    returns the graded instance ids."""
    from comem_cli.bench.harness import read_predictions

    preds = read_predictions(preds_path)
    known = {i["instance_id"] for i in plan.instances}
    unknown = [iid for iid in preds if iid not in known]
    if unknown:
        raise UserError(f"predictions for instances not in {plan.name}: {', '.join(map(str, unknown[:5]))}")
    for iid in preds:  # graded afresh
        (plan.arm_dir(EVALUATE_ONLY) / "eval" / f"{iid}.json").unlink(missing_ok=True)
    chosen = replace(plan, instances=[i for i in plan.instances if i["instance_id"] in preds])
    ensure_images(chosen)  # only the predicted instances' images
    evaluate_arm(chosen, EVALUATE_ONLY, preds)
    return [i["instance_id"] for i in chosen.instances]
