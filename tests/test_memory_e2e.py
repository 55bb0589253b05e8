"""A real memory model inside a real `comem fix` run: a tiny causal LM built by the test (random
weights, tokenizer trained on the fly, save_pretrained) through the transformers backend, in Docker."""

from __future__ import annotations

import pytest

from comem_cli.replay_server import Script, ScriptedServer
from comem_cli.rollouts import read_run
from tests.conftest import FIX_SCRIPT, comem_containers, git, run_cli

pytestmark = pytest.mark.docker

# A longer scripted session: a few look-arounds before the fix, so several summaries are made.
LONG_SCRIPT = [f"THOUGHT: Look around ({i}).\n\n```bash\nls -la && head -3 words.py\n```" for i in range(4)] + FIX_SCRIPT


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from comem_cli.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "memory-model", seed=0)


def test_fix_with_a_tiny_transformers_memory_model(words_repo, tmp_path, tiny_lm, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Script(LONG_SCRIPT)) as main:
        r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "openai/scripted",
                    "--api-base", main.url, "-o", str(out), "--memory", "sync", "--every", "2",
                    "--memory-backend", "transformers", "--memory-model", str(tiny_lm), "--max-summary-tokens", "48",
                    "--no-summary-check", timeout=600)  # random weights write no headings: the check would reject all
        requests = list(main.requests)
    assert r.returncode == 0, r.stdout + r.stderr
    (run_dir,) = list(out.iterdir())
    run = read_run(run_dir)
    totals = run.meta["totals"]
    assert run.meta["status"] == "submitted" and totals["arm"] == "sync" and totals["k"] == 0
    # The tiny model really ran: jobs were launched every 2 steps and summaries (random text, but
    # text) reached the main model's views (the blocking arm: comem would not wait for a memory model
    # this much slower than the scripted agent, and the run would end before a summary lands).
    assert totals["memory_jobs"] >= 3 and totals["summaries"] >= 1
    assert not any(totals["summary_checks"].values())  # --no-summary-check: none checked
    used = [s for s in run.steps if s.view.summary_cutoff is not None]
    assert used, "no view carried a summary"
    first = used[0]
    assert "<memory>" in requests[first.step]["messages"][2]["content"]
    assert first.view.raw_start == first.view.summary_cutoff and first.view.raw_end == first.step
    # The fix still lands on the branch.
    assert "text.split()" in git(words_repo, "show", "comem/count-words-miscounts:words.py")
    assert comem_containers(docker_client, run_dir.name) == []


def test_train_memory_cli_checkpoint_drives_a_fix_run(words_repo, tmp_path, tiny_lm, docker_client):
    """`comem train-memory` on its default rollouts, the real trajectories bundled with comem (tiny base
    and policy models, 2 GRPO steps), then the checkpoint it wrote is the memory model of a real `comem fix` run."""
    out = tmp_path / "memory-model"
    r = run_cli("train-memory", "--base-model", str(tiny_lm), "--policy-model", str(tiny_lm),
                "--steps", "2", "--group-size", "2", "--max-summary-tokens", "16", "--max-history-tokens", "400",
                "--max-per-trajectory", "1", "--output", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "read 32 trajectories" in r.stdout + r.stderr  # the bundled sample
    report = __import__("json").loads((out / "train_report.json").read_text())
    assert len(report["steps"]) == 2 and (out / "reward_curve.png").is_file()
    assert (out / "final" / "config.json").is_file()

    with ScriptedServer(Script(LONG_SCRIPT)) as main:
        r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "openai/scripted",
                    "--api-base", main.url, "-o", str(tmp_path / "runs"), "--no-apply", "--memory", "sync", "--every", "2",
                    "--memory-backend", "transformers", "--memory-model", str(out / "final"),
                    "--max-summary-tokens", "32", "--no-summary-check", timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (run_dir,) = list((tmp_path / "runs").iterdir())
    run = read_run(run_dir)
    assert run.meta["status"] == "submitted" and run.meta["config"]["memory"]["model"] == str(out / "final")
    assert run.meta["totals"]["memory_jobs"] >= 3 and run.meta["totals"]["summaries"] >= 1
    assert any(s.view.summary_cutoff is not None for s in run.steps)
