"""Settings shared by the commands, as pydantic models.

The CLI turns flags into these objects and hands them down; nothing below the CLI reads flags or
environment variables for behaviour, which keeps the agent, sandbox and memory code testable.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, model_validator

from comem_cli.errors import UserError

DEFAULT_IMAGE = "comem-sandbox:latest"
DEFAULT_MODEL = "anthropic/claude-sonnet-4-5"

# The context arms: one vocabulary for every command, report and table (each peer is an arm).
Arm = Literal["full", "mask", "sync", "paper", "threshold", "comem"]
ARMS: tuple[str, ...] = get_args(Arm)
DEFAULT_ARM: Arm = "comem"  # what `comem fix` and `comem bench` run when --memory is not given
SUMMARIZING_ARMS: tuple[str, ...] = ("sync", "paper", "threshold", "comem")  # the arms that need a memory model
# Memory backends (memory/backends.py says what `auto` picks).
Backend = Literal["auto", "vllm", "openai", "transformers", "main"]
BACKENDS: tuple[str, ...] = get_args(Backend)
LocalBackend = Literal["auto", "vllm", "openai", "transformers"]  # `bench memory`: a memory model of its own
MemoryEngine = Literal["separate", "main"]
LargeFiles = Literal["warn", "refuse"]
Serving = Literal["model", "local", "endpoint", "vllm"]  # where `bench latency`'s rows come from
Executor = Literal["threads", "ray"]
# The paper's pipeline, in MemoryConfig terms: launch every 4 steps, wait from one step after launch.
PAPER_EVERY, PAPER_K = 4, 1
THRESHOLD_START, THRESHOLD_BLOCK = 0.80, 0.95  # of raw_budget
DEFAULT_MEMORY_WORKERS = 64  # memory requests in flight per process (the memory thread pool); measured
DEFAULT_SUMMARY_CAP = 1024  # --max-summary-tokens; chosen with both benchmarks (docs/memory-quality.md)
DEFAULT_LAUNCH_TOKENS = 2000  # comem launches a summary once this many raw-tail tokens are not covered; measured


class ModelConfig(BaseModel):
    """The main model, reached through litellm."""

    name: str = DEFAULT_MODEL
    api_base: str | None = None
    temperature: float = 0.0
    max_tokens: int = 4096
    retries: int = 4  # transient errors (rate limit, 5xx, connection) are retried with backoff
    backoff_s: float = 1.0
    timeout_s: float = 600.0


class SandboxConfig(BaseModel):
    """One Docker container per run; limits keep a runaway command from hurting the host."""

    image: str = DEFAULT_IMAGE
    network: bool = False
    cpus: float = 2.0
    memory: str = "4g"
    pids: int = 512
    command_timeout_s: int = 120
    workdir: str = "/testbed"
    env: dict[str, str] = Field(default_factory=dict)
    max_output_bytes: int = Field(8_000_000, ge=1024)  # a command's output keeps this much: head + tail
    setup_timeout_s: int = 120  # set-up commands and taking the patch (git) never run longer
    large_files: LargeFiles = "warn"  # binary or large files in the patch: listed, or left out
    max_file_bytes: int = Field(1_000_000, ge=1)  # "large" above this


class AgentConfig(BaseModel):
    """Limits of the agent loop. A limit that is hit ends the run with its own exit status."""

    max_steps: int = 100
    cost_limit: float = 3.0  # dollars; 0 = no limit. Models with unknown prices count as free.
    time_limit_s: float = 3600.0
    max_format_errors: int = 3  # in a row
    max_observation_chars: int = 10_000
    max_issue_chars: int = Field(100_000, ge=1000)  # a longer issue text is cut head + tail before the model sees it


class MemoryConfig(BaseModel):
    """How the main model's prompt is kept bounded (docs/design.md; the rules: memory/schedule.py)."""

    arm: Arm = "full"
    # comem: the staleness (in steps) the user accepts before comem prefers to wait for a summary
    # rather than mask, when the raw tail overflows `raw_budget`; 0 = the synchronous baseline (`sync`).
    k: int = Field(2, ge=0)
    # Launches. comem: once the steps not yet covered by any summary job hold `launch_tokens` tokens
    # (0: off), and/or every `every` steps (None: off). sync: every `every` steps (default 1).
    # Defaults measured with `comem bench latency` (docs/latency.md).
    every: int | None = Field(None, ge=1)
    launch_tokens: int = Field(DEFAULT_LAUNCH_TOKENS, ge=0)
    raw_budget: int = Field(12_000, ge=256)  # tokens of raw tail a view may carry
    mask_window: int = Field(5, ge=0)  # `mask` arm: observations older than this many steps are elided
    backend: Backend = "auto"
    model: str | None = None
    api_base: str | None = None
    max_summary_tokens: int = DEFAULT_SUMMARY_CAP
    context: int | None = Field(None, ge=512)  # the memory model's window, where its backend cannot tell (--memory-context)
    # A summary's fixed sections are written by this many parallel requests sharing one prefilled
    # input (max_summary_tokens split between them), on backends that batch concurrent requests
    # (vllm, openai); 1 = one request writes the whole summary. Measured: docs/latency.md.
    sections: int = Field(4, ge=1, le=5)
    timeout_s: float = 300.0  # a memory job older than this is given up; the run stops waiting on the memory model
    max_observation_chars: int = 2_000  # observations are cut head + tail before the memory model sees them
    incremental: bool = False  # summarize previous summary + new steps instead of the whole history
    check: bool = True  # check each summary when it lands, before a view uses it (memory/quality.py)
    prewarm: bool = False  # after each summary, send the next swapped prompt with max_tokens=1 (prefix caches)
    workers: int = Field(DEFAULT_MEMORY_WORKERS, ge=1)  # memory thread pool capacity (shared by all runs of a process)
    # comem: where the memory model is served. "main": by the main model's own engine (no extra hardware),
    # so a summary is launched only when it spares that engine more work than it costs (schedule rule 1).
    memory_engine: MemoryEngine = "separate"

    @model_validator(mode="after")
    def _sync_is_k0(self) -> "MemoryConfig":
        if self.arm == "sync":
            self.k = 0
        return self


