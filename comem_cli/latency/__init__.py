"""The latency benchmark (`comem bench latency`): replay recorded trajectories and measure what each
context arm costs in time, on a cost model, on real tiny models, on real servers, or on vLLM
engines it starts itself. The command line lives with the other benchmarks
(comem_cli/bench/cli_bench.py) and calls `command.run`; everything else is here.

No Docker and no agent: the main model's replies are the recorded ones, the observations come from
the recording, and a command takes the time recorded for it (comem runs) or `--command-s`. What
the replay computes for real is every view: the arms are the real ones (`FullContext`,
`MaskContext`, and the summarizing arms' `Schedule`), views are built by `build_view`, the memory
model's input by `summary_input` and `for_sections` (comem_cli/memory/transcript.py).

Modules, one concept each:
    command.py      the command: the paper check, the vLLM path, or the plan measured and shown
    settings.py     the typed settings (their defaults declared there only)
    measure.py      `measure(settings) -> rows` and `show(rows)`
    workload.py     trajectories, token counting, the token pieces of views and memory inputs
    costmodel.py    the serving engine's cost model (continuous batching, prefix cache, KV capacity)
    simulation.py   `--serving model`: the cost model in virtual time, driving the real Schedule
    realtime.py     `--serving local | endpoint`: wall-clock replay through the real MemoryContext
    endpoint.py     the OpenAI-compatible server a wall-clock replay talks to
    tiny_lm.py      the tiny real models of `--serving local` (and of the tests)
    vllm_replay.py  `--serving vllm`: start the engines, measure on them, predict with the fitted model
    engines.py      the one vLLM server launcher (comem's engines and the tests' servers)
    archs.py        bundled random-weight model architectures for the engines
    engine_fit.py   `--calibrate-engine`: a request grid measured on the engines, EngineParams fitted to it
    paper.py        the check and fit against the paper's GLM-4.7 latencies (`python -m comem_cli.latency fit|check`)
    search.py       the pattern search both fits use
    results.py      per-variant rows, ratios (vs full, vs sync, of the limit), measured vs predicted
    report.py       every output: the terminal tables, the --json files, report.html + latency.png

This package imports nothing from comem_cli/bench/ (the SWE-bench runner): the benchmarks stand
side by side and share only the layers below them (config, memory, views).
"""
