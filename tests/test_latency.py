"""`comem bench latency`: the cost model, the virtual-time replay, its schedule against the real
MemoryContext, the paper calibration, the benchmark targets, a real `--serving local` run, bad input.

Runs on the trajectories `comem bench latency` replays by default (resources.default_trajectories); tokens
are counted once per test module (fixture).
"""

from __future__ import annotations

import json
import time

import pytest

from comem_cli.config import ARMS, MemoryConfig
from comem_cli.latency import costmodel
from comem_cli.latency.costmodel import Clock, CostParams, Engine, EngineParams, Request
from comem_cli.latency.measure import variants
from comem_cli.latency.paper import PAPER_GLM47, paper_check
from comem_cli.latency.results import Variant, add_ratios
from comem_cli.latency.simulation import simulate
from comem_cli.latency.workload import TokenCounter, Workload, load_replays
from comem_cli.memory.pipeline import MemoryContext, MemoryPool
from comem_cli.rollouts import Span, StepRecord, ViewInfo
from comem_cli.views import build_view
from comem_cli.rollouts import read_text
from tests.conftest import TRAJECTORIES, run_cli


@pytest.fixture(scope="module")
def world():
    counter = TokenCounter()
    config = MemoryConfig(arm="comem")
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


def test_requests_are_served_first_come_first_served():
    """One slot (max_seqs=1), 10 ms per decode iteration: requests wait for it in arrival order."""
    p = EngineParams(decode_base_s=0.01, decode_per_seq_s=0, decode_per_kv_token_s=0, prefill_per_token_s=1e-9, max_seqs=1)
    clock = Clock()
    engine = Engine(p, clock)
    order = []
    reqs = [Request(run=i, pieces=((i + 1, 10),), output_tokens=10, on_done=lambda r: order.append(r.run)) for i in range(5)]
    for r in reqs:
        engine.submit(r)
    late = Request(run=9, pieces=((9, 10),), output_tokens=10, on_done=lambda r: order.append(r.run))
    clock.at(0.05, lambda: engine.submit(late))
    clock.run()
    assert order == [0, 1, 2, 3, 4, 9]
    assert [round(r.finished, 3) for r in reqs] == sorted(round(r.finished, 3) for r in reqs)


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
    plan = variants(list(ARMS), [1, 2], None, None)
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
        for n, (_, cutoff, waits, prompt_tokens, _, _) in enumerate(record["steps"]):
            view = build_view(replay.system, replay.task, replay.steps[:n])
            expected = sum(counter.tokens(m["content"]) + 5 for m in view.messages) + 3
            assert (cutoff, waits, prompt_tokens) == (None, [], expected)
    assert {r["arm"] for r in rows_a} == set(ARMS) | {"limit"}
    assert all(r["speedup_vs_full"] is not None and r["speedup_vs_sync"] is not None for r in rows_a)
    assert all(r["of_limit"] is not None for r in rows_a if r["policy"] not in ("full", "mask"))


# ----------------------------------------------------------------------------- schedule vs MemoryContext
class _Gate:
    """A memory backend whose jobs finish when the test releases them (all the requests of a job
    at once: its sections and their prefill, since it batches like a serving engine)."""

    name = "gate"
    parallel = True

    def __init__(self):
        import threading

        self.events: dict[str, object] = {}
        self.lock = threading.Lock()

    def gate(self, request_id):
        import threading

        with self.lock:
            return self.events.setdefault(request_id, threading.Event())

    def summarize(self, messages, *, max_tokens, request_id):
        self.gate(_job_key(request_id)).wait(timeout=30)
        return "## Task\nsummary of the steps so far, covering everything that happened."

    def cancel(self, request_id):
        self.gate(_job_key(request_id)).set()

    def close(self):
        pass


def _job_key(request_id: str) -> str:
    return "-".join(request_id.split("-")[:2])  # comem-<job>[-prefill | -<section>]


