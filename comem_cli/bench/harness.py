"""Grade predictions with the official SWE-bench harness (swebench 5.x, `swebench.harness.run_evaluation`),
run offline on the local instance images, and file its verdicts as comem's eval/<instance_id>.json.

The one evaluation path of every benchmark (swe-mini, SWE-bench Verified / Lite, a --dataset file):
the selected instances are written as a local dataset.jsonl (the harness reads a local .json/.jsonl
without network, and pulls an image only when it is missing), the predictions as preds.json, and
the harness CLI runs in WORKDIR (it writes logs/run_evaluation/<run_id>/<model>/<id>/ under its
working directory and <model>.<run_id>.json there). Each instance's report.json is copied as is;
the instances the harness does not grade get the same fields with `resolved: false` and a `status`:
`empty_patch` (it never runs an empty prediction) or `error` (the patch does not apply, the tests
time out, the container fails).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from comem_cli.errors import UserError
from comem_cli.rollouts import atomic_write_json, atomic_write_text

SWEBENCH_VERSION = "5.0.2"  # the harness this module drives (pip install swebench==5.0.2)
EVAL_TIMEOUT_S = 1800  # per instance: the harness's own default
APPLY_PATCH_FAIL = ">>>>> Patch Apply Failed"


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """A predictions file in the harness / sb-cli format (.json dict or list, .jsonl) as {id: prediction}."""
    path = Path(path)
    try:
        text = path.read_text()
        data = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
            else json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read predictions file {path}: {str(e).splitlines()[0][:160]}") from None
    preds = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(preds, list) or not all(isinstance(p, dict) and "instance_id" in p for p in preds):
        raise UserError(f"{path} is not a SWE-bench predictions file (a list or dict of "
                        "{instance_id, model_name_or_path, model_patch})")
    return {p["instance_id"]: {"instance_id": p["instance_id"], "model_name_or_path": p.get("model_name_or_path") or "none",
                               "model_patch": p.get("model_patch")} for p in preds}


def _file_limit() -> int:
    """--open_file_limit: the harness sets soft and hard to it; never above what this process may."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)


def harness_evaluate(instances: list[dict[str, Any]], preds: dict[str, dict[str, Any]], workdir: Path, *,
                     image_template: str | None = None, workers: int = 2, timeout: int = EVAL_TIMEOUT_S,
                     label: str = "eval") -> dict[str, dict[str, Any]]:
    """Grade `preds` on `instances` with the official harness; returns {instance_id: report}."""
    from comem_cli.bench.datasets import image_for

    instances = [i for i in instances if i["instance_id"] in preds]
    if not instances:
        return {}
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = workdir / "dataset.jsonl"
    atomic_write_text(dataset, "".join(json.dumps({**i, "image": image_for(i, image_template)}, default=str) + "\n"
                                       for i in instances))
    preds_path = workdir / "preds.json"
    ids = [i["instance_id"] for i in instances]
    atomic_write_json(preds_path, {iid: preds[iid] for iid in ids})
    # unique per call: the harness names its containers sweb.eval.<id>.<run_id> and removes any namesake
    run_id = f"comem-{label}-{secrets.token_hex(4)}"
    cmd = [sys.executable, "-m", "swebench.harness.run_evaluation", "--dataset_name", str(dataset), "--split", "test",
           "--predictions_path", str(preds_path), "--run_id", run_id, "--max_workers", str(max(1, workers)),
           "--timeout", str(timeout), "--open_file_limit", str(_file_limit()), "--report_dir", str(workdir),
           "--instance_ids", *ids]
    log = workdir / f"harness.{run_id}.log"
    budget = timeout * (len(ids) // max(1, workers) + 1) + 600
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout=budget)
        except BaseException:  # Ctrl-C or the budget: stop the harness and its containers
            proc.kill()
            proc.wait()
            _remove_containers(run_id)
            raise
    return _collect(instances, preds, workdir, run_id, rc, log)


def _collect(instances, preds, workdir: Path, run_id: str, rc: int, log: Path) -> dict[str, dict[str, Any]]:
    """Each instance's verdict: the harness's report.json, else what its run report says of it."""
    run_reports = list(workdir.glob(f"*.{run_id}.json"))  # <first model>.<run_id>.json
    try:
        if not run_reports:
            raise OSError("no run report")
        empty = {iid for path in run_reports for iid in json.loads(path.read_text())["empty_patch_ids"]}
    except (OSError, ValueError, KeyError):
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise UserError(f"the SWE-bench harness failed (exit {rc}): {tail[-1][:200] if tail else 'no output'}; "
                        f"see {log}") from None
    reports: dict[str, dict[str, Any]] = {}
    for inst in instances:
        iid = inst["instance_id"]
        pred = preds[iid]
        inst_dir = workdir / "logs" / "run_evaluation" / run_id / pred["model_name_or_path"].replace("/", "__") / iid
        base = {"instance_id": iid, "harness_run_id": run_id, "harness_logs": str(inst_dir),
                "swebench_version": SWEBENCH_VERSION}
        try:
            verdict = json.loads((inst_dir / "report.json").read_text())[iid]
        except (OSError, ValueError, KeyError):
            verdict = None
        if verdict is not None:
            reports[iid] = {**base, **verdict, "status": "resolved" if verdict.get("resolved") else "unresolved"}
        elif iid in empty:  # the harness never runs an empty prediction
            reports[iid] = {**base, "patch_is_None": pred.get("model_patch") is None, "patch_exists": False,
                            "patch_successfully_applied": False, "resolved": False, "status": "empty_patch"}
        else:  # one of its error_ids: no report
            reports[iid] = {**base, "patch_is_None": False, "patch_exists": True,
                            "patch_successfully_applied": not _apply_failed(inst_dir), "resolved": False,
                            "status": "error", "error": _error_line(inst_dir)}
    return reports


def _apply_failed(inst_dir: Path) -> bool:
    try:
        return APPLY_PATCH_FAIL in (inst_dir / "run_instance.log").read_text(errors="replace")
    except OSError:
        return False


def _error_line(inst_dir: Path) -> str:
    try:
        text = (inst_dir / "run_instance.log").read_text(errors="replace")
    except OSError:
        return "the harness graded nothing (no log)"
    if APPLY_PATCH_FAIL in text:
        return "the patch does not apply"
    for needle in ("timed out", "Error"):
        line = next((ln for ln in reversed(text.splitlines()) if needle in ln), None)
        if line:
            return line.strip()[:200]
    return f"the harness wrote no report; see {inst_dir / 'run_instance.log'}"


def _remove_containers(run_id: str) -> None:
    try:
        from comem_cli.sandbox import docker_client

        for c in docker_client().containers.list(all=True, filters={"name": run_id}):
            c.remove(force=True)
    except Exception:
        pass
