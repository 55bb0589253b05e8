"""One `comem fix` run: repo + issue + config -> sandbox -> agent loop -> patch, branch, run dir.

This is the glue the CLI (and the benchmark runner) calls; each piece it wires together lives in
its own module. Input is validated before any container starts, so bad input fails in a second.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from comem_cli import __version__
from comem_cli.agent import Agent, RunResult, cut_middle
from comem_cli.config import SUMMARIZING_ARMS, RunConfig
from comem_cli.errors import EnvironmentFailure, UserError
from comem_cli.issues import Issue
from comem_cli.memory.pipeline import context_for
from comem_cli.models import LitellmModel
from comem_cli.repo import UserRepo, slugify
from comem_cli.rollouts import META, RunWriter, StepRecord, atomic_write_json
from comem_cli.sandbox import Sandbox, docker_client, require_image, tar_files
from comem_cli.signals import signals_deferred
from comem_cli.snapshot import save_snapshot
from comem_cli.templates import render

TRACEBACK = "traceback.txt"  # in the run dir, when a bug ended the run (status "error")


@dataclass
class FixOutcome:
    result: RunResult
    run_dir: Path
    branch: str | None = None
    commit: str | None = None
    apply_error: str | None = None
    left_out: list[str] = field(default_factory=list)  # untracked secret-looking files not copied in


def default_branch(issue: Issue) -> str:
    return f"comem/issue-{issue.number}" if issue.number is not None else f"comem/{slugify(issue.title)}"


def new_run_dir(output: Path, issue: Issue) -> Path:
    label = f"issue-{issue.number}" if issue.number is not None else slugify(issue.title, 30)
    return Path(output) / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-{secrets.token_hex(2)}"


def make_context(config: RunConfig, system: str, task: str, backend=None, model: LitellmModel | None = None):
    """The arm's context strategy; the summarizing arms need a memory backend (see memory/backends.py)."""
    prewarm = model.prewarm if (model is not None and config.memory.prewarm) else None
    return context_for(config.memory, system, task, backend, prewarm=prewarm)


def load_memory_backend(config: RunConfig, backend=None):
    """The memory backend a summarizing arm needs (None for full / mask). Returns (backend, owned)."""
    if backend is not None or config.memory.arm not in SUMMARIZING_ARMS:
        return backend, False
    from comem_cli.memory.backends import load_backend

    return load_backend(config.memory, main=config.model), True


def execute(task_text: str, config: RunConfig, run_dir: Path, *, prepare: Callable[[Sandbox], None] | None = None,
            backend=None, meta: dict[str, Any] | None = None, on_step: Callable[[StepRecord], None] | None = None,
            labels: dict[str, str] | None = None, stop=None, confirm=None,
            restore: Callable[[Agent], None] | None = None) -> tuple[RunResult, dict[str, Any]]:
    """One agent run in a fresh sandbox, recorded in `run_dir` (trajectory, meta, patch).

    `prepare` puts the code into the sandbox (fix: copy the user's tree; bench: the instance image
    already has it). Returns the result and the meta dict (status final), which callers may extend.
    `confirm` asks the user before each command (confirm.Confirmer); `restore` puts a resumed run's
    recorded steps and summaries into the agent before it continues (resume.py).
    """
    system = render("system.j2")
    issue_chars = len(task_text)
    task_text = cut_middle(task_text, config.agent.max_issue_chars)  # a 10 MB issue must not reach the model whole
    task = render("instance.j2", issue=task_text, workdir=config.sandbox.workdir, timeout=config.sandbox.command_timeout_s)
    meta = {"comem_version": __version__, "status": "running", "started": time.time(), **(meta or {}),
            "config": config.for_run_dir(), "prompts": {"system": system, "task": task}}
    if issue_chars > config.agent.max_issue_chars:
        meta["issue_cut"] = {"chars": issue_chars, "kept": config.agent.max_issue_chars}
    with signals_deferred(reraise=False) as received:  # a signal now ends the run below, with meta.json final
        writer = RunWriter(run_dir)
        writer.write_meta(meta)
    result: RunResult | None = None
    try:
        if received:
            raise KeyboardInterrupt
        with Sandbox(config.sandbox, labels={"comem.run": run_dir.name, **(labels or {})}) as sandbox:
            if prepare:
                prepare(sandbox)
            model = LitellmModel(config.model)
            context = make_context(config, system, task, backend, model)
            agent = Agent(model, sandbox, context, writer, config.agent,
                          command_timeout=config.sandbox.command_timeout_s, on_step=on_step, stop=stop, confirm=confirm)
            if restore:
                restore(agent)
            result = agent.run()
    except EnvironmentFailure as e:
        result = RunResult(status=e.status, message=str(e))
    except KeyboardInterrupt:  # a signal while the container was starting or being removed (the run's result kept)
        result = result or RunResult(status="interrupted", message="interrupted by signal")
        result.interrupt()
    except Exception as e:  # a bug outside the agent loop (set-up, sandbox): still a final status
        import traceback

        result = RunResult(status="error", message=f"internal error: {type(e).__name__}: {e}"[:300],
                           traceback=traceback.format_exc())
    write_record(writer, result, meta)
    return result, meta


