"""`--serving model`: the replay in VIRTUAL time (a discrete-event simulation; nothing sleeps).

Two engines of `comem_cli.latency.costmodel`, the main model's and the memory model's (or the main
engine for both, `--memory-engine main`), each batching the requests of all concurrent runs with
prefix caching and KV-cache capacity. Each run is a process shaped like the agent's loop (prepare
the view, call the main model, run the command, report the step) over a `SimulatedContext`: the
virtual twin of `MemoryContext`, with the same methods, running the very `Schedule`
(comem_cli/memory/schedule.py) and carrying out its commands against the engines: a virtual memory
pool of `workers` slots shared by all runs (first come, first served, as the real `MemoryPool`), a
summary's requests as `summary_requests` says (the function `MemoryContext` sends them by), the
pre-warm requests the schedule asks for, and blocking (a `yield`) where it says wait.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from comem_cli.config import MemoryConfig
from comem_cli.latency.costmodel import Clock, CostParams, Engine, Request
from comem_cli.latency.results import RunStat, StepStat, Variant, summarize_runs
from comem_cli.latency.workload import Replay, Workload
from comem_cli.memory.pipeline import context_for, overlap
from comem_cli.memory.schedule import Cancel, Job, Prewarm, Schedule, Submit, Use, policy_for
from comem_cli.memory.transcript import section_groups, summary_requests
from comem_cli.views import build_view, estimate_tokens


class _Proc:
    """A generator-based process on the virtual clock. It yields commands: ('sleep', s),
    ('call', engine, request) or ('job', job, give_up_at)."""

    def __init__(self, clock: Clock, gen, on_exit: Callable[[], None], waiters: dict[int, list]):
        self.clock, self.gen, self.on_exit, self.waiters = clock, gen, on_exit, waiters
        clock.at(clock.now, lambda: self.resume(None))

    def resume(self, value) -> None:
        try:
            cmd = self.gen.send(value)
        except StopIteration:
            self.on_exit()
            return
        kind = cmd[0]
        if kind == "sleep":
            self.clock.at(self.clock.now + cmd[1], lambda: self.resume(None))
        elif kind == "call":
            engine, request = cmd[1], cmd[2]
            request.on_done = lambda r: self.resume(r)
            engine.submit(request)
        elif kind == "job":
            job, give_up_at = cmd[1], cmd[2]
            state = {"done": False}

            def wake():
                if not state["done"]:
                    state["done"] = True
                    self.resume(None)

            self.waiters.setdefault(job.id, []).append(wake)
            self.clock.at(give_up_at, wake)
        else:  # pragma: no cover - a bug
            raise RuntimeError(f"unknown command {cmd!r}")


class VirtualPool:
    """The memory thread pool in virtual time: `workers` slots, tickets served first come, first served
    (as `MemoryPool`)."""

    def __init__(self, workers: int):
        self.free = workers
        self.queue: deque[Callable[[], bool]] = deque()  # a ticket returns True when it occupies the slot

    def submit(self, ticket: Callable[[], bool]) -> None:
        self.queue.append(ticket)
        self._run()

    def release(self) -> None:
        self.free += 1
        self._run()

    def _run(self) -> None:
        while self.free and self.queue:
            ticket = self.queue.popleft()
            self.free -= 1
            if not ticket():
                self.free += 1


@dataclass
class World:
    """What all simulated runs share: the virtual clock, the engines, the memory pool, the workload."""

    clock: Clock
    main: Engine
    memory: Engine
    pool: VirtualPool
    workload: Workload
    ids: itertools.count = field(default_factory=itertools.count)  # job ids, unique across runs
    waiters: dict[int, list] = field(default_factory=dict)  # job id -> processes blocked on it

    def wake(self, job: Job) -> None:
        for fn in self.waiters.pop(job.id, []):
            fn()


@dataclass(frozen=True)
class VirtualView:
    """A view as the cost model sees it: its token pieces, the summary's cut-off, the mask."""

    pieces: tuple[tuple[int, int], ...]
    cutoff: int | None = None
    mask_before: int = 0


class PlainContext:
    """`full`, `mask`: the product's own context (nothing runs in the background, nothing waits)."""

    def __init__(self, config: MemoryConfig, replay: Replay, world: World):
        self.context = context_for(config, replay.system, replay.task)
        self.key = (config.arm, config.mask_window, replay.id)
        self.world = world

    def prepare(self, steps):
        """A generator, as `SimulatedContext.prepare`, that never waits."""
        pieces = self.world.workload.cached_view((*self.key, len(steps)), lambda: self.context.prepare(steps)[0])
        return VirtualView(pieces), []
        yield  # pragma: no cover - makes this a generator

    def completed(self, steps) -> None:
        pass

    def close(self) -> None:
        pass


