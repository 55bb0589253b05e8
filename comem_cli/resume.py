"""`comem fix --resume RUN_DIR`: continue a run that was interrupted or killed (SIGKILL included).

1. Read the run dir strictly, before anything is written: meta.json of this comem version, a
   status that is not final, the snapshot readable whole, every trajectory line readable. A
   truncated last line (the process died mid-write) is dropped and the readable prefix kept; a
   corrupt line elsewhere is an error. A server URL recorded without its credentials must be
   given again.
2. A fresh sandbox gets the run's repository snapshot (snapshot.tar.gz) and the recorded commands
   are executed again in order. Each output is compared with the recorded observation (decimal
   numbers such as test timings aside); the first step that differs is named in a warning (the run
   goes on: the model sees the live sandbox).
3. The agent gets the recorded steps and spent cost; the memory pipeline gets the recorded
   summaries back (and relaunches a summary that was in flight when the run died).
4. The model continues from the next step, appending to the same trajectory.jsonl.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from comem_cli import __version__
from comem_cli.errors import UserError
from comem_cli.rollouts import META, TRAJECTORY, StepRecord, atomic_write_text
from comem_cli.snapshot import SNAPSHOT, SnapshotError, load_snapshot

_DECIMAL = re.compile(r"\d+\.\d+")

# Statuses a run can be resumed from: still "running" (killed), interrupted, or ended by a fault.
RESUMABLE = ("running", "interrupted", "api_error", "environment_error")

# `fix` options that may change on resume (e.g. a new --api-base), and the config field each sets.
OVERRIDABLE = {
    "model": ("model", "name"), "api_base": ("model", "api_base"), "image": ("sandbox", "image"),
    "timeout": ("sandbox", "command_timeout_s"), "max_steps": ("agent", "max_steps"),
    "cost_limit": ("agent", "cost_limit"), "time_limit": ("agent", "time_limit_s"),
    "memory_backend": ("memory", "backend"), "memory_model": ("memory", "model"),
    "memory_api_base": ("memory", "api_base"), "memory_timeout": ("memory", "timeout_s"),
}
# Options that shape the run itself: the recorded values hold, so giving them with --resume is an error.
FIXED = ("issue", "memory", "k", "every", "raw_budget", "max_summary_tokens", "prewarm", "memory_engine", "network", "output")


@dataclass
class Recorded:
    run_dir: Path
    meta: dict[str, Any]
    steps: list[StepRecord]
    dropped_partial: bool  # a truncated last line was dropped
    archive: bytes  # the repository snapshot, checked whole (snapshot.load_snapshot)


def _fail(run_dir: Path, why: str) -> UserError:
    return UserError(f"cannot resume {run_dir}: {why}")


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a recycled pid that is not comem does not count
        return b"comem" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def read_steps_strict(run_dir: Path) -> tuple[list[StepRecord], bool]:
    """Every step of trajectory.jsonl; a corrupt line is an error, a truncated last line is dropped."""
    path = run_dir / TRAJECTORY
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _fail(run_dir, f"cannot read {TRAJECTORY} ({e.strerror or e})") from None
    lines = data.split(b"\n")
    partial = lines.pop()  # b"" when the file ends with a newline
    steps: list[StepRecord] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            step = StepRecord.model_validate_json(line)
        except (ValidationError, ValueError):
            raise _fail(run_dir, f"{TRAJECTORY} line {number} is corrupt (not a step record)") from None
        if step.step != len(steps):
            raise _fail(run_dir, f"{TRAJECTORY} line {number} holds step {step.step}, expected {len(steps)}")
        steps.append(step)
    dropped = bool(partial.strip())
    if dropped:  # keep the readable prefix, so that new steps are appended after a clean line
        atomic_write_text(path, b"\n".join(lines).decode("utf-8", "replace") + ("\n" if lines else ""))
    return steps, dropped


def read_recorded(run_dir: Path) -> Recorded:
    """The run dir, checked for resuming. Raises UserError with a one-line reason."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise _fail(run_dir, "not a directory")
    if not (run_dir / META).is_file() or not (run_dir / TRAJECTORY).is_file():
        raise _fail(run_dir, f"not a comem run directory (no {META} or {TRAJECTORY})")
    try:
        meta = json.loads((run_dir / META).read_text())
    except (OSError, ValueError) as e:
        raise _fail(run_dir, f"{META} is not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(meta, dict):
        raise _fail(run_dir, f"{META} is not a JSON object")
    version = meta.get("comem_version")
    if version != __version__:
        raise _fail(run_dir, f"it was written by comem {version or '(unknown version)'}, this is comem {__version__}")
    status = meta.get("status")
    if status not in RESUMABLE:
        raise _fail(run_dir, f"the run already finished with status {status!r}; only a run that was "
                             f"interrupted or killed can be resumed")
    if status == "running" and _pid_alive(meta.get("pid")):
        raise _fail(run_dir, f"the run is still going (process {meta['pid']})")
    if not isinstance(meta.get("issue"), dict) or not isinstance(meta["issue"].get("text"), str) or "config" not in meta:
        raise _fail(run_dir, f"{META} lacks the issue text or the config")
    if not (run_dir / SNAPSHOT).is_file():
        raise _fail(run_dir, f"no {SNAPSHOT} (the repository snapshot the run started from)")
    try:  # before anything is written (read_steps_strict may rewrite the trajectory)
        archive = load_snapshot(run_dir)
    except SnapshotError as e:
        raise _fail(run_dir, str(e)) from None
    steps, dropped = read_steps_strict(run_dir)
    return Recorded(run_dir=run_dir, meta=meta, steps=steps, dropped_partial=dropped, archive=archive)


def resumed_config(meta: dict[str, Any], overrides: dict[str, Any]):
    """The recorded RunConfig with the overridable options the user gave on this command line."""
    from comem_cli.config import RunConfig

    data = json.loads(json.dumps(meta["config"]))
    for option, value in overrides.items():
        section, field = OVERRIDABLE[option]
        data[section][field] = value
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(f"cannot resume: the recorded config is not valid ({str(e).splitlines()[0]})") from None
    require_redacted_urls(config, set(overrides))
    return config


def require_redacted_urls(config, given: set[str]) -> None:
    """A recorded server URL lost its credentials (comem_cli/redact.py) and cannot reach the server
    as it is: the user gives it again, as API keys are given again (from the environment)."""
    from comem_cli.config import SUMMARIZING_ARMS
    from comem_cli.redact import is_redacted

    used = {"api_base": config.model.api_base,
            "memory_api_base": config.memory.api_base if config.memory.arm in SUMMARIZING_ARMS else None}
    missing = ["--" + option.replace("_", "-") for option, url in used.items() if option not in given and is_redacted(url)]
    if missing:
        flags = " and ".join(missing)
        raise UserError(f"cannot resume: the run dir keeps {flags} without the credentials it held; pass {flags} again")


def replay(sandbox, archive: bytes, steps: list[StepRecord], timeout: int, max_observation_chars: int) -> int | None:
    """Unpack the snapshot and run the recorded commands again. Returns the first step whose output
    differs from the recorded observation, or None when all match."""
    from comem_cli.agent import cut_middle
    from comem_cli.templates import render

    sandbox.copy_repo(archive)
    first_difference = None
    for step in steps:
        if step.action is None or step.command is None:  # format errors, replies instead, quits
            continue
        result = sandbox.execute(step.action, timeout=timeout)
        observation = render("observation.j2", returncode=result.returncode, timed_out=result.timed_out, timeout=timeout,
                             output=cut_middle(result.output, max_observation_chars))
        if comparable(observation) != comparable(step.observation) and first_difference is None:
            first_difference = step.step
    return first_difference


def comparable(observation: str) -> str:
    """An observation without what changes from run to run anyway: decimal numbers (timings)."""
    return _DECIMAL.sub("#", observation)


def restore_memory(context, steps: list[StepRecord], meta: dict[str, Any]) -> int:
    """Give a MemoryContext the recorded steps and summaries back (`MemoryContext.restore`). Returns
    how many summaries were restored."""
    records: dict[int, dict[str, Any]] = {}
    sources = [e for s in steps for e in s.memory] + list(meta.get("memory_jobs") or [])
    for r in sources:
        if r.get("kind", "job") == "job" and r.get("status") == "done" and isinstance(r.get("summary"), str) \
                and isinstance(r.get("cutoff"), int) and r["cutoff"] <= len(steps):
            records.setdefault(r["cutoff"], r)
    context.restore(steps, [r for _, r in sorted(records.items())])
    return len(records)


def restorer(recorded: Recorded, report: Callable[[str], None]) -> Callable:
    """The `restore` hook of run.execute: recorded steps, spent cost, summaries."""
    from comem_cli.memory.pipeline import MemoryContext

    def restore(agent) -> None:
        agent.steps = list(recorded.steps)
        agent.model.cost = sum(s.cost for s in recorded.steps)
        if isinstance(agent.context, MemoryContext):
            restored = restore_memory(agent.context, recorded.steps, recorded.meta)
            report(f"memory: {restored} recorded summaries restored")
        report(f"continuing at step {len(recorded.steps)}")

    return restore


def remove_leftovers(run_name: str) -> None:
    """The killed run's container (same comem.run label) is of no use any more."""
    import contextlib

    from comem_cli.sandbox import LABEL, docker_client

    for c in docker_client().containers.list(all=True, filters={"label": [LABEL, f"comem.run={run_name}"]}):
        with contextlib.suppress(Exception):
            c.remove(force=True)


def resume_overrides(given: set[str], params: dict[str, Any]) -> dict[str, Any]:
    """The options given with --resume that may change; an option that shapes the run is an error."""
    fixed = sorted(name for name in given if name in FIXED)
    if fixed:
        flags = ", ".join("--" + name.replace("_", "-") for name in fixed)
        raise UserError(f"--resume continues the recorded run as it was set up; drop {flags}")
    return {name: params[name] for name in given if name in OVERRIDABLE}


def recorded_issue(meta: dict[str, Any]):
    from comem_cli.issues import Issue

    info = meta["issue"]
    return Issue(title=info.get("title") or "", body="", number=info.get("number"), url=info.get("url"))


def resume(recorded: Recorded, config, repo, issue, *, branch: str | None = None, apply: bool = True,
           force: bool = False, on_step=None, on_start=None, confirm=None, report: Callable[[str], None] = print,
           warn: Callable[[str], None] = print, backend=None):
    """Continue the recorded run with `config` (the recorded one, see resumed_config); returns a
    run.FixOutcome like `fix` does, the patch committed on `branch` in `repo` when `apply`."""
    from comem_cli.models import LitellmModel
    from comem_cli.run import FixOutcome, commit_fix, default_branch, execute, load_memory_backend
    from comem_cli.sandbox import docker_client, require_image

    meta = recorded.meta
    if apply:
        branch = branch or meta.get("branch_requested") or default_branch(issue)
        repo.check_branch_name(branch)
        if repo.branch_exists(branch) and not force:
            raise UserError(f"branch {branch!r} already exists; pass --force to overwrite it or --branch NAME")
    LitellmModel(config.model).preflight()
    require_image(docker_client(), config.sandbox.image)
    remove_leftovers(recorded.run_dir.name)
    backend, own_backend = load_memory_backend(config, backend)
    if on_start:
        on_start(recorded.run_dir, config.sandbox.image)
    if recorded.dropped_partial:
        warn(f"warning: dropped a truncated last line of {TRAJECTORY}; resuming after step {len(recorded.steps) - 1}")
    commands = sum(1 for s in recorded.steps if s.action is not None and s.command is not None)
    report(f"replaying {commands} recorded commands in a fresh sandbox")
    history = list(meta.get("resumes") or []) + [{"at": time.time(), "from_step": len(recorded.steps),
                                                  "dropped_partial_line": recorded.dropped_partial}]

    def prepare(sandbox) -> None:
        first = replay(sandbox, recorded.archive, recorded.steps, config.sandbox.command_timeout_s, config.agent.max_observation_chars)
        history[-1]["replay_first_difference"] = first
        if first is not None:
            warn(f"warning: replay: the command of step {first} printed something else than in the recorded run; "
                 f"the sandbox may differ from the one the model saw")

    keep = {k: v for k, v in meta.items() if k not in ("status", "message", "ended", "totals", "memory_jobs", "comem_version",
                                                         "config", "prompts", "branch", "commit", "apply_error")}
    try:
        result, new_meta = execute(meta["issue"]["text"], config, recorded.run_dir, prepare=prepare, backend=backend, on_step=on_step,
                                   confirm=confirm, restore=restorer(recorded, report),
                                   meta={**keep, "pid": os.getpid(), "resumes": history})
    finally:
        if own_backend:
            backend.close()
    outcome = FixOutcome(result=result, run_dir=recorded.run_dir, left_out=list(new_meta.get("left_out") or []))
    return commit_fix(repo, issue, outcome, new_meta, branch=branch or "", apply=apply, force=force)
