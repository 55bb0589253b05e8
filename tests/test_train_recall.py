"""`train-memory --reward recall`: the reward on hand-made summaries (the scores of `comem bench
memory`, no model), the extractive teacher, and through the real CLI on a tiny model: SFT + two
GRPO steps that write a checkpoint `comem bench memory` loads and the held-out rows before and
after, a run killed after its first checkpoint and resumed, and bad input in one line.

The tiny model's tokenizer (512 tokens, ~1.4 characters a token) is far denser than the 3
characters a token the window fitting of `comem bench memory` assumes, and the comem arm's first
summary covers ~2,000 estimated tokens: the tiny model gets a 16k window here (random weights, any
length works) and short hand-made runs, so every held-out request fits and the rows hold real
summaries rather than failures.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from comem_cli.memory import quality
from comem_cli.replay_server import ScriptedServer
from comem_cli.resources import bundled_trajectories
from comem_cli.train.teacher import MAX_NAMES, extractive_summary
from comem_cli.trajectories import Step
from tests.conftest import run_cli

HEADINGS = "## Task\n## Files and code state\n## Actions and outcomes\n## Tests\n## Open questions"
COVERED = [
    Step(response="THOUGHT: look\n\n```bash\ngrep -rn 'def median' src\n```", action="grep -rn 'def median' src",
         observation="<returncode>0</returncode>\n<output>\nsrc/calc.py:1:def median(values):\n</output>"),
    Step(response="THOUGHT: read\n\n```bash\ncat src/calc.py\n```", action="cat src/calc.py",
         observation="<returncode>0</returncode>\n<output>\ndef median(values):\n    ordered = sorted(values)\n"
                     "    return ordered[len(ordered) // 2]\n" + "# more code\n" * 30 + "</output>"),
    Step(response="THOUGHT: repro\n\n```bash\ncat > repro_median.py <<'EOF'\nfrom calc import median\nprint(median([1, 2, 3, 4]))\nEOF\n```",
         action="cat > repro_median.py <<'EOF'\nfrom calc import median\nprint(median([1, 2, 3, 4]))\nEOF",
         observation="<returncode>0</returncode>\n<output>\n</output>"),
    Step(response="THOUGHT: run\n\n```bash\npython -m pytest tests/test_calc.py::test_even_median\n```",
         action="python -m pytest tests/test_calc.py::test_even_median",
         observation="<returncode>1</returncode>\n<output>\n" + "collected 1 item\n" * 20
                     + "FAILED tests/test_calc.py::test_even_median - AssertionError: 3 != 2.5\n</output>"),
]
LATER = [
    Step(response="", action="sed -i 's/return ordered/return (ordered)/' src/calc.py && python repro_median.py"),
    Step(response="", action="python -m pytest tests/test_calc.py -k test_even_median"),
]
NAMES = ("## Task\nmedian() of an even list is wrong.\n## Files and code state\nsrc/calc.py: median returns the upper middle.\n"
         "repro_median.py prints median([1, 2, 3, 4]).\n## Actions and outcomes\nRan the repro and the test.\n## Tests\n"
         "tests/test_calc.py::test_even_median fails: 3 != 2.5.\n## Open questions\nNone.")
VAGUE = NAMES.replace("src/calc.py", "the source").replace("repro_median.py", "a script").replace(
    "tests/test_calc.py::test_even_median", "the test")


def reward(summary: str, *, cut: bool = False) -> float | None:
    return quality.recall_reward(quality.score(summary, COVERED, LATER), cut=cut)


def test_the_recall_reward_on_hand_made_summaries():
    named, vague, headings = reward(NAMES), reward(VAGUE), reward(HEADINGS)
    assert named == pytest.approx(1.0)  # every fact the agent used later, every file it wrote, five headings
    assert vague < 0.1 and headings == 0.0
    assert 0.4 < reward(NAMES.replace("## ", "")) < 0.6  # the names without the headings: half
    assert reward(NAMES, cut=True) == pytest.approx(named * quality.CUT_FACTOR)
    whole = "\n".join(quality.step_text(s) for s in COVERED) * 2
    assert reward(NAMES + "\n" + whole) == 0.0  # not shorter than what it covers: the check rejects it
    no_facts = [Step(response="THOUGHT: look\n\n```bash\nls\n```", action="ls", observation="a b")]
    assert quality.recall_reward(quality.score(NAMES, no_facts, [Step(response="", action="pwd")])) is None


def test_the_extractive_teacher_names_what_the_agent_used_in_five_sections():
    summary = extractive_summary("<pr_description>\nmedian() of an even-length list is wrong.\n</pr_description>\n"
                                 "<instructions>long instructions</instructions>", COVERED, max_tokens=256)
    found = quality.score(summary, COVERED, LATER)
    assert found.sections_complete == 1.0 and found.forward_recall == 1.0 and found.artifact_recall == 1.0
    assert found.compression < 1 and "long instructions" not in summary and "3 != 2.5" in summary
    assert quality.check(summary, COVERED, LATER, max_summary_tokens=256).verdict == "passed"
    short = extractive_summary("Fix median.", COVERED, max_tokens=60)
    assert quality.estimate_tokens(short) <= 60 and "calc.py" in short  # files are kept longest


def test_the_teacher_lists_few_names_in_the_order_the_command_wrote_them():
    names = [f"zeta_{i}" if i % 2 else f"alpha_{i}" for i in range(12)]  # sorted would put every alpha first
    action = f"python -c 'from calc import {', '.join(names)}'"
    step = Step(response="", action=action, observation="<returncode>0</returncode>\n<output>\n" + "ok\n" * 200 + "</output>")
    summary = extractive_summary("Fix it.", [step], max_tokens=256)
    listed = summary.split("- names used: ")[1].splitlines()[0].split(", ")
    assert listed == names[-MAX_NAMES:]  # the newest few, as written: a list the model copies as it reads


# ------------------------------------------------------------------------------------ through the CLI


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    pytest.importorskip("trl")
    from comem_cli.testing.tiny_models import build_tiny_causal_lm

    model = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16384}))
    return model


def write_run(folder: Path, name: str, seed: int) -> None:
    """A mini-swe-agent run of 9 steps that reads, searches, writes a repro, edits and tests a few
    files: the comem arm's schedule launches summaries after ~2,000 tokens, later steps use them."""
    files = [f"src/module_{seed}_{i}.py" for i in range(3)]
    listing = "\n".join(f"{f}:{n}: def helper_{seed}_{n}(value):" for n, f in enumerate(files))
    listing += f"\ntests/test_module_{seed}.py:3: def test_helper_{seed}():"
    code = "\n".join(f"def helper_{seed}_{n}(value):\n    return value + {n}" for n in range(3)) + "\n# filler line\n" * 150
    actions = [(f"grep -rn 'def helper_{seed}' src", listing), (f"cat {files[0]}", code), (f"cat {files[1]}", code),
               (f"cat > repro_{seed}.py <<'EOF'\nfrom module import helper_{seed}_0\nprint(helper_{seed}_0(1))\nEOF", ""),
               (f"python repro_{seed}.py", "Traceback: wrong value\n" + "trace line\n" * 150),
               (f"sed -i 's/value + 0/value + 1/' {files[0]}", ""), (f"python repro_{seed}.py", "2\n"),
               (f"cat {files[2]}", code), (f"python -m pytest tests/test_module_{seed}.py::test_helper_{seed}", "1 passed\n")]
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"helper_{seed}_0 returns the wrong value for 1."}]
    for action, output in actions:
        messages.append({"role": "assistant", "content": f"THOUGHT: next.\n\n```bash\n{action}\n```"})
        messages.append({"role": "user", "content": f"<returncode>0</returncode>\n<output>\n{output}</output>"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.traj.json").write_text(json.dumps({"instance_id": name, "messages": messages,
                                                          "info": {"exit_status": "Submitted"}}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(rollouts, held-out runs): six runs to train on, two others to evaluate on."""
    root = tmp_path_factory.mktemp("runs")
    for i in range(6):
        write_run(root / "rollouts", f"train-{i}", i)
    for i in range(6, 8):
        write_run(root / "held-out", f"held-{i}", i)
    return root / "rollouts", root / "held-out"


def train_argv(tiny: Path, runs: tuple[Path, Path], out: Path, *flags: str) -> list[str]:
    return ["train-memory", "--base-model", str(tiny), "--rollouts", str(runs[0]), "--eval-trajectories", str(runs[1]),
            "--reward", "recall", "--max-summary-tokens", "48", "--eval-samples", "2", "--group-size", "2",
            "--lr", "1e-4", "--kl", "0", "--threads", "1", "--output", str(out), *flags]


def rows(out: Path) -> dict[str, dict]:
    report = json.loads((out / "train_report.json").read_text())
    assert json.loads((out / "memory-quality.json").read_text()) == report["evaluation"]["rows"]
    return {r["stage"]: r for r in report["evaluation"]["rows"]}


def test_sft_then_two_grpo_steps_with_the_recall_reward_write_a_checkpoint_and_the_rows(tiny, runs, tmp_path):
    out = tmp_path / "memory-model"
    r = run_cli(*train_argv(tiny, runs, out, "--teacher", "extractive", "--sft-steps", "2", "--steps", "2", "--lora"),
                timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "train_report.json").read_text())
    assert report["config"]["reward"] == "recall" and report["config"]["policy"] is None
    assert [s["step"] for s in report["steps"]] == [1, 2] and all(s["reward_mean"] is not None for s in report["steps"])
    assert report["sft"]["steps_done"] == 2 and report["sft"]["pairs"] > 0
    found = rows(out)
    assert list(found) == ["base", "SFT", "SFT+GRPO"]
    for row in found.values():  # the same held-out summaries for each model, all written
        assert row["summaries"] == 2 and row["failed"] == 0 and row["forward_recall"] is not None
    assert found["SFT+GRPO"]["model"] == str(out / "final")
    assert "held-out evaluation (comem bench memory): 2 summaries" in r.stdout and "SFT+GRPO" in r.stdout
    # the checkpoint is a memory model as it is: comem bench memory loads it, comem report shows the rows
    bench = run_cli("bench", "memory", "--memory-backend", "transformers", "--memory-model", str(out / "final"),
                    "--max-summaries", "1", "--max-summary-tokens", "16", "--trajectories", str(runs[1]), timeout=600)
    assert bench.returncode == 0 and "comem bench memory" in bench.stdout, bench.stdout[-2000:] + bench.stderr[-2000:]
    page = run_cli("report", str(out), "-o", str(tmp_path / "report.html"))
    assert page.returncode == 0, page.stderr
    html = (tmp_path / "report.html").read_text()
    assert "Training reward" in html and "SFT+GRPO" in html


@pytest.mark.slow
def test_a_two_step_run_on_twelve_real_runs_is_small(tiny, tmp_path):
    """The defaults of a new user's first run (--reward action with a policy endpoint): the held-out
    evaluation is bounded (--eval-samples 8) and shown, the policy is called, and it ends in minutes.
    (Summaries capped at 128 tokens and prompts at 2,048: a random tiny model always writes to its cap,
    and what is tested is how many summaries and calls each phase makes, not their lengths.)"""
    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    for path in sorted((bundled_trajectories() / "mini-swe-agent").glob("*.traj.json.gz"))[:12]:
        (rollouts / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "memory-model"
    with ScriptedServer(lambda body: "THOUGHT: look.\n\n```bash\ncat src/app.py\n```") as policy:
        r = run_cli("train-memory", "--rollouts", str(rollouts), "--base-model", str(tiny), "--policy-model", "openai/policy",
                    "--policy-api-base", policy.url, "--steps", "2", "--group-size", "2", "--threads", "1",
                    "--max-summary-tokens", "128", "--max-prompt-tokens", "2048", "--output", str(out), timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert policy.requests  # the policy acted (the held-out evaluation and both steps)
    report = json.loads((out / "train_report.json").read_text())
    assert report["config"]["reward"] == "action" and report["steps_done"] == 2 and report["config"]["eval_samples"] <= 8
    assert report["eval_reward_before"] is not None and report["eval_reward_after"] is not None
    assert all(row["summaries"] <= 8 for row in report["evaluation"]["rows"])
    assert "held-out evaluation (comem bench memory)" in r.stdout and "held-out action reward" in r.stdout


class Inotify:
    """Wait for a file to be written and closed (a Linux inotify event, not a poll)."""

    IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_TO = 0x8, 0x100, 0x80

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0

    def wait_closed(self, path: Path, timeout: float) -> bool:
        """Until `path` (under folders that may not exist yet) is closed after writing; False on timeout."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            folder = path.parent
            while not folder.exists():
                folder = folder.parent
            mask = self.IN_CREATE | self.IN_MOVED_TO | self.IN_CLOSE_WRITE
            assert self.libc.inotify_add_watch(self.fd, str(folder).encode(), mask) >= 0
            if folder == path.parent and path.exists() and path.stat().st_size > 0:
                return True
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                data = os.read(self.fd, 65536)
                while data:  # struct inotify_event: wd, mask, cookie, len, name
                    _, event, _, size = struct.unpack_from("iIII", data)
                    name = data[16:16 + size].rstrip(b"\0").decode()
                    if folder == path.parent and name == path.name and event & (self.IN_CLOSE_WRITE | self.IN_MOVED_TO):
                        return True
                    data = data[16 + size:]
        return False

    def close(self) -> None:
        os.close(self.fd)


def test_a_run_killed_after_its_first_checkpoint_resumes(tiny, runs, tmp_path):
    out = tmp_path / "memory-model"
    argv = [sys.executable, "-m", "comem_cli", *train_argv(tiny, runs, out, "--steps", "3", "--save-every", "1")]
    watch = Inotify()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.wait_closed(out / "checkpoints" / "checkpoint-1" / "trainer_state.json", timeout=600)
        process.send_signal(signal.SIGKILL)  # killed outright: no clean-up of its own
        process.communicate(timeout=60)
    finally:
        watch.close()
        if process.poll() is None:
            process.kill()
    assert not (out / "final").exists() and not (out / "train_report.json").exists()
    before = json.loads((out / ".evaluation.json").read_text())["rows"]["base"]

    r = run_cli(*argv[3:], "--resume", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "train_report.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-1") or report["resumed_from"].endswith("checkpoint-2")
    assert report["steps_done"] == 3 and [s["step"] for s in report["steps"]] == [1, 2, 3]  # history kept
    found = rows(out)
    assert list(found) == ["base", "GRPO"] and found["base"] == before  # the base row is not measured again
    assert "evaluating base" not in r.stdout and "evaluating GRPO" in r.stdout
    assert (out / "final" / "config.json").is_file()


def one_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return lines[0]


def test_bad_input_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no usable training samples" in one_line(run_cli("train-memory", "--rollouts", str(empty), "--dry-run"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.traj.json").write_text("{not json")
    line = one_line(run_cli("train-memory", "--eval-trajectories", str(broken), "--dry-run"))
    assert "no trajectories to evaluate on" in line and "run.traj.json" in line
    assert "no trajectories to evaluate on" in one_line(run_cli("train-memory", "--eval-trajectories", str(empty), "--dry-run"))
    assert "--reward must be one of action, recall" in one_line(run_cli("train-memory", "--reward", "nice", "--dry-run"))
    r = run_cli("train-memory", "--base-model", str(tmp_path), "--reward", "action", "--max-per-trajectory", "1")
    assert "--policy-model" in one_line(r)