def write_record(writer: RunWriter, result: RunResult, meta: dict[str, Any]) -> None:
    """Close the trajectory, write patch.diff and the final meta.json, with signals held: a second
    Ctrl-C here must not leave meta.json `running`; one that comes before meta.json is written marks
    the run interrupted."""
    with signals_deferred(reraise=False) as received:
        writer.close()
        if result.traceback:
            (writer.run_dir / TRACEBACK).write_text(result.traceback)
            result.message += f" (traceback in {writer.run_dir / TRACEBACK})"
        writer.write_patch(result.patch)
        if received:
            result.interrupt()
        meta.update(status=result.status, message=result.message, ended=time.time(), totals=totals(result),
                    memory_jobs=result.memory.get("jobs", []), patch_notes=result.patch_notes)
        writer.write_meta(meta)


def fix(repo: UserRepo, issue: Issue, config: RunConfig, *, output: Path, branch: str | None = None,
        apply: bool = True, force: bool = False, on_step: Callable[[StepRecord], None] | None = None,
        on_start: Callable[[Path, str], None] | None = None, backend=None, confirm=None,
        include_untracked_secrets: bool = False) -> FixOutcome:
    """Run the agent on `issue` in a sandbox holding `repo`'s working tree; commit the patch on a branch."""
    branch = branch or default_branch(issue)
    if apply:
        repo.check_branch_name(branch)
        if repo.branch_exists(branch) and not force:
            raise UserError(f"branch {branch!r} already exists; pass --force to overwrite it or --branch NAME")
    LitellmModel(config.model).preflight()
    require_image(docker_client(), config.sandbox.image)
    backend, own_backend = load_memory_backend(config, backend)
    left_out = [] if include_untracked_secrets else repo.untracked_secrets()
    files = tar_files(repo.path, sorted(set(repo.working_files()) - set(left_out)))
    run_dir = new_run_dir(output, issue)
    if on_start:
        on_start(run_dir, config.sandbox.image)

    def prepare(sandbox: Sandbox) -> None:  # inside execute: a signal here still ends with meta.json final
        save_snapshot(run_dir, files)  # what `fix --resume` starts again from
        sandbox.copy_repo(files)

    try:
        result, meta = execute(issue.text, config, run_dir, prepare=prepare,
                               backend=backend, on_step=on_step, confirm=confirm,
                               meta={"repo": str(repo.path), "head": repo.head, "pid": os.getpid(), "branch_requested": branch,
                                     "left_out": left_out,
                                     "issue": {"title": issue.title, "number": issue.number, "url": issue.url, "text": issue.text}})
        outcome = FixOutcome(result=result, run_dir=run_dir, left_out=left_out)
        return commit_fix(repo, issue, outcome, meta, branch=branch, apply=apply, force=force)
    finally:  # after the commit: a signal while the backend stops finds the run and its branch recorded
        if own_backend:
            backend.close()


def commit_fix(repo: UserRepo | None, issue: Issue, outcome: FixOutcome, meta: dict[str, Any], *, branch: str,
               apply: bool, force: bool) -> FixOutcome:
    """Commit the run's patch on `branch` (when asked and not empty) and record the branch in meta.json."""
    result, run_dir = outcome.result, outcome.run_dir
    with signals_deferred(reraise=False) as received:  # a signal now must not leave a branch meta.json does not name
        if apply and result.patch.strip():
            message = f"comem: fix {issue.title or 'issue'}" + (f" (#{issue.number})" if issue.number else "")
            message += f"\n\nExit status: {result.status}. Run: {run_dir}"
            try:
                outcome.commit = repo.commit_patch(branch, result.patch, message, force=force, exclude=outcome.left_out)
                outcome.branch = branch
            except UserError as e:  # the user's tree moved on, another run took the branch...; patch.diff is kept
                outcome.apply_error = str(e)
        if received:
            result.interrupt()
            meta.update(status=result.status, message=result.message)
        meta.update(branch=outcome.branch, commit=outcome.commit, apply_error=outcome.apply_error)
        atomic_write_json(run_dir / META, meta)
    return outcome


def totals(result: RunResult) -> dict[str, Any]:
    steps = result.steps
    return {
        "steps": len(steps),
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cached_tokens": sum(s.cached_tokens for s in steps),
        "cache_saved": round(sum(s.cache_saved for s in steps), 6),
        "cost": round(result.cost, 6),
        "wall_s": round(result.wall_s, 3),
        "model_s": round(sum(s.model.seconds for s in steps), 3),
        "command_s": round(sum(s.command.seconds for s in steps if s.command), 3),
        "patch_lines": result.patch.count("\n"),
        **{k: v for k, v in result.memory.items() if k != "jobs"},
        # the agent's and the memory model's dollars (the latter where the main model wrote the summaries)
        "total_cost": round(result.cost + float(result.memory.get("memory_cost", 0.0)), 6),
    }
