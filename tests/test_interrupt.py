"""SIGINT / SIGTERM to a running `comem fix`: no container left, finished steps kept, status interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from comem_cli.replay_server import Script, ScriptedServer
from tests.conftest import comem_containers

pytestmark = [pytest.mark.docker, pytest.mark.stress]

SLOW_SCRIPT = [
    "THOUGHT: Look around.\n\n```bash\nls\n```",
    "THOUGHT: A long command.\n\n```bash\nsleep 60\n```",
    "THOUGHT: never reached\n\n```bash\necho COMEM_SUBMIT\n```",
]


def sleeping_containers(client, out) -> list:
    """The run's containers in which `sleep 60` runs now."""
    runs = list(out.iterdir()) if out.exists() else []
    found = []
    for container in (comem_containers(client, runs[0].name) if runs else []):
        try:
            processes = container.top().get("Processes") or []
        except Exception:  # noqa: BLE001 - created, not yet running, or just removed
            continue
        if any("sleep 60" in " ".join(p) for p in processes):
            found.append(container)
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_command_cleans_up(sig, words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Script(SLOW_SCRIPT)) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "comem_cli", "fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"),
             "-m", "openai/scripted", "--api-base", server.url, "-o", str(out), "--memory", "full"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        # Wait for the event itself: `sleep 60` (step 1) running in the run's container.
        assert server.wait_for_requests(2, 120), "the run never reached its second step"
        deadline = time.time() + 120
        while time.time() < deadline and not sleeping_containers(docker_client, out):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        (run_dir,) = list(out.iterdir())
        assert sleeping_containers(docker_client, out), "the sandbox should be running `sleep 60` now"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    lines = (run_dir / "trajectory.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["action"] == "ls"
    assert comem_containers(docker_client, run_dir.name) == []
