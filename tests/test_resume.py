"""`comem fix --resume RUN_DIR`: a run killed with SIGKILL continues in a fresh sandbox (same snapshot,
commands replayed and checked, summaries restored) and appends to the same trajectory; bad run
dirs are one-line errors. Real CLI, Docker, git, HTTP models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from comem_cli.replay_server import Script, ScriptedServer, Sections
from comem_cli.rollouts import TRAJECTORY, read_run
from tests.conftest import FIX_SCRIPT, comem_containers, git, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.stress]

# Step 1 prints something new every time it runs: its replay must be reported as the first difference.
SCRIPT = [FIX_SCRIPT[0], "THOUGHT: A random token.\n\n```bash\ncat /proc/sys/kernel/random/uuid\n```", *FIX_SCRIPT[2:]]
SUMMARY = "## Task\nFix count_words.\n## Files and code state\nwords.py uses split(' ').\n## Actions and outcomes\nRead the code.\n## Tests\nFailing."
# sync: every view waits for the summary of all steps before it, so summaries are on disk by step 1 whatever the load
MEMORY = ("--memory", "sync", "--every", "1", "--memory-backend", "openai", "--memory-model", "openai/memory")


def one_line_error(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def kill_after(repo: Path, out: Path, main: ScriptedServer, memory_url: str) -> Path:
    """Start `comem fix` against `main` (made with hang_from=N), SIGKILL it once its model call N
    hangs: steps 0 to N-1 are on disk then (a step is written before the next call). Returns the
    run dir."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "comem_cli", "fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/scripted",
         "--api-base", main.url, "-o", str(out), *MEMORY, "--memory-api-base", memory_url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    try:
        if not main.hanging.wait(150):  # an event set by the server, not a poll of the run dir
            pytest.fail(f"the run never reached model call {main.hang_from} (exit status {proc.poll()})")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run_dir,) = list(out.iterdir())
    return run_dir


def test_sigkilled_run_resumes_where_it_died(words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Sections(SUMMARY)) as memory:
        # The fourth model call never answers (set before the run starts): the run cannot finish
        # before it is killed, whatever the machine's load.
        with ScriptedServer(Script(SCRIPT), hang_from=3, hang_s=120.0) as slow:
            run_dir = kill_after(words_repo, out, slow, memory.url)
        before = read_run(run_dir)
        assert before.meta["status"] == "running" and len(before.steps) == 3
        killed_at = len(before.steps)
        recorded_lines = (run_dir / TRAJECTORY).read_text().splitlines()
        with (run_dir / TRAJECTORY).open("a") as f:  # as if it died in the middle of writing a step
            f.write('{"step": %d, "view": {"summary_cutoff": nu' % killed_at)
        # The user's tree changes meanwhile: the resumed sandbox still starts from the run's snapshot
        # (else the replayed `ls` of step 0 would print one more file).
        (words_repo / "LATE.md").write_text("written after the run started\n")

        with ScriptedServer(Script(SCRIPT)) as main:  # a new server: the API base may change on resume
            r = run_cli("fix", "--resume", str(run_dir), "--api-base", main.url, "--memory-api-base", memory.url)
            requests = list(main.requests)
    leftovers = comem_containers(docker_client, run_dir.name)
    for container in leftovers:  # only if the resume failed to remove the killed run's container
        container.remove(force=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert leftovers == []
    assert "dropped a truncated last line" in r.stderr
    warnings = [line for line in r.stderr.splitlines() if "replay" in line]
    assert len(warnings) == 1 and "step 1 " in warnings[0], r.stderr

    after = read_run(run_dir)
    assert after.skipped_lines == 0
    assert [s.step for s in after.steps] == list(range(len(SCRIPT)))
    assert (run_dir / TRAJECTORY).read_text().splitlines()[:killed_at] == recorded_lines[:killed_at]
    # The replayed `sed` rebuilt the state: the tests the model runs next pass in the new sandbox.
    assert "OK" in after.steps[3].observation
    assert after.meta["status"] == "submitted"
    (resumed,) = after.meta["resumes"]
    assert resumed["from_step"] == killed_at and resumed["replay_first_difference"] == 1
    # The model continued at the next step, and its first view carried a recorded summary.
    assert len(requests) == len(SCRIPT) - killed_at
    recorded = {e["summary"] for s in before.steps for e in s.memory if e.get("kind") == "job" and e.get("summary")}
    first = "\n".join(m["content"] for m in requests[0]["messages"])
    assert recorded and any(summary in first for summary in recorded) and "Summary of steps 0 to" in first
    # The branch is made from the snapshot + the patch, and it fixes the bug.
    diff = git(words_repo, "diff", "HEAD", "comem/count-words-miscounts", "--", "words.py")
    assert "+    return len(text.split())" in diff


def test_bad_run_dirs_are_one_line_errors(words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Script(FIX_SCRIPT)) as main:
        r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "openai/scripted",
                    "--api-base", main.url, "-o", str(out), "--memory", "full", "--no-apply", "--max-steps", "3")
    (finished,) = list(out.iterdir())
    assert json.loads((finished / "meta.json").read_text())["status"] == "step_limit"

    def variant(name: str, meta_change: dict, trajectory=None) -> Path:
        path = tmp_path / name
        shutil.copytree(finished, path)
        meta = json.loads((path / "meta.json").read_text())
        (path / "meta.json").write_text(json.dumps({**meta, **meta_change}))
        if trajectory is not None:
            (path / TRAJECTORY).write_text(trajectory(path / TRAJECTORY))
        return path

    lines = (finished / TRAJECTORY).read_text().splitlines(keepends=True)
    cases = {
        finished: "already finished with status 'step_limit'",
        variant("old", {"status": "interrupted", "comem_version": "0.0.1"}): "written by comem 0.0.1",
        variant("corrupt", {"status": "interrupted"}, lambda p: lines[0] + "{not json\n" + "".join(lines[2:])): f"{TRAJECTORY} line 2 is corrupt",
        tmp_path / "missing": "not a directory",
        words_repo: "not a comem run directory",
    }
    for run_dir, expected in cases.items():
        r = run_cli("fix", "--resume", str(run_dir))
        assert r.returncode == 2, (run_dir, r.stdout, r.stderr)
        assert expected in one_line_error(r), r.stderr
    r = run_cli("fix", "--resume", str(variant("given", {"status": "interrupted"})), "--memory", "sync")
    assert r.returncode == 2 and "drop --memory" in one_line_error(r)
    # A run whose comem process is still alive is not resumed behind its back.
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "comem", "fix"])
    try:
        r = run_cli("fix", "--resume", str(variant("live", {"status": "running", "pid": alive.pid})))
    finally:
        alive.kill()
        alive.wait()
    assert r.returncode == 2 and f"still going (process {alive.pid})" in one_line_error(r)
    assert comem_containers(docker_client, finished.name) == []
