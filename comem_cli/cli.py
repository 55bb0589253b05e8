"""The `comem` command line (Typer). Thin: parse flags into config objects, call one function, print.

Heavy modules (litellm, docker, torch, vllm) are imported inside the commands, so `comem --help`
starts fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from comem_cli.config import (DEFAULT_ARM, DEFAULT_SUMMARY_CAP, AgentConfig, Arm, Backend, LargeFiles, MemoryEngine, SandboxConfig, default_of,
                              memory_default)
from comem_cli import options as opt
from comem_cli.errors import UserError
from comem_cli.signals import default_on_signals, interrupt_on_signals
from comem_cli.train.settings import train_choices, train_default

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="comem: a coding agent whose prompt stays short while a small memory model summarizes in the background.")
sandbox_app = typer.Typer(no_args_is_help=True, help="Build or clean up the Docker sandbox.")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(__import__("comem_cli.bench.cli_bench", fromlist=["bench_app"]).bench_app, name="bench")

EXIT_CODES = {"submitted": 0, "interrupted": 130}


@app.command()
def fix(
    ctx: typer.Context,
    issue: Optional[str] = typer.Option(None, "--issue", "-i", help="GitHub issue number, issue URL, a text/markdown file, or - for stdin (required unless --resume).", rich_help_panel="Run"),
    repo: Path = typer.Option(Path("."), "--repo", "-r", help="The git repository to fix (its working tree is copied into the sandbox).", rich_help_panel="Run"),
    model: Optional[str] = opt.MODEL,
    api_base: Optional[str] = opt.API_BASE,
    image: str = typer.Option(None, "--image", help="Sandbox Docker image (default: comem-sandbox:latest).", rich_help_panel="Sandbox"),
    max_steps: int = opt.MAX_STEPS,
    cost_limit: float = opt.COST_LIMIT,
    timeout: int = opt.TIMEOUT,
    time_limit: float = typer.Option(default_of(AgentConfig, "time_limit_s"), "--time-limit", min=1.0, help="Wall-clock limit of the whole run in seconds.", rich_help_panel="Run"),
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Where run directories are written.", rich_help_panel="Output"),
    branch: Optional[str] = typer.Option(None, "--branch", "-b", help="Branch for the fix (default: comem/issue-<n> or a slug).", rich_help_panel="Output"),
    apply: bool = typer.Option(True, "--apply/--no-apply", help="Commit the patch on a new branch (never touches your current branch).", rich_help_panel="Output"),
    force: bool = typer.Option(False, "--force", help="Overwrite the branch if it exists.", rich_help_panel="Output"),
    network: bool = typer.Option(False, "--network/--no-network", help="Give the sandbox network access (off by default).", rich_help_panel="Sandbox"),
    github_api: Optional[str] = typer.Option(None, "--github-api", envvar="COMEM_GITHUB_API", help="GitHub API base (GitHub Enterprise: https://HOST/api/v3).", rich_help_panel="Run"),
    memory: Arm = typer.Option(DEFAULT_ARM, "--memory", help="Context arm (docs/design.md).", rich_help_panel="Memory"),
    k: int = opt.K,
    every: Optional[int] = opt.EVERY,
    launch_tokens: int = opt.LAUNCH_TOKENS,
    raw_budget: int = opt.RAW_BUDGET,
    memory_backend: Backend = opt.MEMORY_BACKEND,
    memory_model: Optional[str] = opt.MEMORY_MODEL,
    memory_api_base: Optional[str] = opt.MEMORY_API_BASE,
    memory_timeout: float = opt.MEMORY_TIMEOUT,
    memory_engine: MemoryEngine = typer.Option(memory_default("memory_engine"), "--memory-engine", help="main: the memory model is served by the main model's own server (summaries launched only when they spare it more work than they cost).", rich_help_panel="Memory"),
    max_summary_tokens: int = typer.Option(DEFAULT_SUMMARY_CAP, "--max-summary-tokens", min=16, help="Hard cap on a summary's length (a longer one is rejected when it lands).", rich_help_panel="Memory"),
    memory_context: Optional[int] = opt.MEMORY_CONTEXT,
    summary_sections: int = opt.SUMMARY_SECTIONS,
    summary_check: bool = typer.Option(memory_default("check"), "--summary-check/--no-summary-check", help="Check each summary when it lands against the steps the agent took meanwhile: reject one without its headings, over its cap or not shorter than what it covers; add the facts it misses (docs/memory-quality.md).", rich_help_panel="Memory"),
    prewarm: bool = opt.PREWARM,
    confirm: bool = typer.Option(False, "--confirm", help="Ask before each command: run, edit, reply to the model instead, automatic for the rest, or quit.", rich_help_panel="Run"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="One line per step, without the commands' output (--confirm shows it anyway).", rich_help_panel="Output"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted or killed run from its run dir (model, API base and limits may be given anew).", rich_help_panel="Run"),
    pr: bool = typer.Option(False, "--pr", help="Push the branch and open a pull request (GitHub REST API, GITHUB_TOKEN).", rich_help_panel="Output"),
    remote: str = typer.Option("origin", "--remote", help="With --pr: the git remote to push the branch to.", rich_help_panel="Output"),
    include_untracked_secrets: bool = typer.Option(False, "--include-untracked-secrets", help="Also copy untracked files that look like secrets (.env*, *.pem, id_rsa*, *credentials*, ...); left out by default.", rich_help_panel="Sandbox"),
    large_files: LargeFiles = typer.Option(default_of(SandboxConfig, "large_files"), "--large-files", help="Binary or large (> 1 MB) files in the patch: warn (keep and list them), refuse (leave them out).", rich_help_panel="Sandbox"),
):
    """Fix an issue: run the agent in a Docker sandbox and commit its patch on a new branch."""
    from comem_cli.config import DEFAULT_IMAGE, DEFAULT_MODEL, MemoryConfig, ModelConfig, RunConfig
    from comem_cli.issues import resolve_issue
    from comem_cli.repo import UserRepo
    from comem_cli.run import fix as run_fix
    from comem_cli.ui import console, err_console, print_step, run_table

    config = RunConfig(
        model=ModelConfig(name=model or DEFAULT_MODEL, api_base=api_base),
        sandbox=SandboxConfig(image=image or DEFAULT_IMAGE, network=network, command_timeout_s=timeout, large_files=large_files),
        agent=AgentConfig(max_steps=max_steps, cost_limit=cost_limit, time_limit_s=time_limit),
        memory=MemoryConfig(arm=memory, k=k, every=every, launch_tokens=launch_tokens, raw_budget=raw_budget, backend=memory_backend,
                            model=memory_model, api_base=memory_api_base, timeout_s=memory_timeout,
                            max_summary_tokens=max_summary_tokens, sections=summary_sections, prewarm=prewarm, context=memory_context,
                            check=summary_check,
                            memory_engine=memory_engine),
    )
    confirmer = None
    if confirm:
        from comem_cli.confirm import Confirmer, require_terminal

        require_terminal()
        confirmer = Confirmer(console)
    if pr and not apply:
        raise UserError("--pr opens a pull request from the fix branch; it cannot go with --no-apply")
    recorded = None
    if resume is not None:  # the recorded run's issue, repository and config (a few options may change)
        from comem_cli.resume import read_recorded, recorded_issue, resume_overrides, resumed_config

        given = {name for name in ctx.params if ctx.get_parameter_source(name).name in ("COMMANDLINE", "ENVIRONMENT")}
        recorded = read_recorded(resume)
        config = resumed_config(recorded.meta, resume_overrides(given, ctx.params))
        user_repo = UserRepo(repo if "repo" in given else recorded.meta.get("repo") or repo) if apply else None
        the_issue = recorded_issue(recorded.meta)
    elif issue is None:
        raise UserError("--issue is required (or --resume RUN_DIR to continue a run)")
    else:
        user_repo = UserRepo(repo)
        the_issue = resolve_issue(issue, origin_url=user_repo.origin_url(), api_base=github_api)
    pr_target = None
    if pr:
        from comem_cli.pullrequest import plan

        pr_target = plan(user_repo, remote, github_api)
    def on_start(run_dir: Path, image_name: str) -> None:
        from rich.markup import escape

        from comem_cli.ui import plain

        console.print(f"[bold]comem fix[/bold] {escape(plain(repr(the_issue.title[:70])))} · model {escape(config.model.name)} · "
                      f"memory {config.memory.arm} · sandbox {escape(image_name)}\n[dim]run dir {escape(str(run_dir))}[/dim]")

    def show_step(step) -> None:  # a reviewer always sees what each command printed
        print_step(step, quiet=quiet and not confirm)

    if recorded is not None:
        from comem_cli.resume import resume as run_resume

        outcome = run_resume(recorded, config, user_repo, the_issue, branch=branch, apply=apply, force=force,
                             on_step=show_step, on_start=on_start, confirm=confirmer,
                             report=lambda text: console.print(text, style="dim", markup=False, soft_wrap=True),
                             warn=lambda text: err_console.print(text, style="yellow", markup=False, soft_wrap=True))
    else:
        outcome = run_fix(user_repo, the_issue, config, output=output, branch=branch, apply=apply, force=force,
                          on_step=show_step, on_start=on_start, confirm=confirmer,
                          include_untracked_secrets=include_untracked_secrets)
    console.print(run_table(outcome))
    if pr_target is not None and outcome.branch:
        from comem_cli.pullrequest import open_pull_request

        url = open_pull_request(user_repo, pr_target, the_issue, outcome, force=force)
        console.print(f"pull request: {url}", markup=False, soft_wrap=True)
    elif pr_target is not None:
        err_console.print("no pull request: the run made no branch (empty patch or the patch did not apply)", markup=False, soft_wrap=True)
    if outcome.apply_error:  # the agent may have submitted, but there is no fix on a branch: not a success
        raise typer.Exit(1)
    raise typer.Exit(EXIT_CODES.get(outcome.result.status, 1))


@app.command()
def report(
    path: Path = typer.Argument(..., help="A run dir, a bench output dir, or a train-memory output dir."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="HTML file (default: PATH/report.html); the PNG goes beside it."),
):
    """Write an HTML page and a PNG: timelines of model calls, commands, memory jobs and waits; curves."""
    from comem_cli.report import write_report
    from comem_cli.ui import console

    html_path, png_path = write_report(path, output)
    console.print(f"wrote {html_path} and {png_path}")


@app.command("train-memory")
def train_memory(
    rollouts: Optional[list[Path]] = typer.Option(None, "--rollouts", help="comem run/bench dirs or other agents' trajectories (mini-swe-agent .traj.json, maybe .gz); repeatable. (default: the bundled sample of 32 real runs)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=f"Checkpoints, final/, train_report.json, reward_curve.png. (default: {train_default('output')})"),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Model to start from: hub id, local directory, or smollm2 (SmolLM2-135M-Instruct, offline)."),
    policy_model: Optional[str] = typer.Option(None, "--policy-model", help="Frozen policy for --reward action: litellm name or local model directory."),
    policy_api_base: Optional[str] = typer.Option(None, "--policy-api-base"),
    reward: Optional[str] = typer.Option(None, "--reward", metavar="[" + "|".join(train_choices("reward")) + "]", help="GRPO reward: action (the policy acts on the summary as it did on the full history) | recall (the facts the agent used later, as comem bench memory scores them; no model) (default: action with --policy-model, else recall)."),
    stage: Optional[str] = typer.Option(None, "--stage", metavar="[" + "|".join(train_choices("stage")) + "]", help="Run one stage only (default: sft when --teacher is given or the runs recorded summaries, then grpo)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="SFT warm-up summaries: extractive (written by rules from the steps, no model) or a litellm model."),
    teacher_api_base: Optional[str] = typer.Option(None, "--teacher-api-base"),
    k: Optional[int] = typer.Option(None, "--k", help=f"Train with lags j = 1..k (as the pipeline infers). (default: {train_default('k')})"),
    only_resolved: Optional[bool] = typer.Option(None, "--only-resolved/--all-runs", help=f"Only runs whose evaluation says resolved. (default: {'--only-resolved' if train_default('only_resolved') else '--all-runs'})"),
    group_size: Optional[int] = typer.Option(None, "--group-size", help=f"GRPO: summaries drawn per prompt, compared within the group. (default: {train_default('group_size')})"),
    lr: Optional[float] = typer.Option(None, "--lr", help=f"GRPO learning rate. (default: {train_default('lr')})"),
    kl: Optional[float] = typer.Option(None, "--kl", help=f"GRPO: weight of the KL to the starting model. (default: {train_default('kl')})"),
    max_summary_tokens: Optional[int] = typer.Option(None, "--max-summary-tokens", help=f"Most tokens of a summary, in training as in comem fix. (default: {train_default('max_summary_tokens')})"),
    steps: Optional[int] = typer.Option(None, "--steps", help=f"GRPO steps (and SFT steps unless --sft-steps). (default: {train_default('steps')})"),
    sft_steps: Optional[int] = typer.Option(None, "--sft-steps", help="SFT warm-up steps (default: --steps)."),
    sft_lr: Optional[float] = typer.Option(None, "--sft-lr", help="SFT learning rate (default: --lr, at least 1e-5)."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full", help=f"LoRA adapters (merged into final/) or full fine-tuning. (default: {'--lora' if train_default('lora') else '--full'})"),
    save_every: Optional[int] = typer.Option(None, "--save-every", help=f"Save a checkpoint every this many steps. (default: {train_default('save_every')})"),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help=f"Continue from the last checkpoint under --output. (default: {'--resume' if train_default('resume') else '--no-resume'})"),
    max_history_tokens: Optional[int] = typer.Option(None, "--max-history-tokens", help=f"Cap the memory model's input (oldest steps dropped). (default: {train_default('max_history_tokens')})"),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", help="Bound every memory-model prompt (task cut, oldest steps dropped, too-long samples left out) (default: the base model's context minus --max-summary-tokens)."),
    max_per_trajectory: Optional[int] = typer.Option(None, "--max-per-trajectory", help="Keep a random subset of each run's samples (default: all)."),
    eval_fraction: Optional[float] = typer.Option(None, "--eval-fraction", help=f"Share of the rollouts' tasks held out (never trained on) when no --eval-trajectories are given, 0 to 0.9. (default: {train_default('eval_fraction')})"),
    eval_trajectories: Optional[list[Path]] = typer.Option(None, "--eval-trajectories", help="Held-out runs for the evaluation (their tasks are never trained on); repeatable (default: the --eval-fraction split)."),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help=f"Summaries per model in the held-out evaluation (comem bench memory on the base model and each checkpoint; 0: none). (default: {train_default('eval_samples')})"),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Random seed: samples drawn, the held-out split, training. (default: {train_default('seed')})"),
    dry_run: Optional[bool] = typer.Option(None, "--dry-run/--no-dry-run", help=f"Print sample statistics and stop. (default: {'--dry-run' if train_default('dry_run') else '--no-dry-run'})"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (small models on a busy CPU run faster with 1) (default: torch's)."),
):
    """Train the memory model on recorded runs: SFT warm-up, then GRPO (reward: the policy acts as it did with full history, or the recall of the facts used later), evaluated before and after on held-out runs."""
    given = dict(locals())  # the options; None: not given, TrainSettings' default holds
    from comem_cli.train.cli_train import train_memory_command
    from comem_cli.train.settings import train_settings

    raise typer.Exit(train_memory_command(train_settings(given)))


@sandbox_app.command("build")
def sandbox_build(force: bool = typer.Option(False, "--force", help="Rebuild even if the images exist.")):
    """Build the sandbox images locally (debootstrap base + sandbox/Dockerfile; no registry needed)."""
    import subprocess

    from comem_cli.resources import resource_dir
    from comem_cli.sandbox import docker_client

    docker_client()
    env = {**os.environ, "FORCE": "1" if force else "0"}
    rc = subprocess.call(["bash", str(resource_dir("sandbox") / "build.sh")], env=env)
    if rc:
        raise UserError(f"sandbox image build failed (exit {rc}); see the messages above")


@sandbox_app.command("prune")
def sandbox_prune(
    all_: bool = typer.Option(False, "--all", help="Remove every comem container, also those of runs still going (or started on another host)."),
):
    """Remove leftover comem containers: those whose owning comem process is gone (pid and host are
    recorded in the container's labels). Containers of live runs are kept unless --all."""
    from comem_cli.sandbox import prune
    from comem_cli.ui import console

    removed, kept = prune(everything=all_)
    console.print(f"removed {len(removed)} container(s)" + (": " + ", ".join(removed) if removed else ""))
    if kept:
        console.print(f"kept {len(kept)} container(s) of live runs (or of another host; --all removes them): {', '.join(kept)}")


@app.command()
def demo(
    workdir: Path = typer.Option(Path("comem-demo"), "--dir", help="Where to create the example repository."),
    output: Path = typer.Option(Path("runs"), "--output", "-o"),
    real_memory: bool = typer.Option(False, "--real-memory", help="Summarize with SmolLM2-135M on this CPU instead of the replayed memory model."),
):
    """Fix a bundled example repository with a RECORDED REPLAY of the main model (no API key needed)."""
    from comem_cli.demo import run_demo

    raise typer.Exit(run_demo(workdir, output, real_memory))


def main() -> None:
    """Every command (fix, bench, ...) ends an interrupt signal the same way: cleaned up, then
    "comem: interrupted" and exit 130. Typer turns a KeyboardInterrupt that leaves a command into a
    silent exit 130, and an interrupted run's command exits 130 itself: both get the message here."""
    try:  # typer carries its own copy of click (typer._click); older releases use click itself
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover
        from click import exceptions as click

    interrupt_on_signals()
    try:
        code = app(prog_name="comem", standalone_mode=False)  # returns the exit status; raises what it would print
    except click.NoArgsIsHelpError as e:  # `comem bench`: its help, as asked for
        print(e.ctx.get_help() if e.ctx else e.format_message())
        sys.exit(e.exit_code)
    except click.ClickException as e:  # a bad flag or value: one line, exit 2
        where = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) is not None else ""
        message = " ".join(e.format_message().replace("Value error, ", "").split())
        print(f"comem: error: {message}{where}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:  # end of input at a prompt
        print("comem: aborted", file=sys.stderr)
        sys.exit(1)
    except SystemExit as e:
        _exit(e.code)
    except UserError as e:
        print(f"comem: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a signal before typer ran the command
        _exit(EXIT_CODES["interrupted"])
    except Exception as e:  # a bug: one line for the user, the traceback in a file for the report
        log = _write_traceback()
        where = f"traceback in {log}" if log else "no traceback file could be written"
        first = " ".join(str(e).split())[:300]
        print(f"comem: internal error: {type(e).__name__}: {first} ({where})", file=sys.stderr)
        sys.exit(1)
    _exit(code if isinstance(code, int) else 0)


def _exit(code) -> NoReturn:
    """Exit with `code`; an interrupt's (130) says so first, with the signals' default actions back."""
    if code == EXIT_CODES["interrupted"]:
        default_on_signals()
        print("comem: interrupted", file=sys.stderr)
    sys.exit(code)


def _write_traceback() -> Path | None:
    """The current exception's traceback in a per-user cache file of its own (never a shared /tmp path)."""
    import time
    import traceback

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "comem" / "errors"
    try:
        base.mkdir(parents=True, exist_ok=True)
        log = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        log.write_text(traceback.format_exc())
        return log
    except OSError:
        return None


if __name__ == "__main__":
    main()
