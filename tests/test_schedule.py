"""Properties of the k-step-off schedule (comem_cli/memory/schedule.py), driven with no threads.

A tiny event loop in this file plays the driver: steps take given times, memory jobs take given
times (or never answer, or fail), and the schedule is asked what to do before each step. The
properties hold for every summarizing arm and any timing hypothesis finds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comem_cli.config import MemoryConfig
from comem_cli.memory.schedule import MASK_TOKENS, Schedule, Submit, Use, policy_for


@dataclass
class Run:
    uses: list  # per step: (Use, raw tokens before masking, waits recorded at that step, events)
    schedule: Schedule


def drive(config: MemoryConfig, step_s: list[float], tokens: list[tuple[int, int]], job_s: list[float | None],
          fails: set[int] = frozenset()) -> Run:
    """Steps n = 0.. take step_s[n]; the j-th job started takes job_s[j] (None: never answers) and
    fails when j is in `fails`."""
    s = Schedule(policy_for(config))
    now = [0.0]
    pending: list[tuple[float, object, bool]] = []
    started = [0]

    def drain():
        for command in s.drain():
            if isinstance(command, Submit):
                job = s.start(now[0])
                if job is not None:
                    j = started[0]
                    started[0] += 1
                    d = job_s[j % len(job_s)]
                    if d is not None:
                        pending.append((now[0] + d, job, j in fails))

    def advance(to: float):
        while True:
            due = sorted((p for p in pending if p[0] <= to), key=lambda p: p[0])
            if not due:
                break
            t, job, fail = due[0]
            pending.remove(due[0])
            now[0] = max(now[0], t)
            s.finish(job, now[0], summary=None if fail else "summary", error="boom" if fail else None)
            drain()
        now[0] = max(now[0], to)

    uses = []
    for n, (response, observation) in enumerate(tokens):
        waits_before, events_before = len(s.waits), len(s.events)
        while True:
            decision = s.plan(now[0])
            drain()
            if isinstance(decision, Use):
                break
            ends = [t for t, job, _ in pending if job is decision.job]
            advance(min(ends + [decision.until]))
            s.waited(decision, now[0])
            drain()
        start = decision.cutoff or 0
        uses.append((decision, s.raw_tokens(start), s.waits[waits_before:], s.events[events_before:]))
        advance(now[0] + step_s[n])
        s.completed(response, observation, now[0])
        drain()
    s.close(now[0])
    return Run(uses, s)


ARM = st.sampled_from(["sync", "paper", "threshold", "comem"])


@st.composite
def scenario(draw):
    n = draw(st.integers(1, 24))
    arm = draw(ARM)
    config = MemoryConfig(arm=arm, k=draw(st.integers(0, 4)) if arm == "comem" else 2,
                          every=draw(st.one_of(st.none(), st.integers(1, 4))),
                          launch_tokens=draw(st.sampled_from([0, 300, 2000])), raw_budget=draw(st.sampled_from([256, 1000, 12000])),
                          timeout_s=draw(st.sampled_from([5.0, 300.0])))
    tokens = draw(st.lists(st.tuples(st.integers(1, 200), st.integers(0, 600)), min_size=n, max_size=n))
    step_s = draw(st.lists(st.floats(0.1, 3.0), min_size=n, max_size=n))
    job_s = draw(st.lists(st.one_of(st.none(), st.floats(0.0, 12.0)), min_size=1, max_size=8))
    fails = set(draw(st.lists(st.integers(0, 10), max_size=3)))
    return config, step_s, tokens, job_s, fails


@settings(max_examples=80, deadline=None)
@given(scenario())
def test_every_step_is_in_every_view_and_the_budget_holds_or_a_mask_is_recorded(case):
    config, step_s, tokens, job_s, fails = case
    run = drive(config, step_s, tokens, job_s, fails)
    for n, (use, raw, waits, events) in enumerate(run.uses):
        cutoff = use.cutoff or 0
        # every step 0..n-1 is in the view: before the summary's cut-off, or in the raw tail
        assert 0 <= cutoff <= n
        if use.job is not None:
            assert use.job.status == "done" and use.job.cutoff == cutoff
        assert use.mask_before == 0 or cutoff < use.mask_before <= max(n - 1, 0)
        # the raw tail exceeds the budget only when the step records a mask fallback, and then the
        # oldest observations are masked as far as the newest one allows
        fallback = [e for e in events if e["kind"] == "mask_fallback"]
        assert bool(fallback) == (raw > config.raw_budget), (n, raw)
        for e in fallback:
            assert e["step"] == n and e["mask_before"] == use.mask_before
            assert e["tokens_after_mask"] <= config.raw_budget or use.mask_before in (0, n - 1) or use.mask_before == n - 1


@settings(max_examples=80, deadline=None)
@given(scenario())
def test_view_is_append_only_between_swaps(case):
    config, step_s, tokens, job_s, fails = case
    run = drive(config, step_s, tokens, job_s, fails)
    previous = None
    for use, _, _, _ in run.uses:
        if previous is not None:
            assert (use.cutoff or 0) >= (previous.cutoff or 0)  # summaries never go backwards
            if use.cutoff == previous.cutoff:
                # same summary: the masked prefix only grows, so the old view is a prefix of the new one
                # up to the steps newly masked (a mask move is a prompt change, recorded as a fallback)
                assert use.mask_before >= previous.mask_before or use.mask_before == 0 and previous.mask_before == 0
        previous = use


@settings(max_examples=80, deadline=None)
@given(scenario())
def test_waits_only_when_the_arm_blocks_and_never_after_a_timeout(case):
    config, step_s, tokens, job_s, fails = case
    run = drive(config, step_s, tokens, job_s, fails)
    s = run.schedule
    timed_out_at = min((e["at"] for e in s.events if e["kind"] == "memory_unresponsive"), default=None)
    for n, (use, raw, waits, _) in enumerate(run.uses):
        for w in waits:
            assert w["step"] == n and w["end"] >= w["start"]
            if timed_out_at is not None:
                assert w["start"] <= timed_out_at  # never waited on again after a timeout
            if s.policy.arm in ("comem", "threshold"):
                assert w["reason"] == "budget"
            job = next(j for j in s.jobs if j.id == w["job"])
            if w["reason"] == "deadline":
                assert job.deadline is not None and job.deadline <= n
            if s.policy.arm == "comem":
                assert n - job.cutoff >= s.policy.stale  # as stale as the user accepts before waiting
    if timed_out_at is not None:
        assert not [j for j in s.jobs if j.queued > timed_out_at]  # no launch after a timeout
    assert not [j for j in s.jobs if j.live]  # close() ended everything


def test_comem_never_waits_on_a_healthy_memory_model_under_the_budget():
    config = MemoryConfig(arm="comem", k=2)
    run = drive(config, [1.0] * 40, [(50, 250)] * 40, [20.0])  # a memory model 20 agent steps slow
    assert run.schedule.waits == [] and all(u.mask_before == 0 for u, _, _, _ in run.uses)
    assert run.schedule.totals()["summaries"] >= 1


def test_sync_waits_for_every_launch_and_sees_it_at_once():
    run = drive(MemoryConfig(arm="sync", every=2), [1.0] * 9, [(10, 10)] * 9, [3.0])
    assert [u.cutoff for u, _, _, _ in run.uses] == [None, None, 2, 2, 4, 4, 6, 6, 8]
    assert [w["step"] for w in run.schedule.waits] == [2, 4, 6, 8]


def test_paper_gives_one_step_of_budget_then_blocks():
    run = drive(MemoryConfig(arm="paper"), [1.0] * 10, [(10, 10)] * 10, [1.5])
    assert [u.cutoff for u, _, _, _ in run.uses] == [None] * 5 + [4] * 4 + [8]
    assert [(w["step"], w["reason"]) for w in run.schedule.waits] == [(5, "deadline"), (9, "deadline")]


def test_threshold_starts_at_80_percent_and_blocks_at_95():
    # 100 tokens a step, budget 1000: launch when the tail reaches 800, block over 950
    config = MemoryConfig(arm="threshold", raw_budget=1000)
    run = drive(config, [1.0] * 12, [(50, 50)] * 12, [4.0])
    launches = [j.cutoff for j in run.schedule.jobs]
    assert launches[0] == 8
    waits = run.schedule.waits
    assert waits and waits[0]["step"] == 10 and waits[0]["reason"] == "budget"


def test_a_hanging_memory_model_is_waited_on_once_then_masked():
    """Issue: each job was waited on for the whole --memory-timeout. Now one timeout ends the memory
    model's use in the run: later over-budget steps mask instead of waiting."""
    config = MemoryConfig(arm="comem", k=0 + 1, raw_budget=256, timeout_s=5.0)
    run = drive(config, [1.0] * 20, [(20, 200)] * 20, [None])
    s = run.schedule
    assert len(s.waits) <= 1 and sum(w["end"] - w["start"] for w in s.waits) <= 5.0
    assert s.unresponsive and any(e["kind"] == "memory_unresponsive" for e in s.events)
    assert [u.mask_before > 0 for u, _, _, _ in run.uses][-5:] == [True] * 5
    assert len(s.jobs) == 1  # no launch after the timeout


