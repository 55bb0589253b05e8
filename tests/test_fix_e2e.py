"""`comem fix` end to end: real CLI, real litellm -> real HTTP scripted model, real Docker, real git."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from comem_cli.replay_server import Script, ScriptedServer
from comem_cli.rollouts import read_run
from tests.conftest import FIX_SCRIPT, comem_containers, git, run_cli

pytestmark = pytest.mark.docker


def repo_tests_pass(repo: Path, rev: str, tmp_path: Path) -> bool:
    """Check out `rev` in a separate worktree and run the repo's own tests there."""
    wt = tmp_path / f"wt-{rev.replace('/', '-')}"
    git(repo, "worktree", "add", "-q", "--detach", str(wt), rev)
    try:
        return subprocess.run([sys.executable, "-m", "unittest", "-q", "test_words"], cwd=wt, capture_output=True).returncode == 0
    finally:
        git(repo, "worktree", "remove", "--force", str(wt))


def test_fix_produces_a_branch_that_fixes_the_bug(words_repo, tmp_path, docker_client):
    head_before = git(words_repo, "rev-parse", "HEAD")
    status_before = git(words_repo, "status", "--porcelain")
    files_before = {p: p.read_bytes() for p in words_repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    out = tmp_path / "runs"
    with ScriptedServer(Script(FIX_SCRIPT)) as server:
        r = run_cli("fix", "--repo", str(words_repo), "--issue", str(words_repo / "ISSUE.md"), "--model", "openai/scripted",
                    "--api-base", server.url, "--output", str(out), "--memory", "full")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted" in r.stdout and "comem/count-words-miscounts" in r.stdout

    # The branch fixes the bug: the repo's own tests fail on main and pass on the branch.
    assert not repo_tests_pass(words_repo, "main", tmp_path)
    assert repo_tests_pass(words_repo, "comem/count-words-miscounts", tmp_path)
    diff = git(words_repo, "diff", "main", "comem/count-words-miscounts", "--", "words.py")
    assert '-    return len(text.split(" "))' in diff and "+    return len(text.split())" in diff
    # The snapshot commit carries the uncommitted (untracked, not ignored) files the agent saw.
    branch_files = git(words_repo, "ls-tree", "-r", "--name-only", "comem/count-words-miscounts").split()
    assert "NOTES.md" in branch_files and "ignored.txt" not in branch_files

    # The user's checkout is untouched: HEAD, branch, status and file contents.
    assert git(words_repo, "rev-parse", "HEAD") == head_before
    assert git(words_repo, "branch", "--show-current").strip() == "main"
    assert git(words_repo, "status", "--porcelain") == status_before
    assert {p: p.read_bytes() for p in words_repo.rglob("*") if p.is_file() and ".git" not in p.parts} == files_before

    # The trajectory has every step, with timings; meta.json has the totals; patch.diff is the diff.
    (run_dir,) = list(out.iterdir())
    run = read_run(run_dir)
    assert [s.step for s in run.steps] == list(range(len(FIX_SCRIPT)))
    assert run.skipped_lines == 0
    for s in run.steps:
        assert s.model.end >= s.model.start > 0 and s.command and s.command.end >= s.command.start >= s.model.end
        assert s.prompt_tokens > 0 and s.view.n_messages == 2 + 2 * s.step
    assert run.steps[1].returncode == 0 and "FAILED" in run.steps[1].observation
    assert "OK" in run.steps[3].observation
    assert run.meta["status"] == "submitted" and run.meta["totals"]["steps"] == len(FIX_SCRIPT)
    assert run.meta["branch"] == "comem/count-words-miscounts"
    assert "text.split()" in (run_dir / "patch.diff").read_text()
    assert run.meta["prompts"]["task"].count("count_words") >= 1

    # Not a container left behind.
    assert comem_containers(docker_client, run_dir.name) == []


def test_no_apply_keeps_the_repo_without_new_branches(words_repo, tmp_path, docker_client):
    with ScriptedServer(Script(FIX_SCRIPT)) as server:
        r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "openai/scripted",
                    "--api-base", server.url, "-o", str(tmp_path / "runs"), "--no-apply", "--memory", "full")
    assert r.returncode == 0, r.stderr
    assert git(words_repo, "branch", "--list").split() == ["*", "main"]
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert "text.split()" in (run_dir / "patch.diff").read_text()


def test_limits_and_errors_end_runs_with_their_status(words_repo, tmp_path, docker_client):
    """Step limit, format errors, context overflow, a transient 500 (retried): each ends cleanly."""
    cases = {
        "step_limit": (dict(replies=FIX_SCRIPT), ["--max-steps", "2"], {}),
        "format_error": (dict(replies=["no block", "still none", "```bash\na\n```\n```bash\nb\n```"]), [], {}),
        "context_overflow": (dict(replies=FIX_SCRIPT), [], dict(max_context=400)),
        "submitted": (dict(replies=FIX_SCRIPT[-1:]), [], dict(fail_first=[500])),
        "time_limit": (dict(replies=FIX_SCRIPT), ["--time-limit", "1"], dict(latency_s=0.6)),
        # A model litellm knows the price of (served by the scripted server): the cost adds up.
        "cost_limit": (dict(replies=FIX_SCRIPT, model="openai/gpt-4o"), ["--cost-limit", "0.001"], {}),
    }
    for expected, (script, flags, server_opts) in cases.items():
        out = tmp_path / f"runs-{expected}"
        with ScriptedServer(Script(script["replies"]), **server_opts) as server:
            r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", script.get("model", "openai/scripted"),
                        "--api-base", server.url, "-o", str(out), "--no-apply", "--memory", "full", *flags)
        (run_dir,) = list(out.iterdir())
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["status"] == expected, (expected, r.stdout, r.stderr)
        assert r.returncode == (0 if expected == "submitted" else 1)
        assert "Traceback" not in r.stderr
        assert comem_containers(docker_client, run_dir.name) == []
    cost_run = read_run(next((tmp_path / "runs-cost_limit").iterdir()))
    assert 0 < len(cost_run.steps) < len(FIX_SCRIPT) and cost_run.meta["totals"]["cost"] >= 0.001
    # The format-error run recorded three steps with the error and no action.
    steps = read_run(next((tmp_path / "runs-format_error").iterdir())).steps
    assert [s.format_error is not None for s in steps] == [True, True, True]
