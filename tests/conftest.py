"""Shared fixtures: real git repositories, a real scripted model server, the real CLI, real Docker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from comem_cli.resources import bundled_trajectories

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real recorded runs bundled with comem (gzipped): 32 mini-swe-agent runs with their SWE-bench reports.
TRAJECTORIES = bundled_trajectories()
MINI = TRAJECTORIES / "mini-swe-agent"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


WORDS_BUGGY = textwrap.dedent('''\
    """Word statistics."""


    def count_words(text):
        """Number of words in `text`, words being separated by any whitespace."""
        return len(text.split(" "))
''')

WORDS_TEST = textwrap.dedent('''\
    import unittest

    from words import count_words


    class CountWordsTest(unittest.TestCase):
        def test_spaces(self):
            self.assertEqual(count_words("a b c"), 3)

        def test_any_whitespace(self):
            self.assertEqual(count_words("one  two"), 2)


    if __name__ == "__main__":
        unittest.main()
''')

# The scripted main model: inspect, run the failing tests, fix, re-run, submit.
FIX_SCRIPT = [
    "THOUGHT: Look at the code.\n\n```bash\nls && cat words.py\n```",
    "THOUGHT: Run the tests first.\n\n```bash\npython3 -m unittest -v test_words 2>&1 | tail -5\n```",
    "THOUGHT: split(\" \") breaks on runs of whitespace; split() is right.\n\n```bash\nsed -i 's/text.split(\" \")/text.split()/' words.py && cat words.py\n```",
    "THOUGHT: Re-run the tests.\n\n```bash\npython3 -m unittest -v test_words 2>&1 | tail -3\n```",
    "THOUGHT: Done.\n\n```bash\necho COMEM_SUBMIT\n```",
]


@pytest.fixture
def words_repo(tmp_path: Path) -> Path:
    """A tiny git repo with a genuine bug, a failing test, and one committed + one uncommitted file."""
    repo = tmp_path / "words-repo"
    repo.mkdir()
    (repo / "words.py").write_text(WORDS_BUGGY)
    (repo / "test_words.py").write_text(WORDS_TEST)
    (repo / ".gitignore").write_text("ignored.txt\n__pycache__/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test User")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    (repo / "NOTES.md").write_text("untracked but not ignored\n")
    (repo / "ignored.txt").write_text("never copied\n")
    (repo / "ISSUE.md").write_text("# count_words miscounts\n\ncount_words('a  b') returns 3; words are separated by any whitespace.\n")
    return repo


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: int = 300, cwd: Path | None = None):
    """The real `comem` command line, in a subprocess."""
    full_env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})}
    return subprocess.run([sys.executable, "-m", "comem_cli", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session")
def docker_client():
    """The real Docker daemon; CI starts it (scripts/docker.sh). Missing daemon = failure, not a skip."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
        client.images.get("comem-sandbox:latest")
    except Exception as e:  # pragma: no cover - environment problem
        pytest.fail(f"Docker daemon or comem-sandbox image unavailable ({e}); run `make setup`")
    return client


def comem_containers(client, run_name: str | None = None) -> list:
    label = "comem.sandbox" if run_name is None else f"comem.run={run_name}"
    return client.containers.list(all=True, filters={"label": label})
