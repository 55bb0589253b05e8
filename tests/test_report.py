"""`comem report`: the HTML page, rendered in headless Chromium, has one matplotlib chart per figure,
an element per step in each run's timeline, and no label printed over another or cut at an edge."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from comem_cli.replay_server import Script, ScriptedServer, Sections
from comem_cli.report import per_step_mean
from comem_cli.rollouts import read_run
from tests.conftest import run_cli
from tests.test_memory_http import ECHO_SCRIPT, SUMMARY

pytestmark = pytest.mark.docker
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the page (the report itself has no scripts): what Chromium laid out, per chart.
LAYOUT_SCRIPT = """<script>
const box = (e) => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
const charts = [...document.querySelectorAll("figure.chart")].map((fig) => {
  const svgs = fig.querySelectorAll("svg");
  const named = [...svgs[0].querySelectorAll("g[id]")].filter((g) => g.id.startsWith(fig.dataset.chart + "-") && !/_[0-9]+$/.test(g.id));
  return {chart: fig.dataset.chart, run: fig.dataset.run || null, svgs: svgs.length, box: box(svgs[0]),
          texts: [...svgs[0].querySelectorAll("text")].filter((t) => t.textContent.trim()).map((t) => ({text: t.textContent, ...box(t)})),
          named: Object.fromEntries(named.map((g) => [g.id.slice(fig.dataset.chart.length + 1),
                                    {uses: g.querySelectorAll("use").length, title: g.querySelector(":scope > title")?.textContent ?? null, ...box(g)}]))};
});
const out = document.createElement("pre");
out.id = "layout";
out.textContent = JSON.stringify(charts);
document.body.append(out);
</script>"""


def rendered_layout(html_path, tmp_path) -> dict[str, dict]:
    """Each chart of the page as Chromium laid it out (headless, no network, fresh profile): its
    <svg> count, its box, its texts' boxes and the elements the report named, by chart key."""
    assert CHROMIUM, "chromium is installed by scripts/setup.sh"
    probe = tmp_path / "layout.html"
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", LAYOUT_SCRIPT + "</body>"), encoding="utf-8")
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1300,3000",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    found = re.search(r'<pre id="layout">(.*?)</pre>', out.stdout, re.S)
    assert found, out.stdout[-500:]
    return {chart["chart"]: chart for chart in json.loads(html.unescape(found[1]))}


def overlap(a: dict, b: dict) -> float:
    return max(0.0, min(a["right"], b["right"]) - max(a["left"], b["left"])) * max(0.0, min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]))


def assert_legible(chart: dict) -> None:
    """Every label lies inside its chart (none cut at an edge) and no two labels cover each other."""
    texts, svg = chart["texts"], chart["box"]
    assert len(texts) >= 6, chart  # title, axis titles, tick labels
    for t in texts:
        assert svg["left"] - 1 <= t["left"] and t["right"] <= svg["right"] + 1, (chart["chart"], t, svg)
        assert svg["top"] - 1 <= t["top"] and t["bottom"] <= svg["bottom"] + 1, (chart["chart"], t, svg)
    for i, a in enumerate(texts):
        for b in texts[i + 1:]:
            assert overlap(a, b) <= 1.0, (chart["chart"], a, b)


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
    charts = rendered_layout(html_path, tmp_path)

    timelines = {c["run"]: c for key, c in charts.items() if key.startswith("timeline-")}
    assert set(charts) == {"latency", "prompt-tokens", "cache-0", "cache-1", "reward"} | {k for k in charts if k.startswith("timeline-")}
    assert sorted(timelines) == sorted(run.path.name for run in runs.values())
    for chart in charts.values():
        assert chart["svgs"] == 1, chart["chart"]  # one <svg> per chart
        assert_legible(chart)
    for arm, run in runs.items():
        chart = timelines[run.path.name]
        labels = {t["text"] for t in chart["texts"]}
        assert {"model", "command", "memory", "wait", "seconds since the run started"} <= labels
        named = chart["named"]
        for s in run.steps:  # one bar per step on each of the model and command lanes, the command after the call
            model, command = named[f"step-{s.step}-model"], named[f"step-{s.step}-command"]
            assert model["title"].startswith(f"step {s.step}: main model") and command["title"] == f"step {s.step}: {s.action}"
            assert model["right"] <= command["left"] + 1 and model["bottom"] <= command["top"]
        assert len([n for n in named if n.endswith("-model")]) == len(run.steps)
        ran = [j for j in run.meta["memory_jobs"] if j["started"] and j["finished"]]
        assert sorted(n for n in named if n.endswith("-memory")) == sorted(f"job-{j['id']}-memory" for j in ran)
        assert (len(ran) > 0) == (arm == "comem")
    for key in ("latency", "prompt-tokens"):  # a line per arm with a marker per step, axis titles
        named, labels = charts[key]["named"], {t["text"] for t in charts[key]["texts"]}
        assert {arm: named[arm]["uses"] for arm in runs} == {arm: len(per_step_mean([run], "latency")) for arm, run in runs.items()}
        assert {"step", "full", "comem"} <= labels
    assert charts["reward"]["named"]["mean"]["uses"] == 5
    assert {"training reward", "step", "reward"} <= {t["text"] for t in charts["reward"]["texts"]}


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
