"""What `comem fix` shows a person while it runs: each command's output under its step line (head and
tail, the elided line count, a non-zero exit), a summary swapped into the prompt as one line, and
`--quiet` for one line per step. Real CLI, Docker, HTTP models."""

from __future__ import annotations

import pytest

from comem_cli.replay_server import Script, ScriptedServer, Sections
from tests.conftest import run_cli

pytestmark = pytest.mark.docker

SCRIPT = [
    "THOUGHT: Count to forty.\n\n```bash\nseq 1 40\n```",
    "THOUGHT: Read the code.\n\n```bash\ncat words.py && false\n```",
    "THOUGHT: Done.\n\n```bash\necho COMEM_SUBMIT\n```",
]
SUMMARY = "## Task\nFix count_words.\n## Files and code state\nwords.py read.\n## Actions and outcomes\nCounted.\n## Tests\nNot run."


def fix(repo, tmp_path, *extra: str):
    """A `comem fix` run of SCRIPT with a summary after every step (the blocking arm: each swap is certain)."""
    with ScriptedServer(Sections(SUMMARY)) as memory, ScriptedServer(Script(SCRIPT)) as main:
        r = run_cli("fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/scripted", "--api-base", main.url,
                    "-o", str(tmp_path / "runs"), "--no-apply", "--memory", "sync", "--every", "1",
                    "--memory-backend", "openai", "--memory-model", "openai/memory", "--memory-api-base", memory.url,
                    "--summary-sections", "1", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_each_commands_output_is_shown_under_its_step_line(words_repo, tmp_path, docker_client):
    out = fix(words_repo, tmp_path)
    head, tail = "\n".join(f"    {i}" for i in range(1, 9)), "\n".join(f"    {i}" for i in range(33, 41))
    assert f"$ seq 1 40\n{head}\n    [... 24 lines elided ...]\n{tail}\n" in out
    assert "    9\n" not in out and "    32\n" not in out
    code = out[out.index("$ cat words.py && false"):]
    assert '\n    """Word statistics."""\n' in code and '\n        return len(text.split(" "))\n    (exit 1)\n' in code
    # The summaries swapped in, one line each, before the step whose prompt carried them first.
    first, second = out.index("memory: step 0 now a summary ("), out.index("memory: steps 0-1 now a summary (")
    assert out.index("$ seq 1 40") < first < out.index("$ cat words.py") < second < out.index("$ echo COMEM_SUBMIT")


def test_quiet_prints_one_line_per_step(words_repo, tmp_path, docker_client):
    out = fix(words_repo, tmp_path, "--quiet")
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(steps) == 3 and steps[0].endswith("$ seq 1 40") and "mem@1" in steps[1]
    assert "    1\n" not in out and "elided" not in out and "Word statistics" not in out and "memory: " not in out
