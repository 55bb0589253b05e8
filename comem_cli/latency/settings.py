"""The settings of `comem bench latency`: one typed model, its defaults declared here only (the
command's options read them for --help). Light: pydantic and the config only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field

from comem_cli.config import ARMS, DEFAULT_SUMMARY_CAP, MemoryEngine, Serving, memory_default

DEFAULT_CONCURRENCY = "1,8,32,128"
DEFAULT_COMMAND_S = 1.0  # a docker exec of a typical agent command (ls, grep, sed, a short test run)
DEFAULT_SUMMARY_TOKENS = DEFAULT_SUMMARY_CAP  # what the replay's memory model writes per summary


class LatencySettings(BaseModel):
    """Everything `comem bench latency` needs, validated at the command line's boundary."""

    trajectories: list[Path] = Field(default_factory=list)
    serving: Serving = "model"
    concurrency: str = DEFAULT_CONCURRENCY
    arms: str = ",".join(ARMS)
    k: str = str(memory_default("k"))  # a comma list
    every: Optional[int] = None
    launch_tokens: Optional[int] = None
    raw_budget: int = memory_default("raw_budget")
    prewarm: Optional[bool] = memory_default("prewarm")  # None: both ways
    memory_free: bool = False
    memory_engine: MemoryEngine = memory_default("memory_engine")
    repeat: int = Field(1, ge=1)  # wall-clock servings: rounds over the plan, the fastest of each row kept
    workers: int = memory_default("workers")
    max_steps: int = 100
    command_s: float = DEFAULT_COMMAND_S
    summary_tokens: int = DEFAULT_SUMMARY_TOKENS
    sections: int = Field(memory_default("sections"), ge=1, le=5)  # requests per summary, its sections in parallel (batching servers)
    cost_param: list[str] = Field(default_factory=list)
    calibrate: bool = False
    model: Optional[str] = None
    api_base: Optional[str] = None
    memory_model: Optional[str] = None
    memory_api_base: Optional[str] = None
    json_out: Optional[Path] = None
    # --serving vllm (vllm_replay.py): engines comem starts itself, and the cost model fitted to them
    main_arch: Optional[str] = None
    memory_arch: Optional[str] = None
    calibrate_engine: bool = False
    cost_params: Optional[Path] = None
