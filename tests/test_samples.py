"""Training samples (design.md, "The rollout format") built from the 32 real mini-swe-agent trajectories bundled with comem."""

from __future__ import annotations

import re

import pytest

from comem_cli.train.samples import (
    Sample, build_samples, cut_observation, memory_input, policy_view, sample_stats, split_by_task,
)
from comem_cli.trajectories import Step, Trajectory, discover
from comem_cli.views import estimate_tokens
from tests.conftest import MINI

STEP_INDEX = re.compile(r'<step index="(\d+)">')


@pytest.fixture(scope="module")
def trajectories() -> list[Trajectory]:
    loaded, skipped = discover([MINI])
    assert len(loaded) == 32 and not skipped
    return loaded


def expected_counts(trajectories: list[Trajectory], k: int) -> dict[int, int]:
    """Independent count: targets are steps with an action, lags 1..k with at least one summarized step."""
    counts = {j: 0 for j in range(1, k + 1)}
    for trajectory in trajectories:
        for t, step in enumerate(trajectory.steps):
            if step.action is None:
                continue
            for j in range(1, k + 1):
                if t - j >= 1:
                    counts[j] += 1
    return counts


@pytest.mark.parametrize("k", [1, 2, 4])
def test_counts_by_lag_match_the_formula(trajectories, k):
    samples = build_samples(trajectories, k)
    by_lag = sample_stats(samples)["by_lag"]
    assert by_lag == expected_counts(trajectories, k)
    assert len(samples) == sum(by_lag.values())
    # closed form: a step t >= 2 with an action contributes min(k, t - 1) samples
    assert len(samples) == sum(min(k, t - 1) for tr in trajectories for t, s in enumerate(tr.steps)
                               if s.action is not None and t >= 2)


def test_counts_on_the_bundled_data(trajectories):
    # 1067 steps, 28 format errors, 32 runs: pinned so that a change in loading or sampling shows
    assert [len(build_samples(trajectories, k)) for k in (1, 2, 4)] == [975, 1918, 3710]


def test_history_and_tail_are_exactly_the_steps_before_the_target(trajectories):
    by_id = {t.id: t for t in trajectories}
    samples = build_samples(trajectories, 4)
    for s in samples:
        steps = by_id[s.trajectory_id].steps
        assert 1 <= s.lag <= 4 and s.t - s.lag >= 1
        assert s.history_start == 0 and not s.history_capped
        assert len(s.history) == s.t - s.lag and len(s.raw_tail) == s.lag
        assert s.history + s.raw_tail == steps[: s.t]  # exactly steps 0..t-1: step t is in neither
        assert s.target_action == steps[s.t].action is not None
        assert s.task == by_id[s.trajectory_id].task and s.system == by_id[s.trajectory_id].system


def test_the_target_never_reaches_the_memory_model(trajectories):
    samples = build_samples(trajectories, 2)
    for s in samples[::7]:
        messages = memory_input(s)
        indices = [int(i) for i in STEP_INDEX.findall(messages[1]["content"])]
        assert indices == list(range(0, s.t - s.lag))  # only the summarized steps, in order
        assert s.t not in indices and all(i < s.t - s.lag for i in indices)


def test_memory_input_layout(trajectories):
    s = build_samples(trajectories, 1)[30]
    system, user = memory_input(s)
    assert system["role"] == "system" and user["role"] == "user"
    for section in ("## Task", "## Files and code state", "## Actions and outcomes", "## Tests", "## Open questions"):
        assert section in system["content"]
    assert "No advice" in system["content"]
    text = user["content"]
    assert text.startswith("<task>\n" + s.task)
    assert text.index("</task>") < text.index('<step index="0">')
    first = s.history[0]
    assert first.action in text and "THOUGHT:" in text and "ACTION:" in text and "OBSERVATION:" in text
    assert text.rstrip().endswith(f"Write the summary of steps 0 to {s.t - s.lag - 1}.")


def test_successive_memory_inputs_share_a_prefix(trajectories):
    samples = [s for s in build_samples(trajectories, 1) if s.trajectory_id == trajectories[0].id]
    earlier, later = memory_input(samples[3])[1]["content"], memory_input(samples[8])[1]["content"]
    cut = earlier.index("</transcript>")
    assert later.startswith(earlier[:cut])


def test_long_observations_are_cut_head_and_tail(trajectories):
    long_steps = [(t, i, s) for t in trajectories for i, s in enumerate(t.steps) if len(s.observation) > 5000]
    assert long_steps, "the bundled data has long observations"
    trajectory, index, step = long_steps[0]
    sample = next(s for s in build_samples([trajectory], 1) if s.t - s.lag > index)
    text = memory_input(sample, max_observation_chars=1000)[1]["content"]
    assert step.observation[:500] in text and step.observation[-500:] in text
    assert step.observation not in text and "characters elided" in text
    assert len(cut_observation(step.observation, 1000)) < 1100


