"""Signals at the edges of a run, sent for real to the real CLI (real Docker, HTTP and git).

SIGHUP (terminal closed, SSH dropped) and SIGQUIT end a run as SIGTERM does; a second Ctrl-C while
the patch is being taken, or a signal while the branch is being written, leaves the run recorded
whole (meta.json final, patch.diff, the branch named in meta.json), the table printed, and
"comem: interrupted" with exit 130; `comem bench` ends on SIGHUP as on Ctrl-C.

Every signal is sent when the run is known to be at the point under test: the scripted model
server's `hanging` event, or a git hook / sandbox command that waits at a gate the test opens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from comem_cli.replay_server import SUBMIT_REPLY, Script, ScriptedServer
from tests.conftest import comem_containers, git
from tests.gates import Gate, install_waiting_hook
from tests.test_faults import finished_run

pytestmark = [pytest.mark.docker, pytest.mark.stress]

FIX_IT = "THOUGHT: Fix it.\n\n```bash\nsed -i 's/text.split(\" \")/text.split()/' words.py\n```"

# Step 0 fixes the bug and puts a `git` in front of the real one that, the first time comem runs it
# (taking the patch), says so through the FIFO /tmp/held and waits for the test to write /tmp/go.
HOLD_GIT = (
    "THOUGHT: Fix it.\n\n```bash\n"
    "sed -i 's/text.split(\" \")/text.split()/' words.py && mkfifo /tmp/held /tmp/go && "
    "printf '%s\\n' '#!/bin/sh' "
    "'if mkdir /tmp/hold-once 2>/dev/null; then echo held > /tmp/held; cat /tmp/go > /dev/null; fi' "
    "'exec /usr/bin/git \"$@\"' > /usr/local/bin/git && chmod +x /usr/local/bin/git\n```"
)


def popen_comem(*args: str, hangup: bool = False) -> subprocess.Popen:
    """The real `comem` in a subprocess; with `hangup`, SIGHUP as a terminal session has it (a harness
    under `nohup` would pass it on ignored, and comem rightly keeps an ignored SIGHUP ignored)."""
    return subprocess.Popen([sys.executable, "-m", "comem_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                            preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)) if hangup else None)


def popen_fix(repo, url: str, out, *flags: str, hangup: bool = False) -> subprocess.Popen:
    return popen_comem("fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/scripted", "--api-base", url,
                       "-o", str(out), "--memory", "full", *flags, hangup=hangup)


def steps_in_table(stdout: str) -> int:
    """The step count of the table `comem fix` prints at the end."""
    match = re.search(r"steps\s*│\s*(\d+)", stdout)
    assert match, stdout
    return int(match[1])


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT], ids=["SIGHUP", "SIGQUIT"])
def test_hangup_and_quit_end_the_run_as_interrupted(sig, words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Script([FIX_IT]), hang_from=1, hang_s=120.0) as server:
        proc = popen_fix(words_repo, server.url, out, "--no-apply", hangup=True)
        assert server.hanging.wait(120), "the run never reached its second model call"
        proc.send_signal(sig)  # the run is inside its second model call now
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "comem: interrupted" in stderr and "Traceback" not in stderr, stderr
    run_dir, meta = finished_run(out, docker_client)
    assert meta["status"] == "interrupted"
    assert "text.split()" in (run_dir / "patch.diff").read_text()
    assert steps_in_table(stdout) == 1


def test_second_ctrl_c_while_the_patch_is_taken_keeps_it(words_repo, tmp_path, docker_client):
    import docker

    out = tmp_path / "runs"
    with ScriptedServer(Script([HOLD_GIT]), hang_from=1, hang_s=120.0) as server:
        proc = popen_fix(words_repo, server.url, out, "--no-apply")
        assert server.hanging.wait(120), "the run never reached its second model call"
        (run_dir,) = list(out.iterdir())
        (container,) = comem_containers(docker_client, run_dir.name)
        proc.send_signal(signal.SIGINT)  # the first Ctrl-C: the run ends and comem takes the patch
        held = container.exec_run(["timeout", "120", "cat", "/tmp/held"])
        assert held.output.strip() == b"held", "comem never started taking the patch"
        proc.send_signal(signal.SIGINT)  # the second Ctrl-C, while comem's git waits
        try:
            container.exec_run(["timeout", "120", "sh", "-c", "echo go > /tmp/go"])
        except docker.errors.APIError:
            pass  # comem did not wait for its patch and removed the container
        stdout, stderr = proc.communicate(timeout=180)
    run_dir, meta = finished_run(out, docker_client)
    assert meta["status"] == "interrupted" and meta["totals"]["steps"] == 1
    patch = (run_dir / "patch.diff").read_text()
    assert "-    return len(text.split(\" \"))" in patch and "+    return len(text.split())" in patch
    assert steps_in_table(stdout) == 1
    assert proc.returncode == 130, stdout + stderr
    assert "comem: interrupted" in stderr and "Traceback" not in stderr, stderr


def test_signal_while_the_branch_is_written_records_the_branch(words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with Gate() as gate, ScriptedServer(Script([FIX_IT, SUBMIT_REPLY])) as server:
        # git runs this hook inside `update-ref`, the ref locked and not yet moved: it waits for the test there.
        install_waiting_hook(words_repo, gate, "reference-transaction", when='sys.argv[1] == "prepared"')
        proc = popen_fix(words_repo, server.url, out, "--branch", "fix/held")
        assert gate.wait_for(1, 300), "comem never wrote its branch"
        proc.send_signal(signal.SIGTERM)
        gate.open()
        stdout, stderr = proc.communicate(timeout=120)
    _, meta = finished_run(out, docker_client)
    assert meta.get("branch") == "fix/held" and meta["commit"] == git(words_repo, "rev-parse", "fix/held").strip()
    assert meta["status"] == "interrupted" and "submitted" in meta["message"]
    assert "fix/held" in stdout  # the table, with the branch
    assert proc.returncode == 130, stdout + stderr
    assert "comem: interrupted" in stderr and "Traceback" not in stderr, stderr


def test_bench_ends_on_hangup_as_on_ctrl_c(tmp_path, docker_client):
    from comem_cli.bench.swe_mini import build_swe_mini_images, load_swe_mini

    build_swe_mini_images()
    instance = load_swe_mini()[0]["instance_id"]
    out = tmp_path / "bench"
    look = "THOUGHT: Look.\n\n```bash\nls\n```"
    with ScriptedServer(Script([look]), hang_from=0, hang_s=20.0) as server:
        proc = popen_comem("bench", "swe-mini", "--instances", instance, "--memory", "full", "--no-evaluate",
                           "-m", "openai/scripted", "--api-base", server.url, "-o", str(out), hangup=True)
        assert server.hanging.wait(300), "the benchmark never reached a model call"
        proc.send_signal(signal.SIGHUP)
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "comem: interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    meta = json.loads(next(out.rglob("meta.json")).read_text())
    assert meta["status"] == "interrupted"
    assert not docker_client.containers.list(all=True, filters={"label": f"comem.bench={out.resolve()}"})
