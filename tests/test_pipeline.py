"""The summarizing arms driven through the real MemoryContext and a real thread pool (the rules
themselves: comem_cli/memory/schedule.py, tests/test_schedule.py).

The memory backend here is a gate: each job's summary is released when the test's completion
schedule says so, or as soon as the pipeline blocks on it (observed through `on_wait`). That lets
the tests control *when* jobs finish, in steps, without any sleep.
"""

from __future__ import annotations

import threading
import time

import pytest

from comem_cli.config import MemoryConfig
from comem_cli.memory.pipeline import MemoryContext, MemoryPool, overlap
from comem_cli.rollouts import Span, StepRecord, ViewInfo

POOL = MemoryPool(4, name="test-memory")  # daemon threads: a hung request never blocks the exit
# These tests drive the schedule's mechanics with tiny steps and one-line summaries: the swap-time
# check (which rejects a summary longer than its steps) is off here and tested in test_memory_quality.py.


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
    at_once = True  # answers (with an error) as soon as it is asked

    def summarize(self, messages, *, max_tokens, request_id):
        self.calls += 1
        raise RuntimeError("memory server down")


def make_step(i: int, obs_chars: int = 0) -> StepRecord:
    t = time.time()
    return StepRecord(step=i, view=ViewInfo(), response=f"THOUGHT: step {i}\n\n```bash\necho {i}\n```", action=f"echo {i}",
                      observation=f"<output>{i}{'x' * obs_chars}</output>", model=Span(start=t, end=t), command=Span(start=t, end=t))


def run_pipeline(config: MemoryConfig, n_steps: int, finish_after: dict[int, int | None], obs_chars: int = 0,
                 backend=None):
    """Run n_steps through the real MemoryContext. Job j (launched j-th) finishes `finish_after[j]` steps
    after its launch (None: only when the pipeline blocks on it). Returns per-step (cutoff, view, waits)."""
    backend = backend or GateBackend()
    ctx = MemoryContext(config, "sys", "task", backend, pool=POOL)

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
                assert wait_until(lambda: not job.live)
        view, events = ctx.prepare(steps)
        out.append((view.summary_cutoff, view, [e for e in events if e["kind"] == "wait"]))
        steps.append(make_step(n, obs_chars))
        ctx.completed(steps)
        # Real steps take seconds: a submitted job has started before the next launch can come, and a
        # backend that answers at once has answered (the first summary also imports the templates).
        assert wait_until(lambda: not ctx.schedule.ticket)
        if getattr(backend, "at_once", False):
            assert wait_until(lambda: not any(j.status == "running" for j in ctx.jobs))
    totals = ctx.close()
    return out, totals, ctx


def wait_until(predicate, timeout: float = 60.0) -> bool:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.mark.parametrize("config,finish,expected_cutoffs,expected_waits", [
    # sync: every launch is waited for at once, whatever the memory model's speed.
    (MemoryConfig(check=False, arm="sync"), {}, [None, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5]),
    (MemoryConfig(check=False, arm="comem", k=0), {}, [None, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5]),
    # comem, a summary every 2 steps finishing one step after its launch: no waits, one step stale.
    (MemoryConfig(check=False, arm="comem", k=2, every=2, launch_tokens=0), {j: 1 for j in range(9)},
     [None, None, None, 2, 2, 4, 4, 6], []),
    # comem, a memory model that never answers on its own: under the budget it is never waited for.
    (MemoryConfig(check=False, arm="comem", k=1, every=1, launch_tokens=0), {}, [None] * 8, []),
    # comem, one job at a time: launches behind a running job queue, the newest one runs next.
    (MemoryConfig(check=False, arm="comem", k=4, every=1, launch_tokens=0), {j: 3 for j in range(20)}, [None] * 4 + [1, 1, 1, 4], []),
    # paper: a summary every 4 steps, one step of budget, then block.
    (MemoryConfig(check=False, arm="paper"), {}, [None] * 5 + [4] * 4 + [8], [5, 9]),
])
def test_view_rules_table(config, finish, expected_cutoffs, expected_waits):
    out, totals, _ = run_pipeline(config, len(expected_cutoffs), finish)
    assert [c for c, _, _ in out] == expected_cutoffs
    assert [w["step"] for _, _, ws in out for w in ws] == expected_waits
    assert totals["waits"] == len(expected_waits)


