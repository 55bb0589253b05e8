"""SIGINT / SIGTERM to a running `comem fix`: no container left, finished steps kept, status interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from comem_cli.testing.scripted_server import Script, ScriptedServer
from tests.conftest import comem_containers

pytestmark = pytest.mark.docker

SLOW_SCRIPT = [
    "THOUGHT: Look around.\n\n```bash\nls\n```",
    "THOUGHT: A long command.\n\n```bash\nsleep 60\n```",
    "THOUGHT: never reached\n\n```bash\necho COMEM_SUBMIT\n```",
]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_command_cleans_up(sig, words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Script(SLOW_SCRIPT)) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "comem_cli", "fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"),
             "-m", "openai/scripted", "--api-base", server.url, "-o", str(out), "--memory", "full"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        deadline = time.time() + 120
        # Wait until step 0 is on disk and the model has been asked for step 1 (the `sleep 60`).
        while time.time() < deadline and len(server.requests) < 2:
            time.sleep(0.2)
        assert len(server.requests) >= 2, "the run never reached its second step"
        time.sleep(1.5)  # let `sleep 60` start in the container
        run_dir = next(out.iterdir())
        assert comem_containers(docker_client, run_dir.name), "the sandbox should be running now"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    lines = (run_dir / "trajectory.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["action"] == "ls"
    assert comem_containers(docker_client, run_dir.name) == []
