"""`comem bench latency` (declared in comem_cli/bench/cli_bench.py): the paper check, the vLLM path,
or the plan measured, shown and written to `--json`."""

from __future__ import annotations

from pathlib import Path

from comem_cli.latency.measure import LatencySettings, check_paper, measure, show


def run(s: LatencySettings) -> int:
    """The whole command; returns its exit status."""
    if s.serving == "vllm":  # start vLLM engines, then measure against them
        from comem_cli.latency.vllm_replay import run_vllm

        return run_vllm(s)
    if s.calibrate:
        return check_paper(s)
    measured = measure(s)
    show(measured)
    if s.json_out:
        from comem_cli.latency.report import write_json

        write_json(Path(s.json_out), measured.rows)
    return 0