def test_failing_memory_model_masks_and_is_recorded():
    config = MemoryConfig(arm="comem", k=1, raw_budget=256)
    run = drive(config, [1.0] * 12, [(20, 200)] * 12, [0.5], fails=set(range(100)))
    s = run.schedule
    assert s.totals()["summaries"] == 0 and s.totals()["memory_failures"] >= 1 and s.totals()["mask_fallbacks"] >= 1
    assert MASK_TOKENS < 200


@pytest.mark.parametrize("arm", ["full", "mask"])
def test_non_summarizing_arms_have_no_schedule(arm):
    with pytest.raises(ValueError):
        policy_for(MemoryConfig(arm=arm))


def test_on_the_main_engine_a_launch_waits_until_it_pays_off():
    """Rule 1 with memory_engine="main": 400-token replies, 800 tokens a step, 1,024-token summaries.
    A separate engine launches at 2,000 uncovered tokens (after step 3); on the main engine the first
    launch is after step 7, the first n with 400 * (800n - 1024) * n > 2 * 1024 * (800n + 512)
    (PAYOFF_MARGIN 2)."""
    first = {}
    for engine in ("separate", "main"):
        config = MemoryConfig(arm="comem", launch_tokens=2000, max_summary_tokens=1024, memory_engine=engine)
        run = drive(config, [1.0] * 10, [(400, 400)] * 10, [0.5])
        first[engine] = run.schedule.jobs[0].cutoff
    assert first == {"separate": 3, "main": 7}
