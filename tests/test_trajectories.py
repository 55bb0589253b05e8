"""Reading recorded trajectories: the 32 real mini-swe-agent runs bundled with comem (gzipped), comem run dirs
(plain or gzipped), and broken inputs."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from comem_cli.rollouts import RunWriter, Span, StepRecord, ViewInfo, read_text
from comem_cli.trajectories import Trajectory, discover, load_trajectory
from tests.conftest import MINI

FENCE = re.compile(r"```bash[ \t]*\n(.*?)\n?```", re.DOTALL)


@pytest.fixture(scope="module")
def mini() -> tuple[list[Trajectory], list]:
    return discover([MINI])


def raw(path: str) -> dict:
    return json.loads(read_text(path))


def test_all_bundled_trajectories_load(mini):
    loaded, skipped = mini
    assert skipped == []
    assert len(loaded) == 32 == len(list(MINI.glob("*.traj.json.gz")))
    assert len({t.id for t in loaded}) == 32
    assert all(t.source == "mini-swe-agent" for t in loaded)
    assert sum(len(t.steps) for t in loaded) == 1067


def test_steps_match_the_recorded_conversation(mini):
    for trajectory in mini[0]:
        data = raw(trajectory.path)
        messages = data["messages"]
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        assert len(trajectory.steps) == len(assistant), trajectory.id
        assert trajectory.system == messages[0]["content"]
        assert trajectory.task == messages[1]["content"]
        assert trajectory.exit_status == data["info"]["exit_status"]
        assert trajectory.id == trajectory.task_id == data["instance_id"]
        for step, i in zip(trajectory.steps, assistant):
            assert step.response == messages[i]["content"]
            assert step.observation == messages[i + 1]["content"]
            blocks = FENCE.findall(messages[i]["content"])
            if len(blocks) == 1:
                assert step.action == blocks[0].strip()
            else:  # a format error: mini-swe-agent answered with its error message
                assert step.action is None
                assert "EXACTLY ONE action" in step.observation


def test_resolved_flags_come_from_the_reports(mini):
    for trajectory in mini[0]:
        report = raw(trajectory.path.replace(".traj.json", ".report.json"))
        assert trajectory.resolved is report["resolved"], trajectory.id
    assert sum(t.resolved for t in mini[0]) == 23  # 9 of the 32 runs did not resolve


def test_mswea_fences_and_missing_reports(tmp_path, mini):
    original = mini[0][0]
    data = raw(original.path)
    for m in data["messages"]:
        if m["role"] == "assistant":
            m["content"] = m["content"].replace("```bash", "```mswea_bash_command")
    copy = tmp_path / Path(original.path).name.removesuffix(".gz")  # plain JSON beside a gzipped report
    copy.write_text(json.dumps(data))
    loaded = load_trajectory(copy)
    assert [s.action for s in loaded.steps] == [s.action for s in original.steps]
    assert loaded.resolved is None  # no report next to the copy
    shutil.copy(original.path.replace(".traj.json", ".report.json"), tmp_path)
    assert load_trajectory(copy).resolved is original.resolved


def test_broken_inputs_are_skipped_with_reasons(tmp_path):
    good = tmp_path / "good"
    shutil.copytree(MINI, good, ignore=shutil.ignore_patterns("django__*", "sympy__*", "sphinx*", "matplotlib*"))
    n_good = len(list(good.glob("*.traj.json.gz")))
    text = read_text(MINI / "django__django-11099.traj.json.gz")
    (good / "truncated.traj.json").write_text(text[: len(text) // 2])
    (good / "empty.traj.json").write_text("")
    (good / "nomessages.traj.json").write_text(json.dumps({"info": {"exit_status": "Submitted"}}))
    (good / "list.traj.json").write_text("[1, 2]")
    (good / "bad-report.report.json").write_text("{not json")
    (good / "notgzip.traj.json.gz").write_text("{}")
    (good / "cut.traj.json.gz").write_bytes(gzip.compress(text.encode())[:5000])
    (tmp_path / "empty-dir").mkdir()
    run = tmp_path / "runs" / "broken-run"
    run.mkdir(parents=True)
    (run / "trajectory.jsonl").write_text("")
    (run / "meta.json").write_text("{}")

    loaded, skipped = discover([good, tmp_path / "empty-dir", tmp_path / "runs", tmp_path / "missing"])
    assert len(loaded) == n_good > 0
    reasons = {p.name: reason for p, reason in skipped}
    assert "not valid JSON" in reasons["truncated.traj.json"]
    assert "not valid JSON" in reasons["empty.traj.json"]
    assert "messages" in reasons["nomessages.traj.json"]
    assert "not a mini-swe-agent trajectory" in reasons["list.traj.json"]
    assert "cannot read" in reasons["notgzip.traj.json.gz"] and "cannot read" in reasons["cut.traj.json.gz"]
    assert "no trajectories found" in reasons["empty-dir"]
    assert "prompts" in reasons["broken-run"]
    assert reasons["missing"] == "does not exist"
    assert all("\n" not in reason for reason in reasons.values())
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trajectory(good / "truncated.traj.json")


def record(step: int, response: str, action: str | None, observation: str) -> StepRecord:
    return StepRecord(step=step, view=ViewInfo(raw_end=step), response=response, action=action,
                      format_error=None if action else "no block", observation=observation,
                      model=Span(start=1.0 + step, end=1.5 + step))


def write_run(run_dir: Path, meta: dict, steps: list[StepRecord], tail: str = "") -> None:
    writer = RunWriter(run_dir)
    writer.write_meta(meta)
    for s in steps:
        writer.append(s)
    writer.close()
    if tail:
        with open(run_dir / "trajectory.jsonl", "a") as f:
            f.write(tail)


STEPS = [
    record(0, "THOUGHT: look\n\n```bash\nls\n```", "ls", "<returncode>0</returncode>\n<output>\na.py\n</output>"),
    record(1, "THOUGHT: two blocks\n```bash\nls\n```\n```bash\npwd\n```", None, "Format error: found 2 ```bash blocks"),
    record(2, "THOUGHT: read\n\n```bash\ncat a.py\n```", "cat a.py", "<returncode>0</returncode>\n<output>\nx = 1\n</output>"),
]


def test_comem_run_dirs_round_trip(tmp_path):
    bench = tmp_path / "bench" / "comem-k2"
    meta = {"status": "submitted", "prompts": {"system": "SYSTEM", "task": "TASK"}, "instance_id": "repo__x-1"}
    write_run(bench / "run-a", {**meta, "resolved": True}, STEPS, tail='{"step": 3, "view": {"raw_')  # killed mid-write
    write_run(bench / "run-b", {**meta, "status": "step_limit"}, STEPS[:2])
    (bench / "run-b" / "report.json").write_text(json.dumps({"repo__x-1": {"resolved": False}}))
    write_run(bench / "nested" / "run-c", {"status": "running", "prompts": {"system": "S", "task": "T2"}}, STEPS[:1])

    loaded, skipped = discover([tmp_path / "bench"])
    assert skipped == []
    by_id = {t.id: t for t in loaded}
    assert set(by_id) == {"run-a", "run-b", "run-c"}
    a = by_id["run-a"]
    assert (a.source, a.system, a.task, a.exit_status, a.resolved) == ("comem", "SYSTEM", "TASK", "submitted", True)
    assert [(s.response, s.action, s.observation) for s in a.steps] == [(r.response, r.action, r.observation) for r in STEPS]
    assert by_id["run-b"].resolved is False  # from report.json, keyed by the instance id
    assert by_id["run-b"].exit_status == "step_limit"
    assert by_id["run-c"].resolved is None and by_id["run-c"].exit_status == "running"
    assert a.task_id == by_id["run-b"].task_id == "repo__x-1"
    assert by_id["run-c"].task_id.startswith("task-")
    # a run dir given directly, or its trajectory.jsonl, reads the same
    assert load_trajectory(bench / "run-a") == load_trajectory(bench / "run-a" / "trajectory.jsonl")
    assert Trajectory.model_validate_json(a.model_dump_json()) == a


def test_comem_run_dir_problems(tmp_path):
    write_run(tmp_path / "no-meta", {}, STEPS)
    (tmp_path / "no-meta" / "meta.json").unlink()
    write_run(tmp_path / "bad-meta", {}, STEPS)
    (tmp_path / "bad-meta" / "meta.json").write_text('{"prompts": ')
    write_run(tmp_path / "garbage", {"prompts": {"system": "S", "task": "T"}}, [], tail="not json\n{}\n")
    loaded, skipped = discover([tmp_path])
    assert loaded == []
    reasons = {p.name: r for p, r in skipped}
    assert "no meta.json" in reasons["no-meta"]
    assert "not valid JSON" in reasons["bad-meta"]
    assert "no steps" in reasons["garbage"] and "2 unreadable lines" in reasons["garbage"]


def test_gzipped_comem_run_dirs_read_like_plain_ones(tmp_path):
    meta = {"status": "submitted", "prompts": {"system": "SYSTEM", "task": "TASK"}, "instance_id": "repo__x-1"}
    write_run(tmp_path / "plain" / "run-a", meta, STEPS)
    shutil.copytree(tmp_path / "plain", tmp_path / "packed")
    for name in ("trajectory.jsonl", "meta.json"):
        path = tmp_path / "packed" / "run-a" / name
        path.with_name(name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    (tmp_path / "packed" / "run-a" / "report.json.gz").write_bytes(gzip.compress(b'{"resolved": true}'))
    (packed,), skipped = discover([tmp_path / "packed"])
    plain = load_trajectory(tmp_path / "plain" / "run-a")
    assert skipped == [] and packed.resolved is True and plain.resolved is None
    assert (packed.system, packed.task, packed.exit_status, packed.steps) == (plain.system, plain.task, plain.exit_status, plain.steps)
    assert load_trajectory(tmp_path / "packed" / "run-a" / "trajectory.jsonl.gz") == packed
    (tmp_path / "packed" / "run-a" / "trajectory.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    ((_, reason),) = discover([tmp_path / "packed"])[1]
    assert "unreadable" in reason and "\n" not in reason