def _until(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "the memory worker did not react"
        time.sleep(0.0005)


def _real_schedule(replay, config: MemoryConfig, record: dict):
    """Drive the real, threaded MemoryContext over a recorded trajectory with the simulation's step
    timings: its clock reads the simulated time, and each job is released at its simulated finish."""
    now = [0.0]
    gate = _Gate()
    ctx = MemoryContext(config, replay.system, replay.task, gate, pool=MemoryPool(4, name="test-latency"), clock=lambda: now[0])
    finish = {cutoff: finished for cutoff, status, _, _, finished in record["jobs"] if status == "done"}
    waits_end = {(n, c): end for n, s in enumerate(record["steps"]) for _, c, end in s[2]}
    released: set[int] = set()

    def release(job, at):
        now[0] = at
        released.add(job.id)
        gate.gate(f"comem-{job.id}").set()
        _until(lambda: not job.live and not ctx.schedule.ticket)

    def release_due(t):
        while True:
            due = sorted((finish[j.cutoff], j) for j in ctx.jobs
                         if j.status == "running" and j.id not in released and finish.get(j.cutoff, float("inf")) <= t)
            if not due:
                return
            release(due[0][1], due[0][0])

    step_n = [0]

    def on_wait(job, reason):  # runs with the pipeline's lock held: release without waiting for the worker
        now[0] = waits_end[(step_n[0], job.cutoff)]
        released.add(job.id)
        gate.gate(f"comem-{job.id}").set()

    ctx.on_wait = on_wait
    steps, out = [], []
    for n, step in enumerate(replay.steps):
        step_n[0] = n
        t_prepare = record["steps"][n][0]
        release_due(t_prepare)
        now[0] = t_prepare
        view, events = ctx.prepare(steps)
        _until(lambda: not ctx.schedule.ticket)
        waits = [(e["reason"], next(j.cutoff for j in ctx.jobs if j.id == e["job"])) for e in events if e["kind"] == "wait"]
        masked = view.masked[-1] + 1 if view.masked else 0
        out.append((view.summary_cutoff, waits, masked))
        t = now[0]
        steps.append(StepRecord(step=n, view=ViewInfo(), response=step.response, action=step.action, observation=step.observation,
                                model=Span(start=t, end=t), command=Span(start=t, end=t)))
        release_due(record["completed"][n])
        now[0] = record["completed"][n]
        ctx.completed(steps)
        _until(lambda: not ctx.schedule.ticket)
    ctx.close()
    ctx.pool.close()
    return out, [(j.cutoff, j.status) for j in ctx.jobs]


@pytest.mark.parametrize("arm,k,every,launch_tokens,budget,memory_speed", [
    ("comem", 2, None, 2000, 12_000, 1.0),   # the default comem arm
    ("comem", 2, 2, 0, 3_000, 0.2),          # a slow memory model and a small budget: masks, budget waits
    ("comem", 4, 1, 0, 12_000, 0.3),         # queued launches superseded by newer ones
    ("sync", 0, 2, 0, 12_000, 1.0),          # blocking at every launch
    ("paper", 1, 4, 0, 12_000, 0.3),         # deadline waits
    ("threshold", None, None, 0, 4_000, 0.5),  # compaction from 80% of the budget, blocking at 95%
])
def test_simulation_and_threaded_memory_context_drive_the_same_schedule(world, arm, k, every, launch_tokens, budget, memory_speed):
    counter, replays, workload, _ = world
    replay = max(replays[:8], key=lambda r: len(r.steps))
    config = MemoryConfig(arm=arm, k=k or 0, every=every, launch_tokens=launch_tokens, raw_budget=budget, workers=4, check=False)
    slow = costmodel.apply_overrides(CostParams(), [f"memory.decode_base_s={0.0025 / memory_speed}"])
    trace: dict = {}
    simulate([replay], Variant(arm, k, every, False, launch_tokens=launch_tokens), 1, params=slow, workload=workload,
             config=config, trace=trace)
    record = trace[0]
    simulated = [(s[1], [(reason, c) for reason, c, _ in s[2]], s[5]) for s in record["steps"]]
    real, real_jobs = _real_schedule(replay, config, record)
    assert real == simulated
    assert real_jobs == [(cutoff, status) for cutoff, status, _, _, _ in record["jobs"]]
    if arm in ("sync", "paper") or budget < 12_000:
        assert any(w or m for _, w, m in simulated), "the case is meant to exercise waits or masks"


# ----------------------------------------------------------------------------- calibration and targets
def test_paper_calibration_within_25_percent(world):
    _, replays, workload, config = world
    rows = paper_check(replays, CostParams(), workload, config)
    assert [r["concurrency"] for r in rows] == list(PAPER_GLM47)
    for r in rows:
        assert abs(r["off"]) <= 0.25, rows


@pytest.fixture(scope="module")
def target_rows(world):
    """Issue 10's targets, default calibration, default comem settings (the README's table)."""
    _, replays, workload, config = world
    rows = []
    plan = variants(list(ARMS), [config.k], None, False)
    for c in (1, 8, 32, 128):
        for v in plan:
            rows.append(simulate(replays, v, c, params=CostParams(), workload=workload, config=config))
    add_ratios(rows)
    return {(r["arm"], r["policy"], r["concurrency"]): r for r in rows}


CONCURRENCIES = (1, 8, 32, 128)


def test_target_default_comem_never_slower_than_full(target_rows):
    for c in CONCURRENCIES:
        assert target_rows[("comem", "comem", c)]["speedup_vs_full"] >= 1.0, target_rows[("comem", "comem", c)]


def test_target_default_comem_reaches_95_percent_of_the_limit_up_to_32_runs(target_rows):
    for c in (1, 8, 32):
        assert target_rows[("comem", "comem", c)]["of_limit"] >= 0.95, target_rows[("comem", "comem", c)]


def test_target_default_comem_reaches_90_percent_of_the_limit_at_128_runs(target_rows):
    """Measured 0.92 (0.88 when one request writes the whole summary: at 128 runs a 1,024-token summary
    then takes ~5.5 s of decoding against ~1.7 s agent steps; its sections in parallel take ~2.4 s)."""
    assert target_rows[("comem", "comem", 128)]["of_limit"] >= 0.90


def test_target_comem_faster_than_every_blocking_peer(target_rows):
    for c in CONCURRENCIES:
        comem = target_rows[("comem", "comem", c)]["end_to_end_s"]
        for peer in ("sync", "paper", "threshold"):
            assert comem < target_rows[(peer, peer, c)]["end_to_end_s"], (c, peer)


def test_target_comem_never_waits_and_hides_the_memory_model(target_rows):
    for c in CONCURRENCIES:
        row = target_rows[("comem", "comem", c)]
        assert row["waits"] == 0 and row["hidden_fraction"] >= 0.95, row


def test_target_iso_hardware_comem_never_slower_than_full(world):
    """`--memory-engine main` (no extra hardware): the payoff rule keeps default comem >= 1.00x of full
    (measured 1.01x / 1.03x / 1.02x / 1.24x at 1 / 8 / 32 / 128 runs; with one request per summary and
    without the rule 1.01x / 1.00x / 0.98x / 1.03x)."""
    _, replays, workload, config = world
    for c in CONCURRENCIES:
        full, comem = (simulate(replays, v, c, params=CostParams(), workload=workload, config=config, memory_engine="main")
                       for v in (Variant("full"), Variant("comem", config.k, None, False, launch_tokens=config.launch_tokens)))
        assert full["end_to_end_s"] / comem["end_to_end_s"] >= 1.0, (c, comem)


def test_memory_engine_main_serves_summaries_on_the_main_engine(world):
    _, replays, workload, config = world
    few = replays[:6]
    separate = simulate(few, Variant("comem", 2, None, False, launch_tokens=2000), 8, params=CostParams(), workload=workload,
                        config=config)
    shared = simulate(few, Variant("comem", 2, None, False, launch_tokens=2000), 8, params=CostParams(), workload=workload,
                      config=config, memory_engine="main")
    assert separate["memory_engine"] == "separate" and shared["memory_engine"] == "main"
    assert shared["end_to_end_s"] != separate["end_to_end_s"] and shared["peak_main_batch"] >= separate["peak_main_batch"]


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
    (["--trajectories", "TRAJ", "--memory", "full,bogus"], "--memory"),
    (["--trajectories", "TRAJ", "--memory-engine", "gpu"], "--memory-engine"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    traj = _small_set(tmp_path, 1)
    args = [str(tmp_path / "empty") if a == "EMPTY" else str(traj) if a == "TRAJ" else a for a in args]
    r = run_cli("bench", "latency", *args, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_every_arm_has_its_row_and_limit_in_json(tmp_path):
    folder = _small_set(tmp_path, 3)
    out = tmp_path / "rows.json"
    r = run_cli("bench", "latency", "--trajectories", str(folder), "--concurrency", "1,4", "--max-steps", "30",
                "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "extra hardware" in r.stdout and "speed-up vs full" in r.stdout
    rows = json.loads(out.read_text())
    for c in (1, 4):
        arms = {row["arm"] for row in rows if row["concurrency"] == c}
        assert arms == set(ARMS) | {"limit"}
        for row in rows:
            if row["policy"] in ("sync", "paper", "threshold", "comem"):
                assert 0 < row["of_limit"] <= 1.05 and row["limit_s"] > 0
    limits = {row["policy"] for row in rows if row["arm"] == "limit"}
    assert limits == {"sync", "paper", "threshold", "comem"}


def test_summary_sections_option_reaches_the_replayed_pipeline(tmp_path):
    """`--summary-sections 1` (one request per summary) against the default four parallel section
    requests, through the CLI: the sectioned summaries are faster on the same cost model."""
    folder = _small_set(tmp_path, 2)
    jobs = {}
    for n in (1, 4):
        out = tmp_path / f"rows-{n}.json"
        r = run_cli("bench", "latency", "--trajectories", str(folder), "--concurrency", "1", "--max-steps", "20",
                    "--memory", "comem", "--summary-sections", str(n), "--json", str(out), timeout=300)
        assert r.returncode == 0, r.stderr + r.stdout
        (row,) = [row for row in json.loads(out.read_text()) if row["arm"] == "comem"]
        jobs[n] = row["memory_job_s"]
    assert jobs[4] < 0.6 * jobs[1], jobs


def test_the_two_bench_programs_have_only_their_own_options():
    latency = run_cli("bench", "latency", "--help", timeout=60).stdout
    runner = run_cli("bench", "swe-mini", "--help", timeout=60).stdout
    for panel in ("Model", "Memory", "Run", "Output"):
        assert panel in latency and panel in runner
    for option in ("--trajectories", "--concurrency", "--serving", "--memory-engine", "--memory-free", "--calibrate"):
        assert option in latency and option not in runner
    for option in ("--instances", "--evaluate-only", "--executor", "--image-template", "--memory-backend"):
        assert option in runner and option not in latency
    assert "--summary-sections" in latency and "--summary-sections" in runner


def test_other_benchmarks_still_take_one_integer_k():
    r = run_cli("bench", "swe-mini", "--k", "1,2", "--export-dataset", "/dev/null", timeout=60)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Invalid value for '--k'" in lines[0] and "integer" in lines[0], r.stderr


def test_prewarm_sends_a_one_token_request_and_never_raises():
    from comem_cli.config import ModelConfig
    from comem_cli.models import LitellmModel
    from comem_cli.replay_server import Script, ScriptedServer

    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"},
                {"role": "user", "content": "<memory>summary</memory>"}]
    with ScriptedServer(Script(["THOUGHT: x\n\n```bash\nls\n```"])) as server:
        result = LitellmModel(ModelConfig(name="openai/scripted", api_base=server.url)).prewarm(messages)
        assert result["ok"] and result["error"] is None
        assert server.requests[0]["max_tokens"] == 1 and server.requests[0]["messages"] == messages
    down = LitellmModel(ModelConfig(name="openai/scripted", api_base="http://127.0.0.1:9/v1", timeout_s=5)).prewarm(messages)
    assert down["ok"] is False and down["error"]


def test_endpoint_serving_forces_the_recorded_reply_lengths_through_the_llm_helper(tmp_path):
    """`--serving endpoint` against two real HTTP servers: every request asks for exactly the recorded
    reply length (max_tokens = min_tokens, ignore_eos), and each arm's row is measured."""
    from comem_cli.replay_server import Script, ScriptedServer

    trajs = tmp_path / "trajs"
    trajs.mkdir()
    first = sorted(TRAJECTORIES.glob("*/*.traj.json.gz"))[0]
    (trajs / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "rows.json"
    with ScriptedServer(Script(["THOUGHT: ok\n\n```bash\nls\n```"] * 50)) as main, \
            ScriptedServer(Script(["a summary"] * 50)) as memory:
        r = run_cli("bench", "latency", "--trajectories", str(trajs), "--serving", "endpoint", "-m", "openai/main",
                    "--api-base", main.url, "--memory-model", "openai/mem", "--memory-api-base", memory.url,
                    "--memory", "full,comem", "--concurrency", "1", "--max-steps", "4", "--command-s", "0.01",
                    "--repeat", "2", "--json", str(out), timeout=300)
        replies = [b for b in main.requests if b.get("max_tokens", 0) > 1]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert replies and all(b["min_tokens"] == b["max_tokens"] and b["ignore_eos"] is True for b in replies)
    rows = json.loads(out.read_text())
    assert {row["arm"] for row in rows} >= {"full", "comem"} and all(row["serving"] == "endpoint" for row in rows)
    # --repeat 2: every row replayed twice (in two rounds over the plan), its fastest try kept
    assert "round 2 of 2" in r.stdout
    assert all(len(row["tries_s"]) == 2 and row["end_to_end_s"] == min(row["tries_s"]) for row in rows)
    assert len(replies) == 2 * 4 * len(rows)  # 4 steps per row and try (limits included)