def raw_tail_tokens(view) -> int:
    return sum((len(m["content"]) + 3) // 4 for m in view.messages[3 if view.summary_cutoff is not None else 2:])


def test_budget_forces_a_wait_in_a_blocking_arm():
    # Each step is ~110 tokens of raw tail; a 256-token budget forces summaries before the period would.
    out, totals, ctx = run_pipeline(MemoryConfig(check=False, arm="sync", every=4, raw_budget=256), 12, {}, obs_chars=400)
    budget_waits = [w for _, _, ws in out for w in ws if w["reason"] == "budget"]
    assert budget_waits and budget_waits[0]["step"] == 3
    assert all(raw_tail_tokens(view) <= 256 for _, view, _ in out)
    assert totals["mask_fallbacks"] == 0


def test_comem_masks_rather_than_wait_for_a_fresh_summary():
    # Same budget, comem k=4: a job younger than 4 steps is not worth a wait: mask meanwhile.
    out, totals, ctx = run_pipeline(MemoryConfig(check=False, arm="comem", k=4, every=4, launch_tokens=0, raw_budget=256), 8, {}, obs_chars=400)
    assert totals["waits"] == 0 and totals["mask_fallbacks"] >= 1
    assert any(view.masked for _, view, _ in out)


def test_failing_memory_model_falls_back_to_masking():
    config = MemoryConfig(check=False, arm="comem", k=2, every=2, launch_tokens=0, raw_budget=256)
    out, totals, ctx = run_pipeline(config, 10, {}, obs_chars=400, backend=FailingBackend())
    assert totals["summaries"] == 0 and totals["memory_failures"] >= 1 and totals["mask_fallbacks"] >= 1
    assert all(cutoff is None for cutoff, _, _ in out)
    last_view = out[-1][1]
    assert last_view.masked and len(last_view.masked) >= 7  # the oldest observations are elided
    assert sum(1 for m in last_view.messages if "elided" in m["content"]) == len(last_view.masked)


class HangingBackend(GateBackend):
    """A memory server that accepts the request and never answers."""

    def summarize(self, messages, *, max_tokens, request_id):
        self.calls += 1
        threading.Event().wait()

    def cancel(self, request_id):
        self.cancelled = getattr(self, "cancelled", []) + [request_id]


def test_a_hanging_memory_model_is_waited_on_once_then_masked():
    """A memory model that timed out is not waited on again in that run (issue: each job was
    waited on for the whole --memory-timeout, so a 10-step run took 600 s)."""
    backend = HangingBackend()
    config = MemoryConfig(check=False, arm="sync", raw_budget=256, timeout_s=1.0)
    started = time.time()
    out, totals, ctx = run_pipeline(config, 10, {}, obs_chars=400, backend=backend)
    elapsed = time.time() - started
    assert elapsed < 5, elapsed
    assert totals["waits"] == 1 and totals["memory_unresponsive"] and totals["mask_fallbacks"] >= 5
    assert backend.calls == 1 and backend.cancelled  # the hung request was cancelled, no new one sent
    assert any(j["status"] == "timeout" for j in totals["jobs"])


def test_the_process_exits_at_once_with_a_hung_memory_request(tmp_path):
    """The worker blocked in the memory server's HTTP call must not keep the process alive."""
    import subprocess
    import sys

    script = tmp_path / "hang.py"
    script.write_text(
        "import threading, time\n"
        "from comem_cli.config import MemoryConfig\n"
        "from comem_cli.memory.pipeline import MemoryContext\n"
        "from tests.test_pipeline import make_step\n"
        "class Hang:\n"
        "    def summarize(self, messages, *, max_tokens, request_id): threading.Event().wait()\n"
        "    def cancel(self, request_id): pass\n"
        "ctx = MemoryContext(MemoryConfig(check=False, arm='comem', every=1, launch_tokens=0), 's', 't', Hang())\n"
        "steps = []\n"
        "for n in range(3):\n"
        "    ctx.prepare(steps); steps.append(make_step(n)); ctx.completed(steps)\n"
        "time.sleep(0.2)\n"
        "print(ctx.close()['memory_jobs'])\n")
    import os

    started = time.time()
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert time.time() - started < 20 and int(r.stdout.strip()) >= 1


def test_overlap_of_intervals():
    assert overlap((0, 10), [(1, 2), (1.5, 3), (8, 20)]) == pytest.approx(4.0)
    assert overlap((0, 1), []) == 0


def test_prewarm_sends_the_next_swapped_prompt():
    """With a pre-warm hook, each finished summary sends system + task + summary + raw tail so far,
    which is exactly the prefix of the next view that uses that summary."""
    sent = []
    backend = GateBackend()
    ctx = MemoryContext(MemoryConfig(check=False, arm="comem", k=2, every=2, launch_tokens=0, timeout_s=20, prewarm=True), "sys", "task", backend, pool=POOL,
                        prewarm=lambda messages: sent.append(messages) or {"ok": True, "start": 0.0, "end": 0.0})
    steps = []
    views = []
    for n in range(6):
        for job in ctx.jobs:
            backend.gate(f"comem-{job.id}").set()
            assert wait_until(lambda: not job.live)
        assert wait_until(lambda: len(sent) >= sum(j.status == "done" for j in ctx.jobs), 60), "a swap was never pre-warmed"
        view, events = ctx.prepare(steps)
        views.append(view)
        steps.append(make_step(n))
        ctx.completed(steps)
    ctx.close()
    assert len(sent) >= 2
    first_swap = next(v for v in views if v.summary_cutoff is not None)
    warmed = next(m for m in sent if "Summary of steps 0 to 1" in m[2]["content"])
    assert first_swap.messages[: len(warmed)] == warmed
    assert [e["kind"] for e in ctx.late if e["kind"] == "prewarm"]


@pytest.mark.docker
@pytest.mark.parametrize("fault", ["hang", "garbage"])
def test_a_hanging_or_garbage_memory_model_leaves_a_run_no_slower_than_full(fault, words_repo, tmp_path, docker_client):
    """Through the CLI, real Docker, real HTTP: one run of `full` and one of `comem` against a memory
    server that never answers (or answers garbage); comem is no slower than full (generous bound:
    one run each on a shared machine) and records every fallback."""
    import json

    from comem_cli.replay_server import Script, ScriptedServer
    from comem_cli.rollouts import read_run
    from tests.conftest import comem_containers, run_cli

    TIMEOUT = 1.5  # the run (9 steps of ~0.5 s) must outlive the memory model's first timeout
    replies = [f"THOUGHT: look.\n\n```bash\nseq 1 {300 + i}\n```" for i in range(8)] + ["THOUGHT: done.\n\n```bash\necho COMEM_SUBMIT\n```"]
    options = {"hang": dict(hang_first=10**6, hang_s=600.0), "garbage": {}}[fault]
    answer = "## x" if fault == "garbage" else "## Task\nnever sent"
    memory = ScriptedServer(lambda body: answer, **options).start()
    walls, runs = {}, {}
    try:
        for arm in ("full", "comem"):
            out = tmp_path / arm
            with ScriptedServer(Script(replies), latency_s=0.3) as main:
                started = time.time()
                r = run_cli("fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"), "-m", "openai/main",
                            "--api-base", main.url, "-o", str(out), "--no-apply", "--memory", arm, "--every", "2",
                            "--raw-budget", "1000", "--memory-timeout", str(TIMEOUT), "--memory-backend", "openai",
                            "--memory-model", "openai/memory", "--memory-api-base", memory.url, timeout=300)
                walls[arm] = time.time() - started
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            (run_dir,) = list(out.iterdir())
            runs[arm] = read_run(run_dir)
            assert comem_containers(docker_client, run_dir.name) == []
    finally:
        memory.stop()
    assert walls["comem"] <= 1.5 * walls["full"] + 5, walls
    run = runs["comem"]
    totals = run.meta["totals"]
    assert run.meta["status"] == "submitted" and totals["summaries"] == 0
    events = [e for s in run.steps for e in s.memory] + totals.get("late_events", [])
    failures = [e for e in events if e["kind"] == "memory_failure"]
    assert failures and {f["status"] for f in failures} == ({"timeout"} if fault == "hang" else {"failed"})
    masks = [e for e in events if e["kind"] == "mask_fallback"]
    assert masks and totals["mask_fallbacks"] == len(masks)
    assert sum(w["end"] - w["start"] for w in events if w["kind"] == "wait") <= 1.5 * TIMEOUT  # never the whole timeout twice
    if fault == "hang":
        assert any(e["kind"] == "memory_unresponsive" for e in events)
    assert json.loads((run.path / "meta.json").read_text())["status"] == "submitted"


