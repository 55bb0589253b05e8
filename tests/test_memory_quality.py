"""What a summary keeps: the facts and scores on hand-made steps, and the swap-time check through
`comem fix` (real CLI, Docker, HTTP, git): a summary longer than what it covers or made of headings
only is never used and is recorded; one that misses a fact the agent used since is patched."""

from __future__ import annotations

import json

import pytest

from comem_cli.memory import quality
from comem_cli.replay_server import Script, ScriptedServer, Sections
from comem_cli.trajectories import Step
from tests.conftest import FIX_SCRIPT, run_cli

HEADINGS = "## Task\n## Files and code state\n## Actions and outcomes\n## Tests\n## Open questions"
COVERED = [
    Step(response="THOUGHT: look\n\n```bash\nls && cat src/calc.py\n```", action="ls && cat src/calc.py",
         observation="<output>src\ntests\ndef median(values):\n    return sorted(values)[len(values) // 2]\n</output>"),
    Step(response="THOUGHT: test\n\n```bash\npython -m pytest tests/test_calc.py::test_even_median\n```",
         action="python -m pytest tests/test_calc.py::test_even_median",
         observation="<output>FAILED tests/test_calc.py::test_even_median - AssertionError: 2 != 2.5\n</output>"),
    Step(response="THOUGHT: write a repro\n\n```bash\ncat > repro_median.py <<'EOF'\nfrom calc import median\nprint(median([1, 2, 3, 4]))\nEOF\n```",
         action="cat > repro_median.py <<'EOF'\nfrom calc import median\nprint(median([1, 2, 3, 4]))\nEOF", observation=""),
]
LATER = [
    Step(response="THOUGHT: fix\n\n```bash\nsed -i 's/x/y/' src/calc.py && python repro_median.py\n```",
         action="sed -i 's/x/y/' src/calc.py && python repro_median.py", observation="<output>2.5</output>"),
    Step(response="THOUGHT: test\n\n```bash\npytest tests/test_calc.py -k test_even_median\n```",
         action="pytest tests/test_calc.py -k test_even_median", observation="<output>1 passed</output>"),
]
GOOD = ("## Task\nmedian() of an even list is wrong.\n## Files and code state\nsrc/calc.py: median takes the upper middle.\n"
        "repro_median.py prints median([1, 2, 3, 4]).\n## Actions and outcomes\nRan test_even_median: fails, 2 != 2.5.\n"
        "## Tests\ntests/test_calc.py::test_even_median fails.\n## Open questions\nNone.")
VAGUE = ("## Task\nA function is wrong.\n## Files and code state\nOne source file.\n## Actions and outcomes\nA test fails.\n"
         "## Tests\nOne fails.\n## Open questions\nNone.")


def test_facts_scores_and_the_check_on_hand_made_steps():
    assert quality.forward_facts(COVERED, LATER) == {"calc.py", "repro_median.py", "test_calc.py", "test_even_median"}
    assert quality.artifacts(COVERED) == {"repro_median.py"}
    good, vague, headings = (quality.score(s, COVERED, LATER) for s in (GOOD, VAGUE, HEADINGS))
    assert good.forward_recall == 1.0 and good.artifact_recall == 1.0 and good.sections_complete == 1.0
    assert vague.forward_recall == 0.0 and vague.artifact_recall == 0.0 and vague.sections_complete == 1.0
    assert headings.forward_recall == 0.0 and headings.sections_complete == 1.0
    assert good.compression < 1
    # the whole transcript "summarized" recalls everything, and the check rejects it
    whole = "\n".join(quality.step_text(s) for s in COVERED) * 2
    assert quality.score(whole, COVERED, LATER).forward_recall == 1.0
    assert quality.check(GOOD, COVERED, LATER, max_summary_tokens=2048).verdict == "passed"
    assert quality.check(HEADINGS, COVERED, LATER, max_summary_tokens=2048).reason == "every section is empty"
    assert quality.check(HEADINGS + "\n" + whole, COVERED, LATER, max_summary_tokens=2048).verdict == "rejected"
    assert "over --max-summary-tokens" in quality.check(GOOD, COVERED, LATER, max_summary_tokens=16).reason
    assert quality.check("### 0.1.1.1\n### 0.1.1.2", COVERED, LATER, max_summary_tokens=2048).verdict == "rejected"
    patched = quality.check(VAGUE, COVERED, LATER[:1], max_summary_tokens=2048)
    assert patched.verdict == "patched" and patched.missing == ["calc.py", "repro_median.py"]
    assert patched.text.startswith(VAGUE) and "calc.py, repro_median.py" in patched.text


