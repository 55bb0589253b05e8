"""Memory on every machine: with no memory flags and no local memory engine, the main model writes
the summaries through the same litellm path (one request per summary), and what they cost counts in
the run's totals and its --cost-limit. Real CLI, Docker, HTTP, git: one scripted server answers both
the agent's and the memory's requests."""

from __future__ import annotations

import json

import pytest

from comem_cli.replay_server import Script, ScriptedServer
from tests.conftest import FIX_SCRIPT, run_cli

pytestmark = pytest.mark.docker

SUMMARY = ("## Task\nFix count_words.\n## Files and code state\nwords.py splits on ' '.\n"
           "## Actions and outcomes\nRead words.py, ran the tests.\n## Tests\ntest_any_whitespace fails.\n"
           "## Open questions\nNone.")


class MainModel:
    """The main model: agent steps from FIX_SCRIPT, summaries when asked as the memory."""

    def __init__(self):
        self.agent = Script(FIX_SCRIPT)
        self.memory_requests = 0

    def __call__(self, body):
        if "You are the memory of a software engineering agent" in str(body["messages"][0].get("content")):
            self.memory_requests += 1
            return SUMMARY
        return self.agent(body)


def fix(repo, url, out, *flags):
    # openai/gpt-4o has a price in litellm's bundled map: the scripted server's usage costs dollars.
    return run_cli("fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/gpt-4o", "--api-base", url,
                   "-o", str(out), "--no-apply", "--memory", "comem", "--k", "1", "--every", "1", *flags)


def test_the_main_model_writes_the_summaries_and_pays_for_them(words_repo, tmp_path, docker_client):
    responder = MainModel()
    with ScriptedServer(responder) as server:
        r = fix(words_repo, server.url, tmp_path / "runs")
    assert r.returncode == 0, r.stdout + r.stderr
    (run_dir,) = list((tmp_path / "runs").iterdir())
    totals = json.loads((run_dir / "meta.json").read_text())["totals"]
    assert totals["memory_backend"] == "main" and totals["summaries"] >= 2 and totals["memory_failures"] == 0
    assert responder.memory_requests == totals["summaries"]  # one request a summary: no section requests
    assert totals["memory_cost"] > 0 and totals["memory_prompt_tokens"] > 0
    assert totals["total_cost"] == pytest.approx(totals["cost"] + totals["memory_cost"], abs=1e-6)
    assert "main model: " in r.stdout and "memory $" in r.stdout
    # A summary made by the main model reached the agent's view.
    steps = [json.loads(line) for line in (run_dir / "trajectory.jsonl").read_text().splitlines()]
    assert any(s["view"]["summary_cutoff"] is not None for s in steps)

    # The same run with a cost limit the agent alone stays under: the summaries' bill ends it.
    agent_cost = totals["cost"]
    with ScriptedServer(MainModel()) as server:
        r = fix(words_repo, server.url, tmp_path / "limited", "--cost-limit", f"{agent_cost:.6f}")
    (run_dir,) = list((tmp_path / "limited").iterdir())
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "cost_limit", (meta["status"], meta["message"], r.stdout)
    assert meta["totals"]["cost"] < agent_cost