# ----------------------------------------------------------------------------- a summary's sections in parallel
def test_section_groups_cover_the_instruction_headings_in_order():
    from comem_cli.memory.transcript import SECTIONS, section_groups
    from comem_cli.templates import render

    headings = [line[3:].strip() for line in render("memory_instruction.j2").splitlines() if line.startswith("## ")]
    assert tuple(headings) == SECTIONS
    for n in range(1, 6):
        groups = section_groups(n)
        assert len(groups) == n and tuple(h for g in groups for h in g) == SECTIONS
    assert section_groups(4) == [("Task", "Files and code state"), ("Actions and outcomes",), ("Tests",), ("Open questions",)]


class SectionBackend:
    """A batching backend (parallel = True) that answers each request with the sections it asks for."""

    name = "sections"
    parallel = True

    def __init__(self, fail_section: str | None = None, hold: threading.Event | None = None):
        from comem_cli.replay_server import Sections

        self.answer = Sections("\n\n".join(f"## {h}\nfacts about {h.lower()}." for h in
                                           ("Task", "Files and code state", "Actions and outcomes", "Tests", "Open questions")))
        self.fail_section, self.hold = fail_section, hold
        self.calls: list[tuple[str, int, str]] = []
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()

    def summarize(self, messages, *, max_tokens, request_id):
        ask = messages[-1]["content"].rsplit("\n", 1)[1]
        with self.lock:
            self.calls.append((request_id, max_tokens, ask))
        if self.hold is not None and max_tokens > 1:
            self.hold.wait(timeout=20)
        if self.fail_section and f"## {self.fail_section}" in ask and max_tokens > 1:
            raise RuntimeError("one section failed")
        return self.answer({"messages": messages})

    def cancel(self, request_id):
        with self.lock:
            self.cancelled.add(request_id)

    def close(self):
        pass