class SimulatedContext:
    """`MemoryContext` in virtual time: `prepare` (a generator: the run's process yields while it
    waits), `completed`, `close`; the schedule's commands carried out against the cost model's engines."""

    def __init__(self, config: MemoryConfig, replay: Replay, run_id: int, world: World, *, free: bool = False):
        self.schedule = Schedule(policy_for(config), ids=world.ids)
        self.waves = summary_requests(section_groups(config.sections), config.max_summary_tokens)
        self.incremental = config.incremental
        self.replay, self.run_id, self.owner, self.world = replay, run_id, ("memory", run_id), world
        self.free = free  # a memory model that costs nothing: the summary is there at once
        self.steps: list = []

    @property
    def jobs(self) -> list[Job]:
        return self.schedule.jobs

    # -- the schedule's commands -----------------------------------------------------------------
    def _drain(self) -> None:
        w = self.world
        for command in self.schedule.drain():
            if isinstance(command, Submit):
                w.pool.submit(self._work)
            elif isinstance(command, Cancel):
                live = [r for r in command.job.request or [] if r.finished is None and not r.cancelled]
                for request in live:
                    w.memory.cancel(request)
                if live:  # the job held one pool slot
                    w.pool.release()
                w.wake(command.job)
            elif isinstance(command, Prewarm):  # rule 7: the prompt the next call will start with
                view = build_view(self.replay.system, self.replay.task, self.steps, summary_cutoff=command.job.cutoff,
                                  summary=w.workload.summary(self.replay, command.job.cutoff))
                w.main.submit(Request(run=self.run_id, pieces=w.workload.view_pieces(view), output_tokens=1, kind="prewarm"))

    def completed(self, steps) -> None:
        for step in steps[len(self.steps):]:
            self.schedule.completed(estimate_tokens(step.response), estimate_tokens(step.observation), self.world.clock.now)
        self.steps = list(steps)
        self._drain()

    def _work(self) -> bool:
        """A memory slot is free for this run: send the job the schedule picks (False: none, slot unused)."""
        job = self.schedule.start(self.world.clock.now)
        self._drain()
        if job is None:
            return False
        if self.free:
            self._finished(job)
            return True
        previous = self.schedule.best() if self.incremental else None
        job.request = []
        self._send(job, previous.cutoff if previous is not None else None, 0)
        return True

    def _send(self, job: Job, previous: int | None, wave: int) -> None:
        """Wave `wave` of the job's requests; the next wave when all of them are answered."""
        w, requests = self.world, self.waves[wave]
        left = [len(requests)]

        def answered(_request) -> None:
            left[0] -= 1
            if left[0] == 0:
                if wave + 1 < len(self.waves):
                    self._send(job, previous, wave + 1)
                else:
                    self._finished(job)

        for r in requests:
            job.request.append(Request(run=self.owner, pieces=w.workload.memory_pieces(self.replay, job.cutoff, previous, r.sections),
                                       output_tokens=r.max_tokens, on_done=answered))
            w.memory.submit(job.request[-1])

    def _finished(self, job: Job) -> None:
        self.world.pool.release()
        self.schedule.finish(job, self.world.clock.now, summary="")
        self._drain()
        self.world.wake(job)

    # -- views -----------------------------------------------------------------------------------
    def prepare(self, steps):
        """The view for the next call, after the waits the schedule asks for: yields ("job", job,
        give-up time) while blocked; returns (VirtualView, waits as (reason, job cut-off, start, end))."""
        clock, waits = self.world.clock, []
        while True:
            decision = self.schedule.plan(clock.now)
            self._drain()
            if isinstance(decision, Use):
                break
            start = clock.now
            if decision.job.live:
                yield "job", decision.job, decision.until
            self.schedule.waited(decision, clock.now)
            self._drain()
            waits.append((decision.reason, decision.job.cutoff, start, clock.now))
        cutoff, mask_before, replay = decision.cutoff, decision.mask_before, self.replay

        def make():
            return build_view(replay.system, replay.task, steps, summary_cutoff=cutoff, mask_before=mask_before,
                              summary=self.world.workload.summary(replay, cutoff) if cutoff is not None else None)

        pieces = self.world.workload.cached_view(("summary", replay.id, len(steps), cutoff, mask_before), make)
        return VirtualView(pieces, cutoff, mask_before), waits

    def close(self) -> None:
        self.schedule.close(self.world.clock.now)
        self._drain()