def default_of(model: type[BaseModel], field: str) -> Any:
    """A config field's default, for the command-line options that set it: declared once, in the
    model, so `--help` shows what a run uses."""
    return model.model_fields[field].default


def memory_default(field: str) -> Any:
    return default_of(MemoryConfig, field)


class RunConfig(BaseModel):
    """Everything one `comem fix` run needs; stored verbatim in meta.json."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    def for_run_dir(self) -> dict[str, Any]:
        """The config as a run dir's meta.json keeps it: the server URLs without credentials, since
        run dirs are shared (comem_cli/redact.py; `fix --resume` asks for a redacted URL again)."""
        from comem_cli.redact import redact_url

        data = self.model_dump()
        for section in ("model", "memory"):
            data[section]["api_base"] = redact_url(data[section]["api_base"])
        return data


def parse_int_list(value: str | int | None, flag: str, *, minimum: int) -> list[int]:
    """A comma-separated option of integers (`--k 1,2,4`), each at least `minimum`, without repeats."""
    text = str(value if value is not None else "").strip()
    try:
        items = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        items = []
    if not items or any(i < minimum for i in items):
        raise UserError(f"{flag} takes a comma-separated list of integers >= {minimum} (got {text!r})")
    return list(dict.fromkeys(items))


def parse_arms(memory: str) -> list[str]:
    """A comma-separated --memory of arms, without repeats."""
    arms = [a.strip() for a in memory.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if not arms or bad:
        raise UserError(f"--memory takes arms from {', '.join(ARMS)} (got {memory!r})")
    return list(dict.fromkeys(arms))
