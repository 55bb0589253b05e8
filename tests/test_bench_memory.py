"""`comem bench memory` through the CLI, against scripted memory servers on 127.0.0.1: the scores
measure something (a server that returns its whole input recalls nearly everything and fails the
check, one that returns headings only recalls nothing, one that omits a file the agent uses again
scores lower than one that names it), requests fit a window smaller than the transcript, a judge
gives action consistency, and bad input is one line."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from comem_cli.replay_server import ScriptedServer, Sections
from tests.conftest import run_cli

HEADINGS = "## Task\n## Files and code state\n## Actions and outcomes\n## Tests\n## Open questions"
CODE = "def median(values):\n    ordered = sorted(values)\n    return ordered[len(ordered) // 2]\n" + "# padding line\n" * 60
STEPS = [
    ("ls src tests && cat src/calc.py", f"src/calc.py\ntests/test_calc.py\n{CODE}"),
    ("cat > repro_median.py <<'EOF'\nfrom calc import median\nprint(median([1, 2, 3, 4]))\nEOF", ""),
    ("python repro_median.py", "3\n" + "trace line\n" * 40),
    ("sed -i 's/return ordered/return ordered  # fixed/' src/calc.py && python repro_median.py", "2.5\n"),
    ("python -m pytest tests/test_calc.py::test_even_median -q", "1 passed\n" + "log line\n" * 40),
    ("echo COMEM_SUBMIT", ""),
]
NAMED = ("## Task\nmedian() is wrong for even lists.\n## Files and code state\nsrc/calc.py median; repro_median.py "
         "reproduces it.\n## Actions and outcomes\nWrote repro_median.py, fixed calc.py.\n## Tests\n"
         "tests/test_calc.py::test_even_median.\n## Open questions\nNone.")
OMITS = NAMED.replace("repro_median.py reproduces it.", "a script reproduces it.").replace("Wrote repro_median.py", "Wrote a script")


def write_trajectory(folder: Path) -> Path:
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "median() of an even-length list returns the upper middle value."}]
    for action, output in STEPS:
        messages.append({"role": "assistant", "content": f"THOUGHT: next.\n\n```bash\n{action}\n```"})
        messages.append({"role": "user", "content": f"<returncode>0</returncode>\n<output>\n{output}</output>"})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "calc-median.traj.json"
    path.write_text(json.dumps({"instance_id": "calc-median", "messages": messages, "info": {"exit_status": "Submitted"}}))
    return path


def bench(url: str, out: Path, *flags: str, timeout: int = 300):
    r = run_cli("bench", "memory", "--memory-backend", "openai", "--memory-model", "openai/scripted",
                "--memory-api-base", url, "--json", str(out), *flags, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text()), r


def test_whole_input_recalls_everything_and_headings_recall_nothing(tmp_path):
    with ScriptedServer(lambda body: body["messages"][-1]["content"]) as whole, ScriptedServer(lambda body: HEADINGS) as empty:
        (echo,), r = bench(whole.url, tmp_path / "whole.json", "--max-summaries", "1", "--summary-sections", "1")
        (heads,), _ = bench(empty.url, tmp_path / "heads.json", "--max-summaries", "1", "--summary-sections", "1")
    assert echo["summaries"] == heads["summaries"] == 32 and echo["failed"] == 0  # the bundled runs, one each
    assert echo["forward_recall"] >= 0.9 and echo["check_passed"] == 0 and echo["not_shorter"] > 0
    assert heads["forward_recall"] <= 0.1 and heads["check_passed"] == 0 and heads["sections_complete"] == 1.0
    assert "comem bench memory" in r.stdout and "forward" in r.stdout
    # the rows have a section of their own in `comem report` (table and chart)
    report = run_cli("report", str(tmp_path / "whole.json"), "-o", str(tmp_path / "quality.html"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "quality.html").read_text()
    assert "Memory quality" in page and "openai/scripted" in page and (tmp_path / "quality.png").stat().st_size > 1000
    assert run_cli("report", str(tmp_path / "whole.json").replace("whole", "nothing")).returncode == 2


def test_a_summary_that_omits_a_file_scores_lower_and_configurations_compare(tmp_path):
    trajectories = write_trajectory(tmp_path / "runs")
    common = ("--trajectories", str(trajectories), "--every", "1", "--summary-sections", "1,4")
    with ScriptedServer(Sections(NAMED)) as named, ScriptedServer(Sections(OMITS)) as omits:
        good, _ = bench(named.url, tmp_path / "named.json", *common)
        bad, _ = bench(omits.url, tmp_path / "omits.json", *common)
    assert [r["sections"] for r in good] == [1, 4] and all(r["summaries"] == 5 and r["failed"] == 0 for r in good + bad)
    for g, b in zip(good, bad):
        assert g["forward_recall"] == 1.0 and b["forward_recall"] < g["forward_recall"]
        assert g["artifact_recall"] == 1.0 and b["artifact_recall"] < 1.0
        assert g["sections_complete"] == 1.0 and g["check_passed"] > 0


def test_requests_fit_a_window_smaller_than_the_transcript_and_a_judge_scores_consistency(tmp_path):
    # the server refuses a prompt over 2,048 tokens and says so in /v1/models (as vLLM does)
    with ScriptedServer(Sections(NAMED), max_context=2048) as small, \
            ScriptedServer(lambda body: "THOUGHT: go on.\n\n```bash\npython -m pytest tests -q\n```") as judge:
        (row,), _ = bench(small.url, tmp_path / "small.json", "--max-summaries", "2", "--summary-sections", "1",
                          "--max-summary-tokens", "512", "--judge-model", "openai/judge", "--judge-api-base", judge.url)
        prompts = [sum(len(m["content"]) for m in body["messages"]) // 4 for body in small.requests]
    assert row["failed"] == 0 and row["summaries"] == 64 and max(prompts) <= 2048
    assert any("were left out to fit the input" in body["messages"][-1]["content"] for body in small.requests)
    assert row["action_consistency"] == 1.0  # the judge does the same on both views


def test_bad_input_is_one_line(tmp_path):
    def one_line(r) -> str:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
        return lines[0]

    (tmp_path / "empty").mkdir()
    assert "no trajectories" in one_line(run_cli("bench", "memory", "--trajectories", str(tmp_path / "empty"),
                                                 "--memory-backend", "openai", "--memory-model", "openai/m"))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("bench", "memory", "--memory-backend", "openai", "--memory-model", "openai/m",
                "--memory-api-base", f"http://127.0.0.1:{port}/v1", "--memory-timeout", "5")
    assert "does not answer" in one_line(r)
    r = run_cli("bench", "memory", "--memory-backend", "transformers", "--memory-model", str(tmp_path / "no-such-model"))
    assert "no-such-model" in one_line(r)
    assert "needs a memory model" in one_line(run_cli("bench", "memory", "--memory-backend", "auto",
                                                      env={"COMEM_MEMORY_MODEL": ""}))
    # a file that does not load is listed and skipped; the rest is scored
    runs = tmp_path / "mixed"
    write_trajectory(runs)
    (runs / "broken.traj.json").write_text("{not json")
    with ScriptedServer(Sections(NAMED)) as server:
        r = run_cli("bench", "memory", "--trajectories", str(runs), "--memory-backend", "openai", "--memory-model",
                    "openai/scripted", "--memory-api-base", server.url, "--every", "1")
    assert r.returncode == 0 and "skipped" in r.stderr and "broken.traj.json" in r.stderr, r.stdout + r.stderr
    assert os.path.basename(str(runs)) in r.stderr


@pytest.mark.slow
def test_smollm2_on_a_long_real_run_makes_every_summary_within_its_window(tmp_path):
    """SmolLM2-135M (8k window, the offline CPU model) on a 51-step real run: every request fitted, none failed."""
    from comem_cli.resources import bundled_trajectories

    run = bundled_trajectories() / "mini-swe-agent" / "sympy__sympy-20916.traj.json.gz"
    r = run_cli("bench", "memory", "--memory-backend", "transformers", "--trajectories", str(run), "--max-summaries", "2",
                "--max-summary-tokens", "256", "--json", str(tmp_path / "smol.json"), timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    (row,) = json.loads((tmp_path / "smol.json").read_text())
    assert row["summaries"] == 2 and row["failed"] == 0 and row["memory_backend"] == "transformers", row
    assert row["sections"] == 1 and row["summary_s"] > 0
