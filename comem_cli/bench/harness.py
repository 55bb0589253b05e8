"""Evaluate SWE-bench predictions with the official harness (swebench.harness.run_evaluation),
using the local per-instance images, and file its per-instance reports as comem's eval/<id>.json.

The harness writes logs/run_evaluation/<run_id>/<model>/<instance_id>/report.json under its
working directory; we run it in OUTPUT/<arm>/harness/ and copy each report next to the runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from comem_cli.errors import UserError
from comem_cli.rollouts import atomic_write_json


def harness_evaluate(preds_path: Path, dataset: str, arm_dir: Path, instance_ids: list[str], *, run_id: str,
                     workers: int = 4, timeout: int = 1800) -> dict[str, dict[str, Any]]:
    """Run the official harness on `preds_path`; returns {instance_id: report} and writes eval/<id>.json."""
    preds = json.loads(Path(preds_path).read_text())
    preds = preds if isinstance(preds, dict) else {p["instance_id"]: p for p in preds}
    workdir = Path(arm_dir) / "harness"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "swebench.harness.run_evaluation", "--dataset_name", dataset,
           "--predictions_path", str(Path(preds_path).resolve()), "--run_id", run_id, "--max_workers", str(workers),
           "--timeout", str(timeout), "--instance_ids", *instance_ids]
    log = workdir / "harness.log"
    with open(log, "w") as out:
        rc = subprocess.call(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    reports = {}
    for iid in instance_ids:
        model = (preds.get(iid) or {}).get("model_name_or_path", "none").replace("/", "__")
        path = workdir / "logs" / "run_evaluation" / run_id / model / iid / "report.json"
        if path.is_file():
            report = json.loads(path.read_text()).get(iid, {})
            reports[iid] = {"instance_id": iid, **report}
            atomic_write_json(Path(arm_dir) / "eval" / f"{iid}.json", reports[iid])
    if rc != 0 and not reports:
        tail = log.read_text()[-300:].strip().splitlines()
        raise UserError(f"the SWE-bench harness failed (exit {rc}): {tail[-1] if tail else 'no output'}; see {log}")
    return reports
