"""`comem report`: the HTML page rendered in headless Chromium has a timeline element per step."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from comem_cli.rollouts import read_run
from comem_cli.testing.scripted_server import Script, ScriptedServer, Sections
from tests.conftest import run_cli
from tests.test_memory_http import ECHO_SCRIPT, SUMMARY

pytestmark = pytest.mark.docker
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(html_path, tmp_path) -> str:
    """The DOM after Chromium loaded the page (headless, no network, fresh profile)."""
    assert CHROMIUM, "chromium is installed by scripts/setup.sh"
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", html_path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    return out.stdout


def test_report_of_two_arms_and_a_training_run(words_repo, tmp_path, docker_client):
    out = tmp_path / "runs"
    with ScriptedServer(Sections(SUMMARY), latency_s=0.3) as memory:
        for arm in ("full", "comem"):
            with ScriptedServer(Script(ECHO_SCRIPT), latency_s=0.2) as main:
                r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "openai/main",
                            "--api-base", main.url, "-o", str(out), "--no-apply", "--memory", arm, "--k", "2", "--every", "2",
                            "--memory-backend", "openai", "--memory-model", "openai/mem", "--memory-api-base", memory.url)
                assert r.returncode == 0, r.stderr
    (out / "train_report.json").write_text(json.dumps({"steps": [{"step": i, "reward_mean": 0.1 * i, "reward_std": 0.05} for i in range(5)]}))
    runs = {read_run(d).meta["config"]["memory"]["arm"]: read_run(d) for d in out.iterdir() if d.is_dir()}

    r = run_cli("report", str(out))
    assert r.returncode == 0, r.stderr
    html_path, png_path = out / "report.html", out / "report.png"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = rendered_dom(html_path, tmp_path)

    timelines = re.findall(r'<svg class="timeline" data-run="([^"]+)"', dom)
    assert sorted(timelines) == sorted(run.path.name for run in runs.values())
    for arm, run in runs.items():
        svg = dom[dom.index(f'data-run="{run.path.name}"'):]
        svg = svg[: svg.index("</svg>")]
        steps = re.findall(r'<g class="timeline-step" data-step="(\d+)"', svg)
        assert [int(s) for s in steps] == [s.step for s in run.steps]  # one element per step
        assert len(re.findall(r'class="tl model"', svg)) == len(run.steps)
        assert len(re.findall(r'class="tl command"', svg)) == len(run.steps)
        ran = [j for j in run.meta["memory_jobs"] if j["started"] and j["finished"]]
        assert len(re.findall(r'class="tl memory" data-job', svg)) == len(ran)
        assert (len(ran) > 0) == (arm == "comem")
    assert set(re.findall(r'class="curve latency" data-arm="(\w+)"', dom)) == {"full", "comem"}
    assert set(re.findall(r'class="curve prompt-tokens" data-arm="(\w+)"', dom)) == {"full", "comem"}
    assert 'class="curve reward"' in dom


def test_report_bad_input(tmp_path):
    r = run_cli("report", str(tmp_path))
    assert r.returncode == 2 and "holds no comem run" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("field, value, named", [("config", 5, "config should be a JSON object (got 5)"),
                                                 ("status", None, "status should be a string (got null)"),
                                                 ("memory_jobs", 7, "memory_jobs should be a JSON list (got 7)")])
def test_report_of_a_meta_json_with_a_wrong_type_is_one_line(words_repo, tmp_path, docker_client, field, value, named):
    out = tmp_path / "runs"
    with ScriptedServer(Script(ECHO_SCRIPT)) as main:
        r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "openai/main",
                    "--api-base", main.url, "-o", str(out), "--no-apply", "--memory", "full")
    assert r.returncode == 0, r.stderr
    (run_dir,) = [d for d in out.iterdir() if d.is_dir()]
    meta = json.loads((run_dir / "meta.json").read_text())
    meta[field] = value
    (run_dir / "meta.json").write_text(json.dumps(meta))

    r = run_cli("report", str(out))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"comem: error: {run_dir / 'meta.json'}: {named}", r.stderr
    assert not (out / "report.html").exists()