def test_policy_view_is_the_agents_view(trajectories):
    s = next(x for x in build_samples(trajectories, 3) if x.lag == 3 and x.t > 10)
    messages = policy_view(s, "## Task\nfix qdp")
    assert messages[0] == {"role": "system", "content": s.system}
    assert messages[1] == {"role": "user", "content": s.task}
    assert "fix qdp" in messages[2]["content"] and f"steps 0 to {s.t - s.lag - 1}" in messages[2]["content"]
    assert len(messages) == 3 + 2 * s.lag
    turns = messages[3:]
    assert [m["role"] for m in turns] == ["assistant", "user"] * s.lag
    assert [m["content"] for m in turns[::2]] == [x.response for x in s.raw_tail]
    assert [m["content"] for m in turns[1::2]] == [x.observation for x in s.raw_tail]
    assert all(x.response not in messages[2]["content"] for x in s.history if len(x.response) > 40)
    full = policy_view(s, None)  # the no-memory baseline: every step verbatim
    assert len(full) == 2 + 2 * s.t


def test_split_has_no_task_in_both(trajectories):
    samples = build_samples(trajectories, 2)
    train, held_out = split_by_task(samples, eval_fraction=0.2, seed=0)
    train_tasks, eval_tasks = {s.task_id for s in train}, {s.task_id for s in held_out}
    assert not train_tasks & eval_tasks
    assert len(train) + len(held_out) == len(samples)
    assert len(eval_tasks) == round(0.2 * 32) and len(train_tasks) == 32 - len(eval_tasks)
    assert split_by_task(samples, 0.2, seed=0) == (train, held_out)  # deterministic
    assert {s.task_id for s in split_by_task(samples, 0.2, seed=1)[1]} != eval_tasks
    assert split_by_task(samples, 0.0)[1] == []


def test_token_cap_drops_the_oldest_steps(trajectories):
    cap = 3000
    capped = build_samples(trajectories, 2, max_history_tokens=cap)
    full = build_samples(trajectories, 2)
    assert len(capped) == len(full)
    n_capped = 0
    for c, f in zip(capped, full):
        assert (c.trajectory_id, c.t, c.lag, c.raw_tail, c.target_action) == (f.trajectory_id, f.t, f.lag, f.raw_tail, f.target_action)
        assert c.history == f.history[c.history_start:]  # a suffix: the newest steps are kept
        assert c.history_capped == (c.history_start > 0) == (f.history_tokens > cap)
        assert c.history_tokens <= cap or len(c.history) == 1
        if c.history_capped:
            n_capped += 1
            indices = [int(i) for i in STEP_INDEX.findall(memory_input(c)[1]["content"])]
            assert indices == list(range(c.history_start, c.t - c.lag))
            assert f"steps 0 to {c.history_start - 1} were left out" in memory_input(c)[1]["content"]
    assert n_capped > 100
    assert sample_stats(capped)["history_capped"] == n_capped


def test_format_errors_are_never_targets_and_stats(trajectories):
    errors = {(t.id, i) for t in trajectories for i, s in enumerate(t.steps) if s.action is None}
    assert len(errors) == 28
    samples = build_samples(trajectories, 2)
    assert not {(s.trajectory_id, s.t) for s in samples} & errors
    stats = sample_stats(samples)
    assert stats["tasks"] == stats["trajectories"] == 32
    assert stats["from_resolved_runs"] == sum(1 for s in samples if s.resolved)
    assert 0 < stats["history_tokens"]["median"] <= stats["history_tokens"]["max"]
    assert sum(stats["target_programs"].values()) <= len(samples) and "grep" in stats["target_programs"]


def test_subsampling_and_small_trajectories(trajectories):
    a = build_samples(trajectories, 4, max_per_trajectory=10, seed=3)
    assert a == build_samples(trajectories, 4, max_per_trajectory=10, seed=3)
    assert a != build_samples(trajectories, 4, max_per_trajectory=10, seed=4)
    assert all(n == 10 for n in sample_stats_by_trajectory(a).values())
    tiny = Trajectory(id="tiny", source="comem", system="S", task="T", path="-",
                      steps=[Step(response="r0", action="ls", observation="o0"), Step(response="r1", action="pwd", observation="o1")])
    assert build_samples([tiny], 4) == []  # step 1 would have an empty history
    tiny.steps.append(Step(response="r2", action="cat a", observation="o2"))
    [only] = build_samples([tiny], 4)
    assert (only.t, only.lag, only.target_action, only.task_id) == (2, 1, "cat a", "tiny")
    with pytest.raises(ValueError):
        build_samples([tiny], 0)


def sample_stats_by_trajectory(samples: list[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        out[s.trajectory_id] = out.get(s.trajectory_id, 0) + 1
    return out


def test_history_token_estimate(trajectories):
    # history_tokens estimates the serialized steps the memory model reads (the task comes on top)
    for s in build_samples(trajectories, 1)[::97]:
        text = memory_input(s)[1]["content"]
        transcript = text[text.index("<transcript>\n") + 13: text.index("\n</transcript>")]
        assert abs(s.history_tokens - estimate_tokens(transcript)) <= len(s.history)
