"""The k-step-off rules (SPEC 3.2), driven through the real MemoryContext and a real thread pool.

The memory backend here is a gate: each job's summary is released when the test's completion
schedule says so, or as soon as the pipeline blocks on it (observed through `on_wait`). That lets
the tests control *when* jobs finish, in steps, without any sleep.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comem_cli.config import MemoryConfig
from comem_cli.memory.pipeline import MemoryContext, overlap
from comem_cli.rollouts import Span, StepRecord, ViewInfo

POOL = ThreadPoolExecutor(max_workers=4)


class GateBackend:
    """Summaries that finish only when released; the text names the steps it covers."""

    name = "gate"

    def __init__(self):
        self.gates: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.calls = 0

    def gate(self, request_id: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(request_id, threading.Event())

    def summarize(self, messages, *, max_tokens, request_id):
        self.calls += 1
        self.gate(request_id).wait(timeout=20)
        last = messages[-1]["content"].count("<step index=")
        return f"## Task\nsummary of {last} steps, covering everything that happened so far."

    def cancel(self, request_id):
        self.gate(request_id).set()

    def close(self):
        pass


class FailingBackend(GateBackend):
    def summarize(self, messages, *, max_tokens, request_id):
        self.calls += 1
        raise RuntimeError("memory server down")


def make_step(i: int, obs_chars: int = 0) -> StepRecord:
    t = time.time()
    return StepRecord(step=i, view=ViewInfo(), response=f"THOUGHT: step {i}\n\n```bash\necho {i}\n```", action=f"echo {i}",
                      observation=f"<output>{i}{'x' * obs_chars}</output>", model=Span(start=t, end=t), command=Span(start=t, end=t))


def simulate(k: int, every: int, n_steps: int, finish_after: dict[int, int | None], budget: int = 10**9,
             obs_chars: int = 0, backend=None):
    """Run n_steps through the pipeline. Job j (launched j-th) finishes `finish_after[j]` steps after
    its launch (None: only when the pipeline blocks on it). Returns per-step (cutoff, view, waits)."""
    backend = backend or GateBackend()
    ctx = MemoryContext(MemoryConfig(arm="comem" if k else "sync", k=k, every=every, raw_budget=budget, timeout_s=20),
                        "sys", "task", backend, pool=POOL)

    def release_through(job):
        for j in ctx.jobs:
            if j.cutoff <= job.cutoff:
                backend.gate(f"comem-{j.id}").set()

    ctx.on_wait = lambda job, reason: release_through(job)
    steps, out = [], []
    for n in range(n_steps):
        for index, job in enumerate(ctx.jobs):
            delay = finish_after.get(index)
            if delay is not None and job.cutoff + delay <= n and job.status != "superseded":
                release_through(job)
                assert job.done.wait(10)
        view, events = ctx.prepare(steps)
        out.append((view.summary_cutoff, view, [e for e in events if e["kind"] == "wait"]))
        steps.append(make_step(n, obs_chars))
        ctx.completed(steps)
        # Real steps take seconds: a submitted job has started before the next launch can come.
        deadline = time.time() + 5
        while ctx.active is not None and ctx.active.status == "queued" and time.time() < deadline:
            time.sleep(0.001)
    totals = ctx.close()
    return out, totals, ctx


@pytest.mark.parametrize("k,every,finish,expected_cutoffs,expected_waits", [
    # k=0 (sync): every launch is waited for at once, whatever the memory model's speed.
    (0, 1, {}, [None, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5]),
    # k=1, jobs finish before the next step: no waits, every step sees the newest summary.
    (1, 1, {j: 0 for j in range(9)}, [None, 1, 2, 3, 4, 5], []),
    # k=1, jobs take one step (on time): no waits, summaries one step stale.
    (1, 1, {j: 1 for j in range(9)}, [None, None, 1, 2, 3, 4], []),
    # k=1, jobs late: each is waited for at its deadline (launch + 1).
    (1, 1, {}, [None, None, 1, 2, 3, 4], [2, 3, 4, 5]),
    # k=2, every=2, early: summary of 0..1 is used from step 3 on, no waits.
    (2, 2, {j: 1 for j in range(9)}, [None, None, None, 2, 2, 4, 4, 6], []),
    # k=2, every=2, exactly on time (finishes at the deadline): still no wait.
    (2, 2, {j: 2 for j in range(9)}, [None, None, None, None, 2, 2, 4, 4], []),
    # k=2, every=2, late: waits at steps 4, 6 (deadline = launch + 2).
    (2, 2, {}, [None, None, None, None, 2, 2, 4, 4], [4, 6]),
    # k=4, every=2, late: one job runs, the newest launch queues behind it and supersedes older
    # queued ones (cut-off 4 and 8 never run); each running job is waited for at launch + 4.
    (4, 2, {}, [None] * 6 + [2, 2, 2, 2, 6, 6], [6, 10]),
    # k=4, every=1, each job takes 3 steps: one in flight at a time, the newest launch wins.
    (4, 1, {j: 3 for j in range(20)}, [None] * 4 + [1, 1, 1, 4], []),
])
def test_view_rules_table(k, every, finish, expected_cutoffs, expected_waits):
    out, totals, _ = simulate(k, every, len(expected_cutoffs), finish)
    assert [c for c, _, _ in out] == expected_cutoffs
    assert [w["step"] for _, _, ws in out for w in ws] == expected_waits
    assert all(w["reason"] == "deadline" for _, _, ws in out for w in ws)
    assert totals["waits"] == len(expected_waits)


def raw_tail_tokens(view) -> int:
    return sum((len(m["content"]) + 3) // 4 for m in view.messages[3 if view.summary_cutoff is not None else 2:])


def test_budget_forces_a_wait():
    # Each step is ~110 tokens of raw tail; a 256-token budget forces summaries before k=4 would.
    out, totals, ctx = simulate(4, 4, 12, {}, budget=256, obs_chars=400)
    budget_waits = [w for _, _, ws in out for w in ws if w["reason"] == "budget"]
    assert budget_waits and budget_waits[0]["step"] == 3
    assert all(raw_tail_tokens(view) <= 256 for _, view, _ in out)
    assert totals["mask_fallbacks"] == 0


def test_failing_memory_model_falls_back_to_masking():
    out, totals, ctx = simulate(2, 2, 10, {}, budget=256, obs_chars=400, backend=FailingBackend())
    assert totals["summaries"] == 0 and totals["memory_failures"] >= 1 and totals["mask_fallbacks"] >= 1
    assert all(cutoff is None for cutoff, _, _ in out)
    last_view = out[-1][1]
    assert len(last_view.masked) == 8  # all but the newest observation are elided
    assert sum(1 for m in last_view.messages if "elided" in m["content"]) == 8


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.sampled_from([0, 1, 2, 4]), every=st.sampled_from([1, 2]), n_steps=st.integers(1, 14),
       delays=st.lists(st.one_of(st.none(), st.integers(0, 6)), min_size=14, max_size=14))
def test_property_coverage_append_only_and_justified_waits(k, every, n_steps, delays):
    out, totals, ctx = simulate(k, every, n_steps, dict(enumerate(delays)))
    previous = None
    for n, (cutoff, view, waits) in enumerate(out):
        start = cutoff or 0
        # Every step 0..n-1 is covered exactly once: by the summary (0..cutoff-1) or the raw tail.
        assert (view.raw_start, view.raw_end) == (start, n)
        assert len(view.messages) == 2 + (cutoff is not None) + 2 * (n - start)
        # Append-only between swaps.
        if previous is not None and previous[0] == cutoff:
            assert view.messages[: len(previous[1].messages)] == previous[1].messages
        if previous is not None and previous[0] is not None:
            assert cutoff is not None and cutoff >= previous[0]  # summaries never go backwards
        # No wait unless a deadline forces it: the job was due and unfinished when the wait began.
        for w in waits:
            job = next(j for j in ctx.jobs if j.id == w["job"])
            assert w["reason"] == "deadline" and job.deadline <= n
            assert job.finished >= w["start"] - 1e-3
        previous = (cutoff, view)
    if k == 0:
        # sync: a step right after a launch always sees that summary (waited for unless already done).
        for n, (cutoff, _, waits) in enumerate(out):
            if n > 0 and n % every == 0:
                assert cutoff == n
        assert totals["waits"] == sum(1 for n in range(1, n_steps) if n % every == 0 and delays[n // every - 1] != 0)
        assert totals["memory_jobs"] == sum(1 for n in range(1, n_steps + 1) if n % every == 0)


def test_overlap_of_intervals():
    assert overlap((0, 10), [(1, 2), (1.5, 3), (8, 20)]) == pytest.approx(4.0)
    assert overlap((0, 1), []) == 0


def test_prewarm_sends_the_next_swapped_prompt():
    """With a pre-warm hook, each finished summary sends system + task + summary + raw tail so far,
    which is exactly the prefix of the next view that uses that summary."""
    sent = []
    backend = GateBackend()
    ctx = MemoryContext(MemoryConfig(arm="comem", k=2, every=2, timeout_s=20), "sys", "task", backend, pool=POOL,
                        prewarm=lambda messages: sent.append(messages) or {"ok": True, "start": 0.0, "end": 0.0})
    steps = []
    views = []
    for n in range(6):
        for job in ctx.jobs:
            backend.gate(f"comem-{job.id}").set()
            job.done.wait(10)
        deadline = time.time() + 5
        while len(sent) < sum(j.status == "done" for j in ctx.jobs) and time.time() < deadline:
            time.sleep(0.01)
        view, events = ctx.prepare(steps)
        views.append(view)
        steps.append(make_step(n))
        ctx.completed(steps)
    ctx.close()
    assert len(sent) >= 2
    first_swap = next(v for v in views if v.summary_cutoff is not None)
    warmed = next(m for m in sent if "Summary of steps 0 to 1" in m[2]["content"])
    assert first_swap.messages[: len(warmed)] == warmed
    assert [e["kind"] for e in ctx.events if e["kind"] == "prewarm"]
