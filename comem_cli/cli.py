"""The `comem` command line (Typer). Thin: parse flags into config objects, call one function, print.

Heavy modules (litellm, docker, torch, vllm) are imported inside the commands, so `comem --help`
starts fast.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from comem_cli.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="comem: a coding agent whose prompt stays short while a small memory model summarizes in the background.")
sandbox_app = typer.Typer(no_args_is_help=True, help="Build or clean up the Docker sandbox.")
app.add_typer(sandbox_app, name="sandbox")

EXIT_CODES = {"submitted": 0, "interrupted": 130}


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


@app.command()
def fix(
    issue: str = typer.Option(..., "--issue", "-i", help="GitHub issue number, issue URL, a text/markdown file, or - for stdin."),
    repo: Path = typer.Option(Path("."), "--repo", "-r", help="The git repository to fix (its working tree is copied into the sandbox)."),
    model: str = typer.Option(None, "--model", "-m", envvar="COMEM_MODEL", help="Main model, a litellm name (e.g. anthropic/claude-sonnet-4-5, openai/<name>)."),
    api_base: Optional[str] = typer.Option(None, "--api-base", envvar="COMEM_API_BASE", help="Base URL of an OpenAI-compatible server for --model."),
    image: str = typer.Option(None, "--image", help="Sandbox Docker image [default: comem-sandbox:latest]."),
    max_steps: int = typer.Option(100, "--max-steps", min=1),
    cost_limit: float = typer.Option(3.0, "--cost-limit", min=0.0, help="Dollars; 0 for no limit. Unknown prices count as 0."),
    timeout: int = typer.Option(120, "--timeout", min=1, help="Per-command timeout in seconds."),
    time_limit: float = typer.Option(3600.0, "--time-limit", min=1.0, help="Wall-clock limit of the whole run in seconds."),
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Where run directories are written."),
    branch: Optional[str] = typer.Option(None, "--branch", "-b", help="Branch for the fix [default: comem/issue-<n> or a slug]."),
    apply: bool = typer.Option(True, "--apply/--no-apply", help="Commit the patch on a new branch (never touches your current branch)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the branch if it exists."),
    network: bool = typer.Option(False, "--network/--no-network", help="Give the sandbox network access (off by default)."),
    github_api: Optional[str] = typer.Option(None, "--github-api", envvar="COMEM_GITHUB_API", help="GitHub API base (GitHub Enterprise: https://HOST/api/v3)."),
    memory: str = typer.Option("comem", "--memory", help="Context arm: full | mask | sync | comem."),
    k: int = typer.Option(2, "--k", min=0, help="comem: steps a summary may lag behind (0 = synchronous)."),
    every: Optional[int] = typer.Option(None, "--every", min=1, help="Launch a summary every N steps [default: k, or 1 when k=0]."),
    raw_budget: int = typer.Option(12000, "--raw-budget", min=256, help="Most tokens of verbatim recent steps in a view."),
    memory_backend: str = typer.Option("auto", "--memory-backend", help="auto | vllm | openai | transformers."),
    memory_model: Optional[str] = typer.Option(None, "--memory-model", envvar="COMEM_MEMORY_MODEL", help="Memory model: hub id, local directory, or openai/<name> with --memory-api-base."),
    memory_api_base: Optional[str] = typer.Option(None, "--memory-api-base", envvar="COMEM_MEMORY_API_BASE", help="Base URL of an OpenAI-compatible server for the memory model."),
    memory_timeout: float = typer.Option(300.0, "--memory-timeout", min=0.1, help="Give up on a summary after this many seconds (the run goes on)."),
    max_summary_tokens: int = typer.Option(2048, "--max-summary-tokens", min=16, help="Hard cap on a summary's length."),
    prewarm: bool = typer.Option(False, "--prewarm/--no-prewarm", help="After each summary, send the next swapped prompt with max_tokens=1 (for prefix-caching servers)."),
):
    """Fix an issue: run the agent in a Docker sandbox and commit its patch on a new branch."""
    from comem_cli.config import DEFAULT_IMAGE, DEFAULT_MODEL, AgentConfig, MemoryConfig, ModelConfig, RunConfig, SandboxConfig
    from comem_cli.issues import resolve_issue
    from comem_cli.repo import UserRepo
    from comem_cli.run import fix as run_fix
    from comem_cli.ui import console, print_step, run_table

    if memory not in ("full", "mask", "sync", "comem"):
        raise UserError(f"--memory must be one of full, mask, sync, comem (got {memory!r})")
    if memory_backend not in ("auto", "vllm", "openai", "transformers"):
        raise UserError(f"--memory-backend must be one of auto, vllm, openai, transformers (got {memory_backend!r})")
    config = RunConfig(
        model=ModelConfig(name=model or DEFAULT_MODEL, api_base=api_base),
        sandbox=SandboxConfig(image=image or DEFAULT_IMAGE, network=network, command_timeout_s=timeout),
        agent=AgentConfig(max_steps=max_steps, cost_limit=cost_limit, time_limit_s=time_limit),
        memory=MemoryConfig(arm=memory, k=k, every=every, raw_budget=raw_budget, backend=memory_backend,
                            model=memory_model, api_base=memory_api_base, timeout_s=memory_timeout,
                            max_summary_tokens=max_summary_tokens, prewarm=prewarm),
    )
    user_repo = UserRepo(repo)
    the_issue = resolve_issue(issue, origin_url=user_repo.origin_url(), api_base=github_api)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    def on_start(run_dir: Path, image_name: str) -> None:
        console.print(f"[bold]comem fix[/bold] {the_issue.title[:70]!r} · model {config.model.name} · "
                      f"memory {config.memory.arm} · sandbox {image_name}\n[dim]run dir {run_dir}[/dim]")

    outcome = run_fix(user_repo, the_issue, config, output=output, branch=branch, apply=apply, force=force,
                      on_step=print_step, on_start=on_start)
    console.print(run_table(outcome))
    raise typer.Exit(EXIT_CODES.get(outcome.result.status, 1))


@app.command()
def bench(
    name: str = typer.Argument(..., help="swe-mini | swebench-verified | swebench-lite | latency"),
    model: str = typer.Option(None, "--model", "-m", envvar="COMEM_MODEL", help="Main model (litellm name)."),
    api_base: Optional[str] = typer.Option(None, "--api-base", envvar="COMEM_API_BASE"),
    memory: str = typer.Option("comem", "--memory", help="Arm(s), comma-separated: full,mask,sync,comem (run on the same instances)."),
    k: str = typer.Option("2", "--k", help="Lag k >= 0 (latency: a comma list, e.g. 1,2,4)."),
    every: Optional[int] = typer.Option(None, "--every", min=1),
    raw_budget: int = typer.Option(12000, "--raw-budget", min=256),
    memory_backend: str = typer.Option("auto", "--memory-backend"),
    memory_model: Optional[str] = typer.Option(None, "--memory-model", envvar="COMEM_MEMORY_MODEL"),
    memory_api_base: Optional[str] = typer.Option(None, "--memory-api-base", envvar="COMEM_MEMORY_API_BASE"),
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Instances run in parallel (one container each)."),
    instances: Optional[str] = typer.Option(None, "--instances", help="Comma-separated instance ids."),
    filter: Optional[str] = typer.Option(None, "--filter", help="Regex on instance ids."),
    slice_: Optional[str] = typer.Option(None, "--slice", help="A:B over the (filtered) instance list."),
    output: Path = typer.Option(Path("bench-runs"), "--output", "-o"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Sub-folder of --output [default: the benchmark name]; rerun with the same one to resume."),
    redo_existing: bool = typer.Option(False, "--redo-existing", help="Run finished instances again."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate"),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Instances from a json/jsonl/parquet file (SWE-bench schema)."),
    image_template: Optional[str] = typer.Option(None, "--image-template", help="Instance image, e.g. 'myreg/sweb.eval.{id_docker}:latest'."),
    export_dataset: Optional[Path] = typer.Option(None, "--export-dataset", help="Write the selected instances as JSONL and stop."),
    evaluate_only: Optional[Path] = typer.Option(None, "--evaluate-only", help="Evaluate an existing predictions file (SWE-bench format) and stop."),
    executor: str = typer.Option("threads", "--executor", help="threads | ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address [default: start a local one]."),
    max_steps: int = typer.Option(100, "--max-steps", min=1),
    cost_limit: float = typer.Option(3.0, "--cost-limit", min=0.0),
    timeout: int = typer.Option(120, "--timeout", min=1),
    trajectories: Optional[list[Path]] = typer.Option(None, "--trajectories", help="latency: recorded runs to replay (comem run folders, mini-swe-agent *.traj.json, or folders of them); repeatable."),
    serving: str = typer.Option("model", "--serving", help="latency: model (cost model, virtual time) | local (tiny real models) | endpoint (real servers) | vllm (start vLLM engines)."),
    concurrency: str = typer.Option("1,8,32,128", "--concurrency", help="latency: concurrent runs sharing the servers, comma-separated."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="latency: also write the rows to this JSON file."),
    prewarm: Optional[bool] = typer.Option(None, "--prewarm/--no-prewarm", help="Pre-warm the main model's cache with each swapped prompt (latency: default rows with and without)."),
    command_s: float = typer.Option(1.0, "--command-s", min=0.0, help="latency: seconds per command when the recording has no timings."),
    summary_tokens: int = typer.Option(1024, "--summary-tokens", min=1, help="latency: tokens the memory model writes per summary."),
    cost_param: Optional[list[str]] = typer.Option(None, "--cost-param", help="latency: cost-model override NAME=VALUE (main.NAME, memory.NAME or NAME for both); repeatable."),
    calibrate: bool = typer.Option(False, "--calibrate", help="latency: check the cost model against the paper's GLM-4.7 figures (exit 1 if a ratio is off by > 25%)."),
    # issue 12: real vLLM engines (comem_cli/serving)
    main_arch: Optional[str] = typer.Option(None, "--main-arch", help="latency --serving vllm: main model: tiny | qwen3-0.6b | qwen3-1.7b | qwen3-4b | qwen3-8b (random weights, built once) | a model dir | an HF id [default: tiny]."),
    memory_arch: Optional[str] = typer.Option(None, "--memory-arch", help="latency --serving vllm: memory model, as --main-arch [default: tiny]."),
    calibrate_engine: bool = typer.Option(False, "--calibrate-engine", help="latency --serving vllm: fit the cost model to the engines, save it (--cost-params FILE), and print predicted vs measured."),
    cost_params: Optional[Path] = typer.Option(None, "--cost-params", help="latency: cost-model parameters from this JSON file (with --calibrate-engine: where the fit is written)."),
):
    """Run a benchmark, evaluate it, and compare memory arms side by side (`latency`: replay recorded runs and time the arms)."""
    from comem_cli.bench.cli_bench import bench_command

    if name != "latency":
        try:
            k = int(k)
        except ValueError:
            raise UserError(f"--k takes one integer >= 0 (got {k!r}; a comma list only with `comem bench latency`)") from None
        if k < 0:
            raise UserError(f"--k must be >= 0 (got {k})")
    raise typer.Exit(bench_command(**locals()))


@app.command()
def report(
    path: Path = typer.Argument(..., help="A run dir, a bench output dir, or a train-memory output dir."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="HTML file [default: PATH/report.html]; the PNG goes beside it."),
):
    """Write an HTML page and a PNG: timelines of model calls, commands, memory jobs and waits; curves."""
    from comem_cli.report import write_report
    from comem_cli.ui import console

    html_path, png_path = write_report(path, output)
    console.print(f"wrote {html_path} and {png_path}")


@app.command("train-memory")
def train_memory(
    rollouts: list[Path] = typer.Option(..., "--rollouts", help="comem run/bench dirs or other agents' trajectories (mini-swe-agent .traj.json); repeatable."),
    output: Path = typer.Option(Path("memory-model"), "--output", "-o", help="Checkpoints, final/, train_report.json, reward_curve.png."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Model to start from: hub id or local directory."),
    policy_model: Optional[str] = typer.Option(None, "--policy-model", help="Frozen policy for the reward: litellm name or local model directory."),
    policy_api_base: Optional[str] = typer.Option(None, "--policy-api-base"),
    stage: Optional[str] = typer.Option(None, "--stage", help="sft | grpo [default: sft when --teacher is given, then grpo]."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="litellm model writing warm-up summaries for SFT."),
    teacher_api_base: Optional[str] = typer.Option(None, "--teacher-api-base"),
    k: int = typer.Option(2, "--k", min=1, help="Train with lags j = 1..k (as the pipeline infers)."),
    only_resolved: bool = typer.Option(False, "--only-resolved", help="Only runs whose evaluation says resolved."),
    group_size: int = typer.Option(16, "--group-size", min=2),
    lr: float = typer.Option(1e-6, "--lr"),
    kl: float = typer.Option(0.01, "--kl"),
    max_summary_tokens: int = typer.Option(2048, "--max-summary-tokens", min=8),
    steps: int = typer.Option(100, "--steps", min=1),
    lora: bool = typer.Option(False, "--lora/--full", help="LoRA adapters (merged into final/) or full fine-tuning."),
    save_every: int = typer.Option(50, "--save-every", min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint under --output."),
    max_history_tokens: Optional[int] = typer.Option(16000, "--max-history-tokens", help="Cap the memory model's input (oldest steps dropped)."),
    max_per_trajectory: Optional[int] = typer.Option(None, "--max-per-trajectory", help="Keep a random subset of each run's samples."),
    eval_fraction: float = typer.Option(0.2, "--eval-fraction", min=0.0, max=0.9),
    seed: int = typer.Option(0, "--seed"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print sample statistics and stop."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (small models on a busy CPU run faster with 1)."),
):
    """Train the memory model on recorded runs (reward: the policy acts as it did with full history)."""
    from comem_cli.train.cli_train import train_memory_command

    raise typer.Exit(train_memory_command(dict(locals())))


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
def sandbox_prune():
    """Remove leftover comem containers (found by their label)."""
    from comem_cli.sandbox import prune
    from comem_cli.ui import console

    removed = prune()
    console.print(f"removed {len(removed)} container(s)" + (": " + ", ".join(removed) if removed else ""))


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
    try:
        app()
    except UserError as e:
        print(f"comem: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("comem: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug: one line for the user, the traceback in a file for the report
        import tempfile
        import traceback

        log = Path(tempfile.gettempdir()) / "comem-last-error.log"
        log.write_text(traceback.format_exc())
        print(f"comem: internal error: {type(e).__name__}: {e} (traceback in {log})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
