"""Containers never leak and are never removed under a live run: a signal while the container starts,
and `comem sandbox prune` only taking containers whose owning process is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from comem_cli.config import SandboxConfig
from comem_cli.replay_server import Script, ScriptedServer
from comem_cli.sandbox import Sandbox, prune
from tests.conftest import FIX_SCRIPT, comem_containers, run_cli

pytestmark = pytest.mark.docker

LEFTOVER = """
import os, sys
from comem_cli.config import SandboxConfig
from comem_cli.sandbox import Sandbox
sb = Sandbox(SandboxConfig(), labels={"comem.run": sys.argv[1]})
sb.start()
print(sb.name, flush=True)
os.kill(os.getpid(), 9)  # killed: the container is left behind
"""


def leftover_of_a_killed_process(run_label: str) -> str:
    r = subprocess.run([sys.executable, "-c", LEFTOVER, run_label], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())})
    assert r.returncode == -signal.SIGKILL, r.stderr
    return r.stdout.strip()


# 9. A signal while the container is being created or started leaves no container behind.
@pytest.mark.stress
@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4, 0.8])
def test_signal_during_container_start_leaves_no_container(delay, words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Script(FIX_SCRIPT), latency_s=5) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "comem_cli", "fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"),
             "-m", "openai/scripted", "--api-base", server.url, "-o", str(out), "--memory", "full", "--no-apply"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline and "run dir" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    run_dir = out / line.split("run dir", 1)[1].strip().rsplit("/", 1)[-1]
    time.sleep(1.0)  # a create request still in the daemon's hands would show up by now
    assert comem_containers(docker_client, run_dir.name) == []
    if run_dir.exists():  # the signal may also come before the run dir is made
        assert json.loads((run_dir / "meta.json").read_text())["status"] == "interrupted"


# 10. prune removes only containers whose owner is gone; live runs are kept.
def test_prune_keeps_containers_of_live_runs(docker_client):
    dead = leftover_of_a_killed_process("test-prune-dead")
    live = Sandbox(SandboxConfig(), labels={"comem.run": "test-prune-live"})
    try:
        live.start()  # owned by this (live) test process
        r = run_cli("sandbox", "prune")
        assert r.returncode == 0, r.stderr
        assert dead in r.stdout and "removed" in r.stdout
        assert comem_containers(docker_client, "test-prune-dead") == []
        assert len(comem_containers(docker_client, "test-prune-live")) == 1
        assert live.name in r.stdout and "kept" in r.stdout
        # --all (here limited to this test's container) removes live ones too.
        removed, _ = prune(everything=True, labels=["comem.run=test-prune-live"])
        assert removed == [live.name] and comem_containers(docker_client, "test-prune-live") == []
    finally:
        live.close()


def test_prune_help_says_live_runs_are_kept():
    r = run_cli("sandbox", "prune", "--help")
    assert r.returncode == 0 and "--all" in r.stdout and "live" in r.stdout
