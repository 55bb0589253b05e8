"""What `comem bench latency` measures: one typed settings object in, `measure(settings)` makes the
rows, `show` prints them (command.py is the whole command; the vLLM path, vllm_replay.py, calls
`measure` too, with its engines as the endpoint, then with the cost model fitted to them).

The plan: every arm asked for (`--memory`, default all six peers), always with the `full` and
`sync` baselines the ratios need, and for every summarizing arm its limit (the same replay with a
memory model that costs nothing), at each `--concurrency`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from comem_cli.config import ARMS, DEFAULT_LAUNCH_TOKENS, PAPER_EVERY, PAPER_K, MemoryConfig, parse_arms, parse_int_list
from comem_cli.errors import UserError
from comem_cli.latency.costmodel import CostParams, apply_overrides
from comem_cli.latency.results import Variant, add_ratios
from comem_cli.latency.settings import LatencySettings
from comem_cli.latency.workload import Replay, TokenCounter, Workload, load_replays

HARDWARE_NOTE = {
    "separate": "the memory model runs on its own engine: extra hardware beside the main engine "
                "(--memory-engine main: summaries served by the main engine, no extra hardware)",
    "main": "summaries are served by the main engine itself (no extra hardware)",
}


def variants(arms: Sequence[str], ks: Sequence[int], every: int | None, prewarm: bool | None, *,
             launch_tokens: int | None = None, limits: bool = True) -> list[Variant]:
    """Always with the `full` and `sync` baselines (the ratios need them); pre-warm both ways when None;
    each summarizing variant followed by its limit (free memory model) when `limits`."""
    wanted = list(dict.fromkeys(["full", "sync", *arms]))
    prewarms = [False, True] if prewarm is None else [prewarm]
    tokens = DEFAULT_LAUNCH_TOKENS if launch_tokens is None else launch_tokens
    out: list[Variant] = []
    for arm in ARMS:
        if arm not in wanted:
            continue
        if arm in ("full", "mask"):
            out.append(Variant(arm))
        elif arm == "sync":  # the coupled baseline: a blocking summary every `every` steps (2 unless told)
            out.extend(Variant("sync", 0, every or 2, p) for p in prewarms)
        elif arm == "paper":
            out.extend(Variant("paper", PAPER_K, PAPER_EVERY, p) for p in prewarms)
        elif arm == "threshold":
            out.extend(Variant("threshold", None, None, p) for p in prewarms)
        else:
            for k in ks:
                if k == 0:
                    continue  # k = 0 is the sync arm
                out.extend(Variant("comem", k, every, p, launch_tokens=tokens) for p in prewarms)
    if limits:
        out = [x for v in out for x in ([v, v.as_free()] if v.summarizes else [v])]
    return out


@dataclass
class Measured:
    """What `measure` returns: the rows (ratios added) and the title of their table, which says what made them."""

    rows: list[dict[str, Any]]
    title: str


@dataclass
class Inputs:
    """The settings parsed and the trajectories loaded: where measuring and the paper check start."""

    serving: str
    concurrencies: list[int]
    ks: list[int]
    arms: list[str]
    params: CostParams
    config: MemoryConfig
    replays: list[Replay]
    workload: Workload


def prepare(s: LatencySettings) -> Inputs:
    """Parse the settings, load the cost model's parameters and the trajectories (one-line errors),
    and say what will be replayed."""
    from comem_cli.resources import default_trajectories
    from comem_cli.ui import console

    serving = s.serving
    concurrencies = parse_int_list(s.concurrency, "--concurrency", minimum=1)
    ks = parse_int_list(s.k, "--k", minimum=0)
    arms = parse_arms(s.arms)
    if s.command_s < 0:
        raise UserError(f"--command-s must be >= 0 (got {s.command_s})")
    if s.summary_tokens < 1:
        raise UserError(f"--summary-tokens must be >= 1 (got {s.summary_tokens})")
    if s.cost_params:  # parameters from a file (e.g. written by --calibrate-engine)
        from comem_cli.latency.costmodel import load_cost_params

        params = apply_overrides(load_cost_params(s.cost_params), s.cost_param)
    else:
        params = apply_overrides(CostParams(), s.cost_param)
    paths = list(s.trajectories) or default_trajectories()
    if not paths:
        raise UserError("comem bench latency needs --trajectories PATH (comem run folders or mini-swe-agent *.traj.json)")
    # The replay's summaries are filler of the right length: their content is not checked at swap
    # time (the quality of real summaries is `comem bench memory`'s job).
    config = MemoryConfig(arm="comem", k=max(ks), every=s.every, raw_budget=s.raw_budget, max_summary_tokens=s.summary_tokens,
                          workers=s.workers, memory_engine=s.memory_engine, sections=s.sections, check=False)
    counter = TokenCounter()
    replays = load_replays(paths, max_steps=s.max_steps, command_s=s.command_s, counter=counter)
    workload = Workload(counter, config, s.summary_tokens)
    timed = sum(r.timed for r in replays)
    console.print(f"[bold]comem bench latency[/bold]: {len(replays)} trajectories · tokens: {counter.name} · "
                  f"command time: {'recorded' if timed == len(replays) else f'{s.command_s:g} s (--command-s)'}"
                  f"{f' ({timed} recorded)' if 0 < timed < len(replays) else ''} · summaries {s.summary_tokens} tokens")
    return Inputs(serving, concurrencies, ks, arms, params, config, replays, workload)


def check_paper(s: LatencySettings) -> int:
    """`--calibrate`: the cost model against the paper's figures; 1 when a ratio is off by more than the tolerance."""
    from comem_cli.latency.paper import CALIBRATION_TOLERANCE, paper_check
    from comem_cli.latency.report import print_paper_check
    from comem_cli.ui import console

    i = prepare(s)
    console.print("serving: model (cost model, virtual time; the paper's pipeline at 32/64/128/256 concurrent runs)")
    ok = print_paper_check(paper_check(i.replays, i.params, i.workload, i.config), CALIBRATION_TOLERANCE)
    return 0 if ok else 1


