"""`--executor ray`: instances run as Ray tasks on a cluster (each node with its own Docker daemon).

A task runs one (arm, instance) in a scratch directory on its node and returns the run's files;
the driver writes them into the same outputs as the thread executor, as results stream back.
The runner hands in its `run_one` (and the class of its progress record), so this module does not
import the runner back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from comem_cli.errors import UserError
from comem_cli.rollouts import atomic_write_text


def _run_remote(plan, arm: str, instance: dict[str, Any], run_one: Callable, progress_type: type) -> dict[str, Any]:
    """Executed on a Ray worker: one run, in a scratch output dir, returned as files."""
    from comem_cli.models import LitellmModel
    from comem_cli.run import load_memory_backend

    with tempfile.TemporaryDirectory(prefix="comem-ray-") as scratch:
        local = plan.__class__(**{**plan.__dict__, "output": Path(scratch)})
        config = local.config.model_copy(deep=True)
        config.memory = config.memory.model_copy(update={"arm": arm})
        # warm-up: a fresh worker imports litellm (seconds) here, not in the timed run's first model call,
        # as the driver did before the thread executor's runs; else a worker's first run looks slow
        LitellmModel(config.model).preflight()
        backend, owned = load_memory_backend(config)
        try:
            run_one(local, arm, instance, backend, progress_type(total=1))
        finally:
            if owned:
                backend.close()
        run_dir = local.arm_dir(arm) / "runs" / instance["instance_id"]
        return {"files": {p.name: p.read_text() for p in run_dir.iterdir() if p.is_file()}}


def run_on_ray(plan, todo: list, complete: Callable, progress, run_one: Callable) -> None:
    """Run `todo` as Ray tasks, each calling `run_one(plan, arm, instance, backend, progress)` on a worker."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'ray[default]'") from None
    try:
        ray.init(address=plan.ray_address, ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    except Exception as e:
        raise UserError(f"cannot connect to Ray at {plan.ray_address or 'a new local instance'}: {str(e).splitlines()[0][:160]}") from None
    remote = ray.remote(_run_remote)
    pending = {remote.remote(plan, arm, inst, run_one, type(progress)): (arm, inst) for arm, inst in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        arm, inst = pending.pop(ready[0])
        files = ray.get(ready[0])["files"]
        run_dir = plan.arm_dir(arm) / "runs" / inst["instance_id"]
        for name, text in files.items():
            atomic_write_text(run_dir / name, text)
        progress.set(f"ray {arm}", f"{arm:6s} {inst['instance_id']}  done")
        complete(arm, inst, files.get("patch.diff", ""))
