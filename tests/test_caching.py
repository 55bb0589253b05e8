"""Prompt caching users can see: cached tokens read from real provider usage (OpenAI and Anthropic
shapes, served by the scripted server over HTTP through litellm), priced as litellm prices cache
reads, shown per step and at the end, and plotted by `comem report`."""

from __future__ import annotations

import json
import re

import pytest

from comem_cli.replay_server import Script, ScriptedServer
from comem_cli.rollouts import read_run
from tests.conftest import FIX_SCRIPT, comem_containers, run_cli

pytestmark = pytest.mark.docker

# litellm's prices (bundled map): input and cache-read dollars per token.
PRICES = {"openai/gpt-4o": (2.5e-6, 1.25e-6), "anthropic/claude-sonnet-4-5": (3e-6, 3e-7)}


def run_fix(repo, out, model: str, api_base: str, env: dict | None = None):
    return run_cli("fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", model, "--api-base", api_base,
                   "-o", str(out), "--no-apply", "--memory", "full", env=env)


def check_cache_figures(run, r, model: str) -> None:
    steps = run.steps
    full, read = PRICES[model]
    assert steps[0].cached_tokens == 0
    for before, now in zip(steps, steps[1:]):
        # The `full` view only grows at its end: everything the previous call sent is a cache hit.
        assert now.cached_tokens == before.prompt_tokens > 0
        assert now.cache_saved == pytest.approx(now.cached_tokens * (full - read), rel=1e-6)
    cached, prompt = sum(s.cached_tokens for s in steps), sum(s.prompt_tokens for s in steps)
    saved = sum(s.cache_saved for s in steps)
    totals = run.meta["totals"]
    assert totals["cached_tokens"] == cached and totals["cache_saved"] == pytest.approx(saved, abs=1e-6)
    # Per step and in the end-of-run table.
    assert f"cached {100 * steps[1].cached_tokens / steps[1].prompt_tokens:.0f}%" in r.stdout
    assert f"{100 * cached / prompt:.0f}% of {prompt:,} prompt tokens cached, ${saved:.4f} saved" in r.stdout


def test_openai_style_cached_tokens_are_read_priced_and_shown(words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Script(FIX_SCRIPT)) as server:
        r = run_fix(words_repo, out, "openai/gpt-4o", server.url)
        requests = list(server.requests)
    assert r.returncode == 0, r.stdout + r.stderr
    (run_dir,) = list(out.iterdir())
    run = read_run(run_dir)
    check_cache_figures(run, r, "openai/gpt-4o")
    # OpenAI caches by itself: no cache_control markers are sent (plain string contents).
    assert all(isinstance(m["content"], str) for body in requests for m in body["messages"])
    assert comem_containers(docker_client, run_dir.name) == []

    # `comem report` plots cached vs uncached prompt tokens per step.
    rep = run_cli("report", str(run_dir))
    assert rep.returncode == 0, rep.stderr
    page = (run_dir / "report.html").read_text()
    assert "cached vs uncached prompt tokens per step" in page and ">prompt cache: full</text>" in page
    for name in ("cached", "uncached"):  # a bar per step in each stack, its tokens on hover
        bars = re.findall(rf'<g id="cache-0-{name}-(\d+)"><title>step \d+: ([\d,]+) {name} prompt tokens</title>', page)
        assert [int(i) for i, _ in bars] == list(range(len(run.steps))), name
    assert [int(n.replace(",", "")) for n in re.findall(r'<title>step \d+: ([\d,]+) cached prompt tokens', page)] == \
        [s.cached_tokens for s in run.steps]
    assert (run_dir / "report.png").stat().st_size > 1000


def test_anthropic_gets_cache_control_markers_and_cache_reads(words_repo, tmp_path, docker_client):
    """Anthropic caches only what is marked: comem marks the system prompt and the newest message."""
    out = tmp_path / "runs"
    model = "anthropic/claude-sonnet-4-5"
    with ScriptedServer(Script(FIX_SCRIPT)) as server:
        api_base = server.url.removesuffix("/v1")  # litellm adds /v1/messages
        r = run_fix(words_repo, out, model, api_base, env={"ANTHROPIC_API_KEY": "test-key"})
        requests = list(server.requests)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(requests) == len(FIX_SCRIPT)
    for body in requests:
        assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
        last = body["messages"][-1]["content"]
        assert isinstance(last, list) and last[-1]["cache_control"] == {"type": "ephemeral"}
        # Only the newest message carries a marker (Anthropic allows four breakpoints).
        assert sum(isinstance(m["content"], list) and "cache_control" in m["content"][-1] for m in body["messages"]) == 1
    (run_dir,) = list(out.iterdir())
    run = read_run(run_dir)
    check_cache_figures(run, r, model)
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "submitted"
