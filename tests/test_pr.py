"""`comem fix --pr`: the branch is pushed to a real (local, bare) repository and the pull request
is opened through the fake GitHub REST API; failures are one-line errors that keep the branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comem_cli.replay_server import Script, ScriptedServer
from tests.conftest import FIX_SCRIPT, comem_containers, git, run_cli
from tests.test_issues import FakeGitHub

pytestmark = pytest.mark.docker

ISSUE = {"title": "count_words miscounts", "body": "count_words('a  b') returns 3.",
         "html_url": "https://github.com/acme/words/issues/12"}
BRANCH = "comem/issue-12"


def with_origin(repo: Path, tmp_path: Path) -> Path:
    """origin's URL is GitHub's (the API is asked about acme/words); pushes go to a local bare repo."""
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(repo, "remote", "add", "origin", "https://github.com/acme/words.git")
    git(repo, "remote", "set-url", "--push", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    return bare


def fix_pr(repo: Path, tmp_path: Path, gh: FakeGitHub, env: dict, *extra: str):
    with ScriptedServer(Script(FIX_SCRIPT)) as server:
        return run_cli("fix", "-r", str(repo), "-i", "12", "-m", "openai/scripted", "--api-base", server.url,
                       "-o", str(tmp_path / "runs"), "--memory", "full", "--pr", "--github-api", gh.url, *extra, env=env)


def one_line_error(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_pr_is_pushed_and_opened_with_the_run_table(words_repo, tmp_path, docker_client):
    bare = with_origin(words_repo, tmp_path)
    with FakeGitHub({"acme/words/issues/12": ISSUE}) as gh:
        r = fix_pr(words_repo, tmp_path, gh, {"GITHUB_TOKEN": "tok-123"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pull request: https://github.com/acme/words/pull/7" in r.stdout
    # The branch on the remote is the local branch.
    local = git(words_repo, "rev-parse", BRANCH).strip()
    assert git(bare, "rev-parse", BRANCH).strip() == local
    (pull,) = gh.pulls
    assert pull["path"] == "/repos/acme/words/pulls"
    assert (pull["title"], pull["head"], pull["base"], pull["draft"]) == (ISSUE["title"], BRANCH, "main", False)
    body = pull["body"]
    assert body.startswith("Fixes #12")
    for row in ("| exit status | submitted |", f"| steps | {len(FIX_SCRIPT)} |", "| cost | $", "| wall time |",
                "| memory | full |", "| prompt cache |"):
        assert row in body, body
    assert gh.auth[-1] == "Bearer tok-123"
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "meta.json").read_text())["pull_request"] == "https://github.com/acme/words/pull/7"
    assert comem_containers(docker_client, run_dir.name) == []


def test_pr_without_token_fails_before_the_run(words_repo, tmp_path, monkeypatch):
    with_origin(words_repo, tmp_path)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    with FakeGitHub({"acme/words/issues/12": ISSUE}) as gh:
        r = fix_pr(words_repo, tmp_path, gh, {})
    assert r.returncode == 2
    assert "GITHUB_TOKEN" in one_line_error(r)
    assert not (tmp_path / "runs").exists()  # nothing ran
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "--pr", "--remote", "fork",
                env={"GITHUB_TOKEN": "tok"})
    assert r.returncode == 2 and "no remote 'fork'" in one_line_error(r)


def test_rejected_push_and_api_error_keep_the_local_branch(words_repo, tmp_path, docker_client):
    bare = with_origin(words_repo, tmp_path)
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'branch protection: pushes need review' >&2\nexit 1\n")
    hook.chmod(0o755)
    with FakeGitHub({"acme/words/issues/12": ISSUE}) as gh:
        r = fix_pr(words_repo, tmp_path / "a", gh, {"GITHUB_TOKEN": "tok"})
        assert r.returncode == 2, r.stdout + r.stderr
        line = one_line_error(r)
        assert "push" in line and "rejected" in line and "kept locally" in line
        assert "submitted" in r.stdout  # the run's table came first
        assert git(words_repo, "rev-parse", "--verify", BRANCH).strip()
        assert gh.pulls == []

        hook.unlink()
        gh.pull_answer = (422, {"message": "Validation Failed",
                                "errors": [{"message": f"A pull request already exists for acme:{BRANCH}."}]})
        r = fix_pr(words_repo, tmp_path / "b", gh, {"GITHUB_TOKEN": "tok"}, "--force")
    assert r.returncode == 2, r.stdout + r.stderr
    line = one_line_error(r)
    assert "HTTP 422" in line and "A pull request already exists" in line and "kept locally" in line
    assert git(bare, "rev-parse", BRANCH).strip() == git(words_repo, "rev-parse", BRANCH).strip()
