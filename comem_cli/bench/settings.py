"""The settings of the benchmark commands (`comem bench swe-mini | swebench-verified |
swebench-lite` and `comem bench memory`): typed models, their defaults declared here only (the
commands' options read them for --help). Light: pydantic and the config only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field

from comem_cli.config import DEFAULT_ARM, DEFAULT_SUMMARY_CAP, AgentConfig, Backend, Executor, LocalBackend, SandboxConfig, default_of, memory_default


class BenchSettings(BaseModel):
    """Everything the benchmark runner command needs, built once at the command line."""

    name: str
    model: Optional[str] = None
    api_base: Optional[str] = None
    memory: str = DEFAULT_ARM  # arms, comma-separated
    k: int = Field(memory_default("k"), ge=0)
    every: Optional[int] = None
    launch_tokens: int = Field(memory_default("launch_tokens"), ge=0)
    raw_budget: int = memory_default("raw_budget")
    memory_backend: Backend = memory_default("backend")
    memory_model: Optional[str] = None
    memory_api_base: Optional[str] = None
    prewarm: bool = memory_default("prewarm")
    summary_sections: int = Field(memory_default("sections"), ge=1, le=5)
    workers: int = 2
    instances: Optional[str] = None
    filter: Optional[str] = None
    slice: Optional[str] = None
    redo_existing: bool = False
    evaluate: bool = True
    dataset: Optional[Path] = None
    image_template: Optional[str] = None
    executor: Executor = "threads"
    ray_address: Optional[str] = None
    max_steps: int = default_of(AgentConfig, "max_steps")
    cost_limit: float = default_of(AgentConfig, "cost_limit")
    timeout: int = default_of(SandboxConfig, "command_timeout_s")
    output: Path = Path("bench-runs")
    run_id: Optional[str] = None
    export_dataset: Optional[Path] = None
    evaluate_only: Optional[Path] = None


class QualitySettings(BaseModel):
    """Everything `comem bench memory` takes; lists are compared side by side."""

    trajectories: list[Path] = []
    memory_models: list[str | None] = [None]
    memory_backend: LocalBackend = "auto"
    memory_api_base: str | None = None
    memory_context: int | None = None
    sections: list[int] = [memory_default("sections")]
    max_summary_tokens: list[int] = [DEFAULT_SUMMARY_CAP]
    k: int = memory_default("k")
    every: int | None = None
    launch_tokens: int = Field(memory_default("launch_tokens"), ge=0)
    max_summaries: int | None = None
    memory_timeout: float = memory_default("timeout_s")
    judge_model: str | None = None
    judge_api_base: str | None = None
    json_out: Path | None = None