def _one_summary(backend, **config):
    ctx = MemoryContext(MemoryConfig(check=False, arm="comem", k=2, every=1, launch_tokens=0, max_summary_tokens=1000, **config),
                        "sys", "task", backend, pool=POOL)
    steps = [make_step(0)]
    ctx.prepare([])
    ctx.completed(steps)
    assert wait_until(lambda: not ctx.jobs[0].live, 60), "the summary never ended"
    return ctx


def test_a_summary_is_a_prefill_then_its_sections_in_parallel_joined_in_order():
    backend = SectionBackend()
    ctx = _one_summary(backend)
    job = ctx.jobs[0]
    assert job.status == "done"
    ids = [c[0] for c in backend.calls]
    assert ids[0] == f"comem-{job.id}-prefill" and backend.calls[0][1] == 1
    assert sorted(ids[1:]) == [f"comem-{job.id}-{i}" for i in range(4)] and {c[1] for c in backend.calls[1:]} == {250}
    # every section, once, in the instruction's order
    assert [line for line in job.summary.splitlines() if line.startswith("## ")] == \
        ["## Task", "## Files and code state", "## Actions and outcomes", "## Tests", "## Open questions"]
    assert ctx.close()["summaries"] == 1

    single = SectionBackend()
    job = _one_summary(single, sections=1).jobs[0]
    assert [c[1] for c in single.calls] == [1000] and "Write only" not in single.calls[0][2] and job.status == "done"
    serial = GateBackend()  # no `parallel`: one request, whatever --summary-sections says
    ctx = MemoryContext(MemoryConfig(check=False, arm="comem"), "sys", "task", serial, pool=POOL)
    assert len(ctx.groups) == 1


def test_a_failed_section_fails_the_summary_and_cancel_reaches_every_request():
    failing = SectionBackend(fail_section="Tests")
    ctx = _one_summary(failing)
    assert ctx.jobs[0].status == "failed" and ctx.close()["memory_failures"] == 1

    hold = threading.Event()
    held = SectionBackend(hold=hold)
    ctx = MemoryContext(MemoryConfig(check=False, arm="comem", k=2, every=1, launch_tokens=0), "sys", "task", held, pool=POOL)
    ctx.prepare([])
    ctx.completed([make_step(0)])
    assert wait_until(lambda: len(held.calls) >= 5, 60), "the five requests were never all sent"
    job = ctx.jobs[0]
    ctx.close()  # the run ends with the summary in flight: all five of its requests are cancelled
    hold.set()
    assert held.cancelled == {f"comem-{job.id}-prefill", *(f"comem-{job.id}-{i}" for i in range(4))}