def fix(repo, main_url, memory_url, out, *flags):
    return run_cli("fix", "-r", str(repo), "-i", str(repo / "ISSUE.md"), "-m", "openai/scripted", "--api-base", main_url,
                   "-o", str(out), "--no-apply", "--memory", "comem", "--k", "1", "--every", "1",
                   "--memory-backend", "openai", "--memory-model", "openai/memory", "--memory-api-base", memory_url, *flags)


def run_of(out):
    (run_dir,) = list(out.iterdir())
    steps = [json.loads(line) for line in (run_dir / "trajectory.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "meta.json").read_text()), steps


def checks_of(steps) -> list[dict]:
    return [e for s in steps for e in s["memory"] if e.get("kind") == "summary_check"]


@pytest.mark.docker
@pytest.mark.parametrize("kind", ["ten_times_longer", "headings_only"])
def test_bad_summaries_are_never_used_and_are_recorded(kind, words_repo, tmp_path, docker_client):
    def memory(body):
        if kind == "headings_only":
            return HEADINGS
        return HEADINGS.replace("## Tests", "## Tests\n" + body["messages"][-1]["content"] * 10)

    with ScriptedServer(memory) as mem, ScriptedServer(Script(FIX_SCRIPT)) as main:
        r = fix(words_repo, main.url, mem.url, tmp_path / "runs")
    assert r.returncode == 0, r.stdout + r.stderr
    meta, steps = run_of(tmp_path / "runs")
    assert all(s["view"]["summary_cutoff"] is None for s in steps)  # the raw steps stayed in every view
    checks = checks_of(steps) + [e for e in meta["totals"]["late_events"] if e.get("kind") == "summary_check"]
    assert checks and {c["summary_check"] for c in checks} == {"rejected"}
    reasons = ("every section is empty",) if kind == "headings_only" else ("not shorter than", "over --max-summary-tokens")
    assert all(any(reason in c["reason"] for reason in reasons) for c in checks), checks
    assert meta["totals"]["summary_checks"]["rejected"] == len(checks) and meta["totals"]["summaries"] == 0
    assert f"0 passed, 0 patched, {len(checks)} rejected" in r.stdout and "rejected, not used" in r.stdout


@pytest.mark.docker
def test_a_summary_missing_a_fact_the_agent_used_since_is_patched(words_repo, tmp_path, docker_client):
    summary = ("## Task\nFix count_words.\n## Files and code state\nThe module splits on one space.\n"
               "## Actions and outcomes\nRead the code.\n## Tests\nNot run yet.\n## Open questions\nNone.")
    sections = Sections(summary)  # each of the summary's parallel section requests gets its section
    with ScriptedServer(Script(FIX_SCRIPT)) as main:
        def memory(body):  # the summary of step 0 lands only once the agent has run the tests (step 1)
            assert main.wait_for_requests(3, 120)
            return sections(body)

        with ScriptedServer(memory) as mem:
            r = fix(words_repo, main.url, mem.url, tmp_path / "runs")
    assert r.returncode == 0, r.stdout + r.stderr
    meta, steps = run_of(tmp_path / "runs")
    first = next(c for c in checks_of(steps) if c["job"] == 0)  # job 0: the summary of step 0
    # step 1 ran `python3 -m unittest -v test_words`; `ls` in step 0 had shown test_words.py
    assert first["summary_check"] == "patched" and "test_words" in first["missing"]
    job = next(j for j in meta["memory_jobs"] if j["id"] == 0)  # what the view may use (if no newer one is ready first)
    assert job["summary"].startswith("## Task\nFix count_words.")
    assert job["summary"].endswith(f"\n\nAlso in step 0, and used by the agent since: {', '.join(first['missing'])}.")
    assert meta["totals"]["summary_checks"]["patched"] >= 1
    # Whichever summary the agent used (job 0, or a newer one that landed first), its swap line says
    # what its check said, though the check was recorded in an earlier step than the swap.
    used = [e for s in steps for e in s["memory"] if e.get("kind") == "job" and e.get("cutoff")]
    assert used and all(j["check"]["verdict"] in ("passed", "patched") for j in used)
    assert all(f"now a summary ({j['summary_tokens']} tokens, check {j['check']['verdict']}" in r.stdout for j in used)
