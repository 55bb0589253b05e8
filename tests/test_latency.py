"""`comem bench latency`: the cost model, the virtual-time replay, its schedule against the real
MemoryContext, the paper calibration, the benchmark targets, a real `--serving local` run, bad input.

Runs on the mini-swe-agent trajectories bundled with comem (comem_cli/data/trajectories); tokens are counted
once per test session (module fixture).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from comem_cli.bench import costmodel
from comem_cli.bench.costmodel import Clock, CostParams, Engine, EngineParams, Request
from comem_cli.bench.latency import (PAPER_GLM47, PipelineRules, TokenCounter, Variant, Workload, add_ratios,
                                     load_replays, paper_check, simulate, variants)
from comem_cli.config import MemoryConfig
from comem_cli.memory.pipeline import MemoryContext
from comem_cli.rollouts import Span, StepRecord, ViewInfo
from comem_cli.views import build_view
from comem_cli.rollouts import read_text
from tests.conftest import TRAJECTORIES, run_cli


@pytest.fixture(scope="module")
def world():
    counter = TokenCounter()
    config = MemoryConfig(arm="comem", k=2)
    replays = load_replays([TRAJECTORIES], max_steps=100, command_s=1.0, counter=counter)
    return counter, replays, Workload(counter, config, 1024), config


# ----------------------------------------------------------------------------- the cost model
def _alone(params: EngineParams, prompt: int, output: int, batch: int = 1) -> float:
    """Mean latency of `batch` identical requests submitted together on an idle engine."""
    clock = Clock()
    engine = Engine(params, clock)
    reqs = [engine.submit(Request(run=i, pieces=((i * 1000 + 1, prompt),), output_tokens=output)) for i in range(batch)]
    clock.run()
    return sum(r.finished - r.submitted for r in reqs) / batch


def test_cost_model_is_monotone_in_prompt_length_and_batch():
    p = costmodel.MAIN_ENGINE
    prompts = [100, 1_000, 4_000, 16_000, 64_000]
    closed = [costmodel.request_latency(p, n, 200) for n in prompts]
    simulated = [_alone(p, n, 200) for n in prompts]
    assert closed == sorted(closed) and len(set(closed)) == len(closed)
    assert simulated == sorted(simulated) and len(set(simulated)) == len(simulated)
    assert [costmodel.prefill_time(p, n) for n in prompts] == sorted(costmodel.prefill_time(p, n) for n in prompts)
    batches = [1, 4, 16, 64, 256]
    closed_b = [costmodel.request_latency(p, 8_000, 200, batch=b) for b in batches]
    simulated_b = [_alone(p, 8_000, 200, batch=b) for b in batches]
    assert closed_b == sorted(closed_b) and len(set(closed_b)) == len(closed_b)
    assert simulated_b == sorted(simulated_b) and len(set(simulated_b)) == len(simulated_b)
    assert [costmodel.decode_iteration_time(p, b, 8_000) for b in batches] == sorted(
        costmodel.decode_iteration_time(p, b, 8_000) for b in batches)


def test_cached_prefix_is_nearly_free_and_the_cache_holds_a_run():
    p = costmodel.MAIN_ENGINE
    assert costmodel.prefill_time(p, 100, cached=20_000) < 0.2 * costmodel.prefill_time(p, 20_100)
    clock = Clock()
    engine = Engine(p, clock)
    first = engine.submit(Request(run="a", pieces=((1, 20_000),), output_tokens=10, reply_piece=(2, 10)))
    clock.run()
    second = engine.submit(Request(run="a", pieces=((1, 20_000), (2, 10), (3, 500)), output_tokens=10))
    other = engine.submit(Request(run="b", pieces=((1, 20_000),), output_tokens=10))
    clock.run()
    assert first.cached_tokens == 0 and second.cached_tokens == 20_010 and other.cached_tokens == 0


def test_cost_params_from_the_command_line():
    params = costmodel.apply_overrides(CostParams(), ["main.decode_base_s=0.5", "kv_capacity_tokens=1000"])
    assert params.main.decode_base_s == 0.5 and params.main.kv_capacity_tokens == params.memory.kv_capacity_tokens == 1000
    from comem_cli.errors import UserError

    for bad in (["nope=1"], ["main.decode_base_s=abc"], ["decode_base_s"]):
        with pytest.raises(UserError):
            costmodel.apply_overrides(CostParams(), bad)


# ----------------------------------------------------------------------------- the replay
def test_replay_is_deterministic_and_counts_real_view_tokens(world):
    counter, replays, workload, config = world
    few = replays[:4]
    plan = variants(["full", "mask", "sync", "comem"], [1, 2], None, None)
    rows_a, rows_b, traces = [], [], ({}, {})
    for rows, trace in ((rows_a, traces[0]), (rows_b, traces[1])):
        for c in (1, 3):
            for v in plan:
                t = trace.setdefault((c, v.arm, v.k, v.prewarm), {})
                rows.append(simulate(few, v, c, params=CostParams(), workload=workload, config=config, trace=t))
    add_ratios(rows_a)
    add_ratios(rows_b)
    assert rows_a == rows_b
    assert traces[0] == traces[1]
    # full context: step n of run r is exactly the real view of steps 0..n-1, counted message by message
    full = traces[0][(1, "full", None, None)]
    for run_index, record in full.items():
        replay = few[run_index % len(few)]
        assert len(record["steps"]) == len(replay.steps)
        for n, (_, cutoff, waits, prompt_tokens, _) in enumerate(record["steps"]):
            view = build_view(replay.system, replay.task, replay.steps[:n])
            expected = sum(counter.tokens(m["content"]) + 5 for m in view.messages) + 3
            assert (cutoff, waits, prompt_tokens) == (None, [], expected)
    assert {r["arm"] for r in rows_a} == {"full", "mask", "sync", "comem"}
    assert all(r["speedup_vs_full"] is not None and r["speedup_vs_sync"] is not None for r in rows_a if r["arm"] != "mask")


# ----------------------------------------------------------------------------- schedule vs MemoryContext
class _Gate:
    """A memory backend whose jobs finish when the test releases them (as in test_pipeline)."""

    def __init__(self):
        import threading

        self.events: dict[str, object] = {}
        self.lock = threading.Lock()

    def gate(self, request_id):
        import threading

        with self.lock:
            return self.events.setdefault(request_id, threading.Event())

    def summarize(self, messages, *, max_tokens, request_id):
        self.gate(request_id).wait(timeout=20)
        return "## Task\nsummary of the steps so far, covering everything that happened."

    def cancel(self, request_id):
        self.gate(request_id).set()

    def close(self):
        pass


def _real_schedule(replay, k: int, every: int, budget: int, visible_at: dict[int, tuple[int, int] | None]):
    """Drive the real MemoryContext over a recorded trajectory. The job with cut-off c finishes at
    visible_at[c] = (n, 0): just before step n is prepared, or (n, 1): just before step n's end is
    reported (ctx.completed); None: only when the pipeline waits for it."""
    pool = ThreadPoolExecutor(max_workers=4)
    gate = _Gate()
    ctx = MemoryContext(MemoryConfig(arm="comem" if k else "sync", k=k, every=every, raw_budget=budget, timeout_s=30),
                        replay.system, replay.task, gate, pool=pool)

    def release_through(job):
        for j in ctx.jobs:
            if j.cutoff <= job.cutoff:
                gate.gate(f"comem-{j.id}").set()

    ctx.on_wait = lambda job, reason: release_through(job)
    def release_due(point):
        for job in list(ctx.jobs):
            at = visible_at.get(job.cutoff)
            if at is not None and at <= point and job.status not in ("superseded",):
                release_through(job)
                assert job.done.wait(10)

    steps, out = [], []
    for n, step in enumerate(replay.steps):
        release_due((n, 0))
        view, events = ctx.prepare(steps)
        waits = [(e["reason"], next(j.cutoff for j in ctx.jobs if j.id == e["job"])) for e in events if e["kind"] == "wait"]
        out.append((view.summary_cutoff, waits))
        t = time.time()
        steps.append(StepRecord(step=n, view=ViewInfo(), response=step.response, action=step.action, observation=step.observation,
                                model=Span(start=t, end=t), command=Span(start=t, end=t)))
        release_due((n, 1))
        ctx.completed(steps)
        deadline = time.time() + 5
        while ctx.active is not None and ctx.active.status == "queued" and time.time() < deadline:
            time.sleep(0.001)
    ctx.close()
    pool.shutdown(wait=False, cancel_futures=True)
    return out


@pytest.mark.parametrize("k,every,budget,memory_speed", [
    (2, 2, 12_000, 1.0),    # the default comem arm
    (1, 1, 12_000, 0.3),    # a slow memory model: waits at the deadline
    (4, 2, 12_000, 0.3),    # queued jobs superseded by newer launches
    (2, 2, 1_500, 1.0),     # a small raw budget: budget waits and launches in prepare
    (0, 1, 12_000, 1.0),    # sync
])
def test_virtual_schedule_matches_the_real_memory_context(world, k, every, budget, memory_speed):
    counter, replays, workload, _ = world
    replay = max(replays[:8], key=lambda r: len(r.steps))
    config = MemoryConfig(arm="comem", k=k, every=every, raw_budget=budget)
    slow = costmodel.apply_overrides(CostParams(), [f"memory.decode_base_s={0.006 / memory_speed}"])
    trace: dict = {}
    simulate([replay], Variant("comem" if k else "sync", k, every, False), 1, params=slow, workload=workload,
             config=config, trace=trace)
    record = trace[0]
    # the points where the driver may look: before each prepare, and before each step's end is reported
    points = sorted([((n, 0), s[0]) for n, s in enumerate(record["steps"])] + [((n, 1), t) for n, t in enumerate(record["completed"])])
    waited = {c for s in record["steps"] for _, c in s[2]}
    visible_at: dict[int, tuple[int, int] | None] = {}
    for cutoff, status, started, finished in record["jobs"]:
        if status != "done" or cutoff in waited:
            visible_at[cutoff] = None
        else:
            visible_at[cutoff] = next((p for p, t in points if t >= finished), None)
    simulated = [(s[1], list(s[2])) for s in record["steps"]]
    real = _real_schedule(replay, k, every, budget, visible_at)
    assert real == simulated
    if memory_speed < 1 or k == 0:
        assert any(w for _, w in simulated), "the case is meant to exercise waits"


def test_rules_class_alone_supersedes_queued_jobs():
    now = [0.0]
    rules = PipelineRules(k=4, every=1, raw_budget=10**9, timeout_s=300, now=lambda: now[0])
    started = []
    rules.on_start = started.append
    for n in range(1, 4):
        rules.completed(n)
    assert [j.cutoff for j in started] == [1]
    assert [j.status for j in rules.jobs] == ["running", "superseded", "queued"]
    rules.finish(rules.jobs[0])
    assert [j.cutoff for j in started] == [1, 3]


# ----------------------------------------------------------------------------- calibration and targets
def test_paper_calibration_within_25_percent(world):
    _, replays, workload, config = world
    rows = paper_check(replays, CostParams(), workload, config)
    assert [r["concurrency"] for r in rows] == list(PAPER_GLM47)
    for r in rows:
        assert abs(r["off"]) <= 0.25, rows


@pytest.fixture(scope="module")
def target_rows(world):
    _, replays, workload, config = world
    rows = []
    for c in (1, 8, 32, 128):
        for v in (Variant("full", None, None, None), Variant("sync", 0, 2, True), Variant("sync", 0, 4, True),
                  Variant("comem", 2, 2, True), Variant("comem", 4, 4, True)):
            rows.append(simulate(replays, v, c, params=CostParams(), workload=workload, config=config))
    add_ratios(rows)
    return {(r["arm"], r["k"], r["concurrency"]): r for r in rows}


# Issue 5's targets, measured with the default (paper-calibrated) cost model on the bundled
# trajectories. Those not met are strict xfails: the measured numbers are in the reasons, and the
# test fails the day the model meets them (then drop the mark).
def test_target_comem_faster_than_sync_at_every_concurrency(target_rows):
    for c in (1, 8, 32, 128):
        for k in (2, 4):
            assert target_rows[("comem", k, c)]["speedup_vs_sync"] > 1.0, target_rows[("comem", k, c)]


def test_target_hidden_fraction_when_the_memory_model_is_faster_than_k_steps(target_rows):
    checked = 0
    for (arm, k, c), r in target_rows.items():
        if arm == "comem" and r["memory_job_s"] <= k * r["agent_step_s"]:
            assert r["hidden_fraction"] >= 0.95, r
            checked += 1
    assert checked >= 4  # k=4 at every concurrency


def test_target_no_slowdown_against_full_at_concurrency_1_with_k4(target_rows):
    assert target_rows[("comem", 4, 1)]["speedup_vs_full"] >= 1.0


@pytest.mark.xfail(strict=True, reason="measured 0.986x: at k=2 a 1,024-token summary takes ~2.5 s with the calibrated "
                                       "memory engine, a bit more than two typical agent steps (~2.4 s), so deadline waits remain "
                                       "(222 waits, 62 s over 32 runs); k=4 gives 1.016x")
def test_target_no_slowdown_against_full_at_concurrency_1_with_k2(target_rows):
    assert target_rows[("comem", 2, 1)]["speedup_vs_full"] >= 1.0


@pytest.mark.xfail(strict=True, reason="measured 0.84x (k=2) and 1.10x (k=4): at 32 runs the calibrated main server is "
                                       "not saturated (full-context steps ~0.4 s vs 1 s commands), end-to-end is the longest "
                                       "trajectory's 95 steps of command time, and k=2 waits for the memory model")
def test_target_comem_k2_1_5x_faster_than_full_at_32(target_rows):
    assert target_rows[("comem", 2, 32)]["speedup_vs_full"] >= 1.5


# ----------------------------------------------------------------------------- the real CLI
def _small_set(tmp_path, n=2):
    folder = tmp_path / "trajs"
    folder.mkdir()
    texts = {p.name.removesuffix(".gz"): read_text(p) for p in TRAJECTORIES.glob("*/*.traj.json.gz")}
    for _, name in sorted((len(text), name) for name, text in texts.items())[:n]:
        (folder / name).write_text(texts[name])
    return folder


def test_serving_local_replay_reports_ratios(tmp_path):
    folder = _small_set(tmp_path)
    out = tmp_path / "rows.json"
    r = run_cli("bench", "latency", "--trajectories", str(folder), "--serving", "local", "--concurrency", "1,2",
                "--memory", "full,comem", "--k", "1", "--max-steps", "3", "--command-s", "0.02", "--summary-tokens", "16",
                "--json", str(out), timeout=240)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "serving: local" in r.stdout
    rows = json.loads(out.read_text())
    assert {(row["arm"], row["concurrency"]) for row in rows} >= {("full", 1), ("sync", 1), ("comem", 1), ("full", 2), ("comem", 2)}
    for row in rows:
        for key in ("arm", "k", "concurrency", "end_to_end_s", "speedup_vs_full", "speedup_vs_sync", "hidden_fraction", "waits"):
            assert key in row
        assert row["serving"] == "local" and row["end_to_end_s"] > 0 and row["speedup_vs_full"] > 0
        assert row["prewarm"] in (None, False)


@pytest.mark.parametrize("args,needle", [
    (["--trajectories", "EMPTY"], "no trajectories found"),
    (["--trajectories", "TRAJ", "--concurrency", "0"], "--concurrency"),
    (["--trajectories", "TRAJ", "--concurrency", "8,x"], "--concurrency"),
    (["--trajectories", "TRAJ", "--k", "1,a"], "--k"),
    (["--trajectories", "TRAJ", "--serving", "gpu"], "--serving"),
    (["--trajectories", "TRAJ", "--cost-param", "bogus=1"], "--cost-param"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    traj = _small_set(tmp_path, 1)
    args = [str(tmp_path / "empty") if a == "EMPTY" else str(traj) if a == "TRAJ" else a for a in args]
    r = run_cli("bench", "latency", *args, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_other_benchmarks_still_take_one_integer_k():
    r = run_cli("bench", "swe-mini", "--k", "1,2", "--export-dataset", "/dev/null", timeout=60)
    assert r.returncode == 2 and "--k takes one integer" in r.stderr, r.stderr


def test_prewarm_sends_a_one_token_request_and_never_raises():
    from comem_cli.config import ModelConfig
    from comem_cli.models import LitellmModel
    from comem_cli.testing.scripted_server import Script, ScriptedServer

    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"},
                {"role": "user", "content": "<memory>summary</memory>"}]
    with ScriptedServer(Script(["THOUGHT: x\n\n```bash\nls\n```"])) as server:
        result = LitellmModel(ModelConfig(name="openai/scripted", api_base=server.url)).prewarm(messages)
        assert result["ok"] and result["error"] is None
        assert server.requests[0]["max_tokens"] == 1 and server.requests[0]["messages"] == messages
    down = LitellmModel(ModelConfig(name="openai/scripted", api_base="http://127.0.0.1:9/v1", timeout_s=5)).prewarm(messages)
    assert down["ok"] is False and down["error"]
