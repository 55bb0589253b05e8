"""`comem fix --confirm`: a person at a real pseudo-terminal (pexpect) runs, edits, replies, switches
to automatic, or quits; every decision is in the trajectory. Real CLI, Docker, HTTP models."""

from __future__ import annotations

import io
import json
import os
import sys

import pexpect
import pytest

from comem_cli.replay_server import Script, ScriptedServer, Sections
from comem_cli.rollouts import read_run
from tests.conftest import FIX_SCRIPT, REPO_ROOT, comem_containers, git, run_cli

pytestmark = pytest.mark.docker

ASK = r"\[q\]uit > "
# A command whose second half is concealed (ESC[8m) and a thought that clears the screen and sets the window title.
HIDDEN = "echo visible-part\x1b[8m; touch HIDDEN_CMD_RAN\x1b[0m"
DECEIVING_SCRIPT = ["THOUGHT: \x1b[2J\x1b]0;innocent title\x07Just listing files.\n\n```bash\n" + HIDDEN + "\n```",
                    "THOUGHT: Done.\n\n```bash\necho COMEM_SUBMIT\n```"]
SUMMARY = "## Task\nFix count_words.\n## Files and code state\nwords.py read.\n## Actions and outcomes\nLooked around.\n## Tests\nFailing."


def spawn(repo, out, main_url: str, *extra: str) -> pexpect.spawn:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": str(REPO_ROOT)}
    args = ["-m", "comem_cli", "fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/scripted",
            "--api-base", main_url, "-o", str(out), "--confirm", *extra]
    return pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=120, dimensions=(50, 200))


def test_run_edit_reply_and_auto_with_the_comem_memory_arm(words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    edited = "python3 -m unittest test_words 2>&1 | tail -1; echo edited-by-user"
    with ScriptedServer(Sections(SUMMARY)) as memory, ScriptedServer(Script(FIX_SCRIPT)) as main:
        child = spawn(words_repo, out, main.url, "--memory", "comem", "--k", "1", "--every", "1", "--memory-backend", "openai",
                      "--memory-model", "openai/memory", "--memory-api-base", memory.url)
        # Step 0: reply to the model instead of running `ls && cat words.py`.
        child.expect(r"step 0"), child.expect(r"\$ ls && cat words.py"), child.expect(ASK)
        child.sendline("m")
        child.expect("message to the model > ")
        child.sendline("No need to list files; run the tests.")
        # Step 1: edit the test command.
        child.expect(r"\$ python3 -m unittest -v test_words"), child.expect(ASK)
        child.sendline("e")
        child.expect(r"new command")
        child.sendline(edited)
        # Step 2: run the fix as proposed (a wrong key first: asked again).
        child.expect(r"\$ sed -i"), child.expect(ASK)
        child.sendline("x")
        child.expect("type r, e, m, a or q"), child.expect(ASK)
        child.sendline("r")
        # Step 3: automatic for the rest of the run.
        child.expect(ASK)
        child.sendline("a")
        child.expect("submitted")
        child.expect(pexpect.EOF)
        child.close()
        requests, memory_requests = list(main.requests), list(memory.requests)
    assert child.exitstatus == 0, child.before
    (run_dir,) = list(out.iterdir())
    run = read_run(run_dir)
    decisions = [s.decision["kind"] if s.decision else None for s in run.steps]
    assert decisions == ["reply", "edit", "run", "auto", None]
    s0, s1 = run.steps[0], run.steps[1]
    assert s0.command is None and s0.returncode is None and "run the tests" in s0.observation
    assert s0.decision["message"] == "No need to list files; run the tests."
    assert "No need to list files" in requests[1]["messages"][-1]["content"]  # the model read the reply
    assert s1.decision["original"].startswith("python3 -m unittest -v") and s1.action == edited
    assert "edited-by-user" in s1.observation and "FAILED" in s1.observation
    assert all(s.decision["answered"] >= s.decision["asked"] for s in run.steps[:4])
    # The memory pipeline ran alongside: summaries were asked for and made.
    assert memory_requests and run.meta["totals"]["summaries"] >= 1
    assert git(words_repo, "rev-parse", "--verify", "comem/count-words-miscounts").strip()
    assert comem_containers(docker_client, run_dir.name) == []


def test_quit_ends_the_run_interrupted_and_keeps_the_patch(words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Script(FIX_SCRIPT)) as main:
        child = spawn(words_repo, out, main.url, "--memory", "full", "--no-apply")
        for _ in range(3):  # steps 0-2 run (step 2 fixes the bug)
            child.expect(ASK)
            child.sendline("r")
        child.expect(ASK)
        child.sendline("q")
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 130, child.before
    (run_dir,) = list(out.iterdir())
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    run = read_run(run_dir)
    assert [s.decision["kind"] for s in run.steps] == ["run", "run", "run", "quit"]
    assert run.steps[3].command is None and "command was not run" in run.steps[3].observation
    assert "text.split()" in (run_dir / "patch.diff").read_text()
    assert comem_containers(docker_client, run_dir.name) == []

    # The quit run can be resumed: the three commands that ran are replayed, the quit one is not.
    with ScriptedServer(Script(FIX_SCRIPT)) as main:
        r = run_cli("fix", "--resume", str(run_dir), "--api-base", main.url, "--no-apply")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "replaying 3 recorded commands" in r.stdout and "warning" not in r.stderr
    run = read_run(run_dir)
    assert run.meta["status"] == "submitted" and [s.step for s in run.steps] == [0, 1, 2, 3, 4]
    assert comem_containers(docker_client, run_dir.name) == []


def test_confirm_without_a_terminal_is_a_one_line_error(words_repo, tmp_path):
    r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "openai/x",
                "--api-base", "http://127.0.0.1:9/v1", "-o", str(tmp_path / "runs"), "--confirm", input="")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--confirm needs a terminal" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_escape_sequences_cannot_hide_any_of_a_command_from_the_reviewer(words_repo, tmp_path, docker_client):
    """The terminal gets every control character of the thought, the command and its output written
    out (`\\x1b`), never the character itself: the reviewer reads the whole command that will run."""
    out, screen = tmp_path / "runs", io.StringIO()
    with ScriptedServer(Script(DECEIVING_SCRIPT)) as main:
        child = spawn(words_repo, out, main.url, "--memory", "full", "--no-apply")
        child.logfile_read = screen
        child.expect(ASK)
        asked = child.before
        child.sendline("r")
        child.expect(ASK)
        child.sendline("r")
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 0, screen.getvalue()
    assert r"$ echo visible-part\x1b[8m; touch HIDDEN_CMD_RAN\x1b[0m" in asked
    assert r"\x1b[2J\x1b]0;innocent title\x07Just listing files." in asked
    shown = screen.getvalue()
    step_line, output = shown.split("[q]uit > ")[1].split(r"touch HIDDEN_CMD_RAN\x1b[0m")  # after the run, before step 1
    assert r"echo visible-part\x1b[8m; " in step_line
    assert r"visible-part\x1b[8m" in output  # what echo printed (a raw ESC), written out too
    for raw in ("\x1b[8m", "\x1b[2J", "\x1b]0;", "\x07"):
        assert raw not in shown, repr(raw)
    (run_dir,) = list(out.iterdir())
    run = read_run(run_dir)
    assert run.steps[0].action == HIDDEN and "visible-part\x1b[8m" in run.steps[0].observation  # recorded as they are
