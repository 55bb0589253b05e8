"""Faults users meet every day, through the real CLI (real Docker, real HTTP, real git): each run ends
with a final status in meta.json, patch.diff written, the trajectory so far kept, no container left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comem_cli.replay_server import SUBMIT_REPLY, Script, ScriptedServer
from tests.conftest import FIX_SCRIPT, comem_containers, run_cli

pytestmark = pytest.mark.docker

LOOK = "THOUGHT: Look.\n\n```bash\nls -a\n```"


def fix(repo: Path, server: ScriptedServer, out: Path, *flags: str, **kwargs):
    return run_cli("fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/scripted", "--api-base", server.url,
                   "-o", str(out), "--memory", "full", *flags, **kwargs)


def finished_run(out: Path, docker_client) -> tuple[Path, dict]:
    """The single run dir under `out`, checked for what every run must leave: final meta, patch, no container."""
    (run_dir,) = list(out.iterdir())
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] != "running" and (run_dir / "patch.diff").is_file() and (run_dir / "trajectory.jsonl").is_file()
    assert comem_containers(docker_client, run_dir.name) == []
    return run_dir, meta


def popen_fix(repo: Path, url: str, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "comem_cli", "fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/scripted",
         "--api-base", url, "-o", str(out), "--memory", "full", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})


# 1. HTTP 400 / 401 / 404 and a reply that is not JSON: api_error with the provider's message, shortened.
@pytest.mark.parametrize("status", [400, 401, 404])
def test_http_errors_end_as_api_error_with_the_providers_message(status, words_repo, tmp_path, docker_client):
    message = "Incorrect API key provided: sk-abc***. You can find your API key at https://example.invalid/keys. " * 5
    with ScriptedServer(Script(FIX_SCRIPT), fail_always=status, error_message=message) as server:
        r = fix(words_repo, server, tmp_path / "runs", "--no-apply")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    _, meta = finished_run(tmp_path / "runs", docker_client)
    assert meta["status"] == "api_error"
    assert "Incorrect API key provided" in meta["message"] and len(meta["message"]) < 300
    assert "api_error" in r.stdout and "Incorrect API key" in r.stdout


def test_garbage_reply_is_an_api_error(words_repo, tmp_path, docker_client):
    with ScriptedServer(Script(FIX_SCRIPT), garbage_first=100) as server:
        r = fix(words_repo, server, tmp_path / "runs", "--no-apply", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    _, meta = finished_run(tmp_path / "runs", docker_client)
    assert meta["status"] == "api_error"
    assert "\x1b" not in r.stdout  # the garbage body's escape sequence never reaches the terminal


# 1. Ctrl-C / SIGTERM while a model call is in flight.
@pytest.mark.stress
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_model_call_is_interrupted(sig, words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    script = Script([LOOK])
    # From the second call on the model never answers: set before the run starts, so no timing decides it.
    with ScriptedServer(script, hang_from=1, hang_s=120.0) as server:
        proc = popen_fix(words_repo, server.url, out)
        assert server.hanging.wait(120), "the run never reached its second model call"
        proc.send_signal(sig)  # the run is inside its second model call now
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    run_dir, meta = finished_run(out, docker_client)
    assert meta["status"] == "interrupted"
    lines = (run_dir / "trajectory.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["action"] == "ls -a"


# 4. A model that accepts the connection and never answers: --time-limit is honoured mid-call.
@pytest.mark.stress
def test_time_limit_is_honoured_during_a_hung_model_call(words_repo, tmp_path, docker_client):
    with ScriptedServer(Script(FIX_SCRIPT), hang_from=0, hang_s=300) as server:
        start = time.time()
        r = fix(words_repo, server, tmp_path / "runs", "--no-apply", "--time-limit", "15", timeout=120)
        took = time.time() - start
    assert r.returncode == 1, r.stdout + r.stderr
    _, meta = finished_run(tmp_path / "runs", docker_client)
    assert meta["status"] == "time_limit"
    assert meta["totals"]["wall_s"] < 20 and took < 60


# 2. Model text with rich markup and terminal escapes is printed as text.
def test_markup_and_escape_sequences_in_actions_are_printed_literally(words_repo, tmp_path, docker_client):
    script = ["THOUGHT: markup.\n\n```bash\necho '[/]' '[/INST]' '[bold red]x[/]' \x1b]0;pwned\x07 \x1b[2J\n```", SUBMIT_REPLY]
    (words_repo / "ISSUE.md").write_text("# crash on [/INST] and [/] tokens\n\ncount_words miscounts.\n")
    with ScriptedServer(Script(script)) as server:
        r = fix(words_repo, server, tmp_path / "runs", "--no-apply")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "echo '[/]' '[/INST]' '[bold red]x[/]'" in r.stdout and "crash on [/INST] and [/] tokens" in r.stdout
    assert "\x1b]" not in r.stdout and "\x1b[2J" not in r.stdout and "\x07" not in r.stdout
    finished_run(tmp_path / "runs", docker_client)


# 3. A corrupt meta.json in `comem report`; internal errors name their traceback file.
@pytest.mark.parametrize("content", ['{"status": "submi', "[1, 2]", "\xff\xfe garbage"])
def test_report_on_a_corrupt_meta_is_a_one_line_error(content, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "trajectory.jsonl").write_text("")
    (run_dir / "meta.json").write_text(content, errors="surrogateescape")
    r = run_cli("report", str(run_dir))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("comem: error:") and "meta.json" in r.stderr and len(r.stderr.splitlines()) == 1


def test_internal_error_names_a_traceback_file_of_its_own(words_repo, tmp_path, docker_client):
    cache = tmp_path / "cache"
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("an --output that is a file")
    with ScriptedServer(Script(FIX_SCRIPT)) as server:
        r = fix(words_repo, server, not_a_dir, "--no-apply", env={"XDG_CACHE_HOME": str(cache)})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("comem: internal error:") and len(r.stderr.strip().splitlines()) == 1
    (log,) = list((cache / "comem" / "errors").iterdir())
    assert str(log) in r.stderr and "Traceback" in log.read_text()


# 1. In `comem bench`, an instance whose model call fails ends as api_error and the benchmark goes on.
def test_bench_goes_on_after_api_errors(tmp_path, docker_client):
    from comem_cli.bench.swe_mini import load_swe_mini

    ids = ",".join(i["instance_id"] for i in load_swe_mini()[:2])
    with ScriptedServer(Script([SUBMIT_REPLY]), fail_always=401, error_message="Invalid API key") as server:
        r = run_cli("bench", "swe-mini", "-m", "openai/scripted", "--api-base", server.url, "--memory", "full",
                    "--instances", ids, "--no-evaluate", "-o", str(tmp_path / "bench"), timeout=600)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    metas = [json.loads(p.read_text()) for p in (tmp_path / "bench").rglob("meta.json")]
    assert len(metas) == 2 and {m["status"] for m in metas} == {"api_error"}
    assert all("Invalid API key" in m["message"] for m in metas)
    preds = json.loads(next((tmp_path / "bench").rglob("preds.json")).read_text())
    assert sorted(preds) == sorted(ids.split(","))