def measure(s: LatencySettings) -> Measured:
    """Replay the plan at every concurrency with `s.serving` (model, local or endpoint) and return the rows."""
    if s.serving == "vllm":
        raise ValueError("--serving vllm is measured by vllm_replay.run_vllm, which calls measure with its engines as endpoints")
    i = prepare(s)
    plan = variants(i.arms, i.ks, s.every, s.prewarm, launch_tokens=s.launch_tokens, limits=True)
    if s.memory_free:
        plan = [v.as_free() if v.summarizes else v for v in plan]
        plan = list(dict.fromkeys(plan))
    if i.serving == "model":
        title, rows = _simulated(s, i, plan)
    else:
        title, rows = _wall_clock(s, i, plan)
    add_ratios(rows)
    return Measured(rows, title)


def show(measured: Measured) -> None:
    """The rows' table and the speed-up summary."""
    from comem_cli.latency.report import print_rows, print_summary

    print_rows(measured.rows, measured.title)
    print_summary(measured.rows)


def _simulated(s: LatencySettings, i: Inputs, plan: list[Variant]) -> tuple[str, list[dict[str, Any]]]:
    """`--serving model`: every row in virtual time on the cost model."""
    from comem_cli.latency.simulation import simulate

    title = ("serving: model (the calibrated cost model in virtual time; main "
             + ", ".join(f"{k}={v:g}" for k, v in i.params.main.model_dump().items() if not isinstance(v, bool))
             + f"; {HARDWARE_NOTE[s.memory_engine]})")
    rows = [simulate(i.replays, v, c, params=i.params, workload=i.workload, config=i.config, memory_engine=s.memory_engine)
            for c in i.concurrencies for v in plan]
    return title, rows


