"""`comem bench latency`: replay recorded trajectories and measure what each context arm costs in time.

No Docker and no agent: the main model's replies are the recorded ones, the observations come from
the recording, and a command takes the time recorded for it (comem runs) or `--command-s`. What
the replay computes for real is every view: the arms are the real ones (`FullContext`,
`MaskContext`, and the summarizing arms' `Schedule`), views are built by `build_view`, the memory
model's input by `summary_input` and `for_sections` (comem_cli/memory/transcript.py).

Modules, one concept each:
    workload.py     trajectories, token counting, the token pieces of views and memory inputs
    simulation.py   `--serving model`: the cost model in virtual time, driving the real Schedule
    realtime.py     `--serving local | endpoint`: wall-clock replay through the real MemoryContext
    endpoint.py     the OpenAI-compatible server a wall-clock replay talks to
    results.py      per-variant rows, ratios (vs full, vs sync, of the limit), the table
    calibration.py  the check and fit against the paper's GLM-4.7 latencies (`python -m ... fit|check`)
    command.py      the typed settings and the command itself
"""

from comem_cli.bench.latency.calibration import PAPER_GLM47, fit_engines, paper_check, print_calibration
from comem_cli.bench.latency.command import LatencySettings, latency_command, variants
from comem_cli.config import parse_arms, parse_int_list
from comem_cli.bench.latency.results import RunStat, StepStat, Variant, add_ratios, print_report, summarize_runs
from comem_cli.bench.latency.simulation import simulate
from comem_cli.bench.latency.workload import (DEFAULT_COMMAND_S, DEFAULT_SUMMARY_TOKENS, Replay, TokenCounter, Workload,
                                              default_trajectories, load_replays)

__all__ = ["PAPER_GLM47", "DEFAULT_COMMAND_S", "DEFAULT_SUMMARY_TOKENS", "LatencySettings", "Replay", "RunStat",
           "StepStat", "TokenCounter", "Variant", "Workload", "add_ratios", "default_trajectories", "fit_engines",
           "latency_command", "load_replays", "paper_check", "parse_arms", "parse_int_list", "print_calibration",
           "print_report", "simulate", "summarize_runs", "variants"]