def run_process(run_id: int, replay: Replay, v: Variant, stat: RunStat, world: World, config: MemoryConfig,
                memory_engine: str, record: dict[str, list] | None):
    """One run, as the agent's loop: prepare the view, call the main model, run the command, report the step."""
    steps, busy = replay.steps, []
    if v.summarizes:
        ctx = SimulatedContext(config.model_copy(update={
            "arm": v.arm, "k": v.k or 0, "every": v.every, "launch_tokens": v.launch_tokens, "prewarm": bool(v.prewarm),
            "memory_engine": memory_engine, "max_summary_tokens": world.workload.summary_tokens}), replay, run_id, world, free=v.free)
    else:
        ctx = PlainContext(config.model_copy(update={"arm": v.arm}), replay, world)
    clock = world.clock
    for n in range(len(steps)):
        t_prepare = clock.now
        view, waits = yield from ctx.prepare(steps[:n])
        wait_s = 0.0
        for _, _, start, end in waits:
            wait_s += end - start
        stat.waits += len(waits)
        stat.masks += bool(view.mask_before)
        request = Request(run=run_id, pieces=view.pieces, output_tokens=replay.reply_tokens[n],
                          reply_piece=world.workload.reply_piece(steps[n].response))
        t0 = clock.now
        yield "call", world.main, request
        busy.append((t0, clock.now))
        stat.steps.append(StepStat(main_s=clock.now - t0, wait_s=wait_s, prompt_tokens=request.prompt_tokens,
                                   cached_tokens=request.cached_tokens))
        if record is not None:
            record["steps"].append((t_prepare, view.cutoff, [(reason, cutoff, end) for reason, cutoff, _, end in waits],
                                    request.prompt_tokens, request.cached_tokens, view.mask_before))
        stat.wait_s += wait_s
        t1 = clock.now
        if replay.command_s[n] > 0:
            yield "sleep", replay.command_s[n]
        busy.append((t1, clock.now))
        stat.command_s += clock.now - t1
        stat.steps[-1].command_s = clock.now - t1
        if record is not None:
            record["completed"].append(clock.now)
        ctx.completed(steps[:n + 1])
    ctx.close()
    if v.summarizes:  # what the memory model did (the plain arms have none)
        ran = [j for j in ctx.jobs if j.started is not None and j.finished is not None]
        stat.memory_s = sum(j.finished - j.started for j in ran)
        stat.hidden_s = sum(overlap((j.started, j.finished), busy) for j in ran)
        stat.jobs_run = len(ran)
        if record is not None:
            record["jobs"] = [(j.cutoff, j.status, j.queued, j.started, j.finished) for j in ctx.jobs]


def simulate(replays: list[Replay], v: Variant, concurrency: int, *, params: CostParams, workload: Workload,
             config: MemoryConfig, serving: str = "model", memory_engine: str = "separate",
             trace: dict[int, dict[str, list]] | None = None) -> dict[str, Any]:
    """Replay `replays` (cycled to max(len, concurrency) runs) with `concurrency` workers, in virtual time.

    `trace`, if given, receives per run index: "steps" = [(prepare time, summary cut-off, waits as
    [(reason, job cut-off, end time)], prompt tokens, cached tokens, mask_before)], "completed" =
    [time each step ended] and "jobs" = [(cut-off, status, queued, started, finished)].
    """
    clock = Clock()
    main = Engine(params.main, clock, "main")
    memory = main if memory_engine == "main" else Engine(params.memory, clock, "memory")
    world = World(clock, main, memory, VirtualPool(config.workers), workload)
    n_runs = max(len(replays), concurrency)
    order = [replays[i % len(replays)] for i in range(n_runs)]
    next_run = itertools.count()
    stats: list[RunStat] = []
    finished_at = [0.0]

    def start_worker():
        i = next(next_run)
        if i >= n_runs:
            return
        stat = RunStat(start=clock.now)
        stats.append(stat)

        def done():
            stat.end = clock.now
            finished_at[0] = max(finished_at[0], clock.now)
            main.forget(i)
            memory.forget(("memory", i))
            start_worker()

        record = trace.setdefault(i, {"steps": [], "jobs": [], "completed": []}) if trace is not None else None
        _Proc(clock, run_process(i, order[i], v, stat, world, config, memory_engine, record), done, world.waiters)

    for _ in range(min(concurrency, n_runs)):
        start_worker()
    clock.run()
    row = summarize_runs(v, concurrency, serving, stats, finished_at[0])
    row["peak_main_batch"] = main.peak_batch
    row["memory_engine"] = memory_engine
    return row