def _wall_clock(s: LatencySettings, i: Inputs, plan: list[Variant]) -> tuple[str, list[dict[str, Any]]]:
    """`--serving local | endpoint`: every row in wall-clock time on real models."""
    from comem_cli.latency.realtime import LOCAL_MAX_SUMMARY, replay_realtime
    from comem_cli.ui import console

    serving = i.serving
    title, main_server, memory_server, prewarm_config, reply_cap = real_servers(serving, s)
    if s.memory_engine == "main":
        memory_server = main_server
    title += f"; {HARDWARE_NOTE[s.memory_engine]}"
    if serving == "local":
        plan = [v for v in plan if not v.prewarm]  # no prefix cache in the local servers
    # `--repeat N`: N rounds over the whole plan (a burst of interference from other processes
    # spreads over rows instead of hitting every try of one), then the fastest try of each row:
    # interference only adds time.
    best: dict[tuple, dict[str, Any]] = {}
    tries: dict[tuple, list[float]] = {}
    for round_ in range(s.repeat):
        for c in i.concurrencies:
            for v in plan:
                console.print(f"[dim]{serving}: {v.arm}{' (limit)' if v.free else ''} k={v.k} concurrency {c} prewarm {v.prewarm}"
                              f"{f' (round {round_ + 1} of {s.repeat})' if s.repeat > 1 else ''}...[/dim]")
                row = replay_realtime(i.replays, v, c, main_server=main_server, memory_server=memory_server,
                                      workload=i.workload, config=i.config, serving=serving, reply_cap=reply_cap,
                                      summary_tokens=min(s.summary_tokens, LOCAL_MAX_SUMMARY) if serving == "local" else s.summary_tokens,
                                      prewarm_config=prewarm_config)
                tries.setdefault((c, v), []).append(row["end_to_end_s"])
                if (c, v) not in best or row["end_to_end_s"] < best[(c, v)]["end_to_end_s"]:
                    best[(c, v)] = row
    return title, [{**row, "tries_s": tries[key]} for key, row in best.items()]


def real_servers(serving: str, s: LatencySettings):
    """The main and memory servers of a wall-clock replay: (header, main, memory, pre-warm config, reply cap)."""
    from comem_cli.latency.realtime import LOCAL_MAX_PROMPT, LOCAL_MAX_REPLY, LOCAL_MAX_SUMMARY, LocalModel

    if serving == "local":
        import tempfile

        from comem_cli.latency.tiny_lm import build_tiny_causal_lm

        root = Path(tempfile.mkdtemp(prefix="comem-latency-"))
        main = LocalModel(build_tiny_causal_lm(root / "main", seed=1, hidden_size=192, layers=3))
        memory = LocalModel(build_tiny_causal_lm(root / "memory", seed=2, hidden_size=64, layers=2))
        header = (f"serving: local (real tiny transformers models on CPU, wall-clock time; main 3 layers x 192, memory 2 x 64; "
                  f"last {LOCAL_MAX_PROMPT} prompt tokens, replies <= {LOCAL_MAX_REPLY} tokens, summaries <= {LOCAL_MAX_SUMMARY} tokens; "
                  f"no batching, no prefix cache)")
        return header, main, memory, None, LOCAL_MAX_REPLY
    from comem_cli.latency.endpoint import EndpointModel

    if not s.api_base or not s.model:
        raise UserError("--serving endpoint needs --model and --api-base for the main server")
    if not s.memory_engine == "main" and (not s.memory_api_base or not s.memory_model):
        raise UserError("--serving endpoint needs --memory-model and --memory-api-base for the memory server")
    main = EndpointModel(s.model, s.api_base)
    memory = main if s.memory_engine == "main" else EndpointModel(s.memory_model, s.memory_api_base)
    header = (f"serving: endpoint (real servers, wall-clock time; main {s.model} at {s.api_base}, "
              f"memory {s.memory_model or s.model} at {s.memory_api_base or s.api_base})")
    return header, main, memory, main.config, None
