"""Bad input through the real CLI: one clear line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import os

import pytest

from tests.conftest import git, run_cli
from tests.test_issues import FakeGitHub


def assert_clean_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


SCRIPTED = ["-m", "openai/scripted", "--api-base", "http://127.0.0.1:9/v1"]


def test_not_a_git_repo(tmp_path):
    (tmp_path / "issue.md").write_text("# bug\n")
    assert_clean_error(run_cli("fix", "-r", str(tmp_path), "-i", str(tmp_path / "issue.md"), *SCRIPTED), "not a git repository")


def test_missing_repo_path(tmp_path):
    assert_clean_error(run_cli("fix", "-r", str(tmp_path / "nope"), "-i", "1", *SCRIPTED), "does not exist")


def test_repo_without_commits(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "issue.md").write_text("# bug\n")
    assert_clean_error(run_cli("fix", "-r", str(tmp_path), "-i", str(tmp_path / "issue.md"), *SCRIPTED), "no commits")


def test_unreadable_issue_file(words_repo):
    bad = words_repo / "binary.md"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert_clean_error(run_cli("fix", "-r", str(words_repo), "-i", str(bad), *SCRIPTED), "cannot read issue file")
    assert_clean_error(run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "missing.md"), *SCRIPTED), "not a number")


def test_issue_number_without_remote(words_repo):
    assert_clean_error(run_cli("fix", "-r", str(words_repo), "-i", "7", *SCRIPTED), "no GitHub `origin` remote")


def test_unknown_issue_number_404(words_repo):
    git(words_repo, "remote", "add", "origin", "git@github.com:acme/words.git")
    with FakeGitHub({}) as gh:
        r = run_cli("fix", "-r", str(words_repo), "-i", "404", "--github-api", gh.url, *SCRIPTED)
    assert_clean_error(r, "issue #404 not found in acme/words", "GITHUB_TOKEN")


def test_empty_stdin(words_repo):
    assert_clean_error(run_cli("fix", "-r", str(words_repo), "-i", "-", *SCRIPTED, input=""), "no issue text")


@pytest.mark.docker
def test_docker_daemon_unreachable(words_repo):
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), *SCRIPTED,
                env={"DOCKER_HOST": "unix:///tmp/no-such-docker.sock"})
    assert_clean_error(r, "cannot reach the Docker daemon", "make docker")


@pytest.mark.docker
def test_image_missing(words_repo, docker_client):
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), *SCRIPTED, "--image", "comem-sandbox:does-not-exist")
    assert_clean_error(r, "not found", "comem sandbox build")


def test_unknown_model(words_repo):
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "nosuchprovider/some-model")
    assert_clean_error(r, "unknown model", "nosuchprovider/some-model")


def test_missing_api_key(words_repo):
    env = {k: "" for k in os.environ if k.endswith("_API_KEY")}
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "anthropic/claude-sonnet-4-5",
                env={**env, "ANTHROPIC_API_KEY": ""})
    assert_clean_error(r, "ANTHROPIC_API_KEY")


def test_branch_already_exists(words_repo):
    git(words_repo, "branch", "comem/taken")
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), *SCRIPTED, "--branch", "comem/taken")
    assert_clean_error(r, "already exists", "--force")


def test_invalid_flags(words_repo):
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), *SCRIPTED, "--memory", "everything")
    assert_clean_error(r, "Invalid value for '--memory': 'everything' is not one of 'full', 'mask'", "comem fix --help")
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), *SCRIPTED, "--max-steps", "0")
    assert_clean_error(r, "--max-steps", "greater than or equal to 1")
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), *SCRIPTED, "--no-such-flag")
    assert_clean_error(r, "No such option: --no-such-flag")


def test_bad_memory_engine(tmp_path):
    (tmp_path / "issue.md").write_text("# bug\n")
    r = run_cli("fix", "-r", str(tmp_path), "-i", str(tmp_path / "issue.md"), *SCRIPTED, "--memory-engine", "gpu")
    assert_clean_error(r, "Invalid value for '--memory-engine': 'gpu' is not one of 'separate', 'main'")
