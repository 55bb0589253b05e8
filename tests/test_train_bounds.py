"""`comem train-memory` on trajectories far longer than the model's context: every prompt is bounded
as the pipeline bounds its requests (task and replies cut, old steps dropped, counted), and
training runs to the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    from comem_cli.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)  # context 4096 tokens


def long_trajectory(path: Path, name: str, *, task_chars: int, observation_chars: int, steps: int = 6) -> None:
    messages = [{"role": "system", "content": "You are a shell agent."},
                {"role": "user", "content": "Fix the parser. " + "Stack trace line. " * (task_chars // 18)}]
    for i in range(steps):
        messages.append({"role": "assistant", "content": f"THOUGHT: look at part {i} " + "because " * (observation_chars // 8)
                         + f"\n\n```bash\ncat src/part{i}.py\n```"})
        messages.append({"role": "user", "content": f"def part{i}():\n    return {i}\n" * 10})
    (path / f"{name}.traj.json").write_text(json.dumps({"instance_id": name, "messages": messages, "info": {}}))


def test_train_memory_bounds_prompts_to_the_models_context(tiny_lm, tmp_path):
    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    long_trajectory(rollouts, "huge-task", task_chars=400_000, observation_chars=200)  # ~100k-token task
    long_trajectory(rollouts, "huge-steps", task_chars=200, observation_chars=60_000)  # each reply >> context
    long_trajectory(rollouts, "normal", task_chars=300, observation_chars=100, steps=8)
    out = tmp_path / "memory-model"
    r = run_cli("train-memory", "--rollouts", str(rollouts), "--base-model", str(tiny_lm), "--policy-model", str(tiny_lm),
                "--steps", "1", "--group-size", "2", "--max-summary-tokens", "16", "--max-history-tokens", "100000",
                "--eval-fraction", "0", "--threads", "1", "--output", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "internal error" not in r.stderr
    # Bounded to the tiny model's context (4096) minus the summary; the cuts are reported.
    line = next(x for x in r.stdout.splitlines() if "prompts bounded to" in x)
    assert "4,064 tokens" in line
    task_cut, capped, left_out = (int(n) for n in __import__("re").findall(r"(\d+) (?:samples with|with|left)", line))
    assert task_cut > 0 and left_out == 0  # a reply far longer than the window is cut, as the pipeline cuts it
    assert (out / "final" / "config.json").is_file()


def test_max_prompt_tokens_flag_and_dry_run(tmp_path):
    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    long_trajectory(rollouts, "huge-task", task_chars=400_000, observation_chars=200)
    r = run_cli("train-memory", "--rollouts", str(rollouts), "--dry-run", "--max-prompt-tokens", "2000")
    assert r.returncode == 0, r.stderr
    assert "prompts bounded to 2,000 tokens" in r.stdout
    r = run_cli("train-memory", "--rollouts", str(rollouts), "--dry-run", "--max-prompt-tokens", "10")
    assert r.returncode == 2 and "--max-prompt-tokens" in r.stderr


def test_train_memory_on_real_trajectories_with_default_bounds(tiny_lm, tmp_path):
    """The recorded mini-swe-agent runs, no history cap: the tiny model's context bounds every prompt."""
    from comem_cli.resources import bundled_trajectories

    rollouts = bundled_trajectories()
    out = tmp_path / "memory-model"
    r = run_cli("train-memory", "--rollouts", str(rollouts), "--base-model", str(tiny_lm), "--policy-model", str(tiny_lm),
                "--steps", "1", "--group-size", "2", "--max-summary-tokens", "16", "--max-history-tokens", "1000000",
                "--max-per-trajectory", "2", "--eval-fraction", "0", "--threads", "1", "--output", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "prompts bounded to 4,064 tokens" in r.stdout and (out / "final" / "config.json").is_file()
