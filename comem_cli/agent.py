"""The agent loop: prepare the view -> query the model -> parse the action -> execute -> observe -> record.

Control flow by exceptions (RunEnded subclasses); the loop itself stays flat. The three side
effects sit behind small interfaces: `Model.query`, `Environment.execute`, and `Context` (which
decides what the model sees: full history, masked, or summarized by the memory pipeline).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from comem_cli.config import AgentConfig
from comem_cli.errors import (
    CostLimit, FormatError, Interrupted, RunEnded, StepLimit, Submitted, TimeLimit, TooManyFormatErrors,
)
from comem_cli.rollouts import RunWriter, Span, StepRecord, ViewInfo
from comem_cli.signals import signals_deferred
from comem_cli.templates import render
from comem_cli.views import View

SUBMIT_MARKER = "COMEM_SUBMIT"
_BASH_BLOCK = re.compile(r"```bash[ \t]*\n(.*?)\n?```", re.DOTALL)


class Model(Protocol):
    cost: float

    def query(self, messages: list[dict[str, str]], deadline: float | None = None) -> Any: ...  # -> models.ModelReply


class Environment(Protocol):
    def execute(self, command: str, timeout: int | None = None) -> Any: ...  # -> sandbox.ExecResult

    def diff(self) -> str: ...


class Context(Protocol):
    """Builds each step's view; the memory pipeline implements this for the summarizing arms."""

    def prepare(self, steps: list[StepRecord]) -> tuple[View, list[dict[str, Any]]]: ...

    def completed(self, steps: list[StepRecord]) -> None: ...

    def close(self) -> dict[str, Any]: ...


@dataclass
class RunResult:
    status: str
    message: str = ""
    patch: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    wall_s: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = None  # set when a bug (not a RunEnded) ended the run: status "error"
    patch_notes: list[str] = field(default_factory=list)  # how the patch was taken (fallback, large files)

    def interrupt(self) -> None:
        """A signal came while the run was being wrapped up (patch, record, branch): it ends as
        interrupted, as a signal a moment earlier would have ended it; how it had ended stays in the message."""
        if self.status != Interrupted.status:
            ended = f"{self.status}: {self.message}" if self.message else self.status
            self.status, self.message = Interrupted.status, f"interrupted by signal as the run ended ({ended})"

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)

    @property
    def cached_tokens(self) -> int:
        return sum(s.cached_tokens for s in self.steps)

    @property
    def cache_saved(self) -> float:
        return sum(s.cache_saved for s in self.steps)


def parse_action(reply: str) -> str:
    """The single bash command of a reply; FormatError if there is not exactly one block."""
    blocks = _BASH_BLOCK.findall(reply)
    if len(blocks) != 1:
        raise FormatError(f"found {len(blocks)} ```bash blocks in your reply, expected exactly one")
    if not blocks[0].strip():
        raise FormatError("the ```bash block is empty")
    return blocks[0].strip()


def cut_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail of a long text, with a note saying how much was elided."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return render("truncated.j2", head=text[:half], tail=text[-half:], elided=len(text) - 2 * half)


class Agent:
    def __init__(self, model: Model, env: Environment, context: Context, writer: RunWriter, config: AgentConfig,
                 *, command_timeout: int = 120, on_step: Callable[[StepRecord], None] | None = None,
                 stop: threading.Event | None = None, confirm: Callable[[StepRecord], bool] | None = None):
        self.model, self.env, self.context, self.writer, self.config = model, env, context, writer, config
        self.command_timeout = command_timeout
        self.on_step = on_step
        self.stop = stop  # set by a benchmark being interrupted: end at the next step
        self.confirm = confirm  # asks the user before each command (confirm.Confirmer); None: automatic
        self.steps: list[StepRecord] = []
        self.format_errors = 0
        self.started = 0.0

    def run(self) -> RunResult:
        """Step until something ends the run; the patch is taken on every exit path."""
        self.started = time.time()
        result = RunResult(status="error")
        try:
            while True:
                self.step()
        except RunEnded as e:
            result.status, result.message = e.status, str(e)
        except KeyboardInterrupt:
            result.status, result.message = Interrupted.status, "interrupted by signal"
        except Exception as e:  # a bug: the run still ends with a final status, patch and trajectory
            import traceback

            result.status, result.message = "error", f"internal error: {type(e).__name__}: {e}"[:300]
            result.traceback = traceback.format_exc()
        finally:
            with signals_deferred(reraise=False) as received:  # a second Ctrl-C must not cost the patch
                result.memory = self.context.close()
                try:
                    result.patch = self.env.diff()
                except Exception as e:  # the sandbox may be gone; the trajectory still stands
                    result.message = (result.message + f"; patch not taken: {e}").strip("; ")
                result.patch_notes = list(getattr(self.env, "patch_notes", None) or [])
                result.steps = self.steps
                result.wall_s = time.time() - self.started
            if received:
                result.interrupt()
        return result

    def check_limits(self) -> None:
        c = self.config
        if self.stop is not None and self.stop.is_set():
            raise Interrupted("the benchmark was interrupted")
        if len(self.steps) >= c.max_steps:
            raise StepLimit(f"reached {c.max_steps} steps")
        spent = self.model.cost + getattr(self.context, "cost", 0.0)  # summaries the main model writes count too
        if c.cost_limit and spent >= c.cost_limit:
            raise CostLimit(f"spent ${spent:.2f} of ${c.cost_limit:.2f}")
        if time.time() - self.started >= c.time_limit_s:
            raise TimeLimit(f"ran {c.time_limit_s:.0f} s")

    @property
    def deadline(self) -> float:
        return self.started + self.config.time_limit_s

    def step(self) -> None:
        self.check_limits()
        view, events = self.context.prepare(self.steps)
        reply = self.model.query(view.messages, deadline=self.deadline)
        record = StepRecord(
            step=len(self.steps),
            view=ViewInfo(summary_cutoff=view.summary_cutoff, raw_start=view.raw_start, raw_end=view.raw_end,
                          masked=list(view.masked), n_messages=len(view.messages), prompt_tokens=reply.prompt_tokens),
            response=reply.content,
            model=Span(start=reply.start, end=reply.end),
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cost=reply.cost,
            memory=events,
            cached_tokens=getattr(reply, "cached_tokens", 0),
            cache_saved=getattr(reply, "cache_saved", 0.0),
        )
        submitted = False
        try:
            record.action = parse_action(reply.content)
            self.format_errors = 0
        except FormatError as e:
            self.format_errors += 1
            record.format_error = str(e)
            record.observation = render("format_error.j2", error=str(e))
        run_it = record.action is not None
        if run_it and self.confirm is not None:  # `fix --confirm`: run, edit, reply instead, or quit
            run_it = self.confirm(record)  # records the decision; may edit the action or set the observation
        if run_it:
            # A command never outlives the run's time limit (the next check ends the run).
            timeout = max(1, min(self.command_timeout, int(self.deadline - time.time()) + 1))
            result = self.env.execute(record.action, timeout=timeout)
            record.command = Span(start=result.start, end=result.end)
            record.returncode, record.timed_out = result.returncode, result.timed_out
            record.output_chars = getattr(result, "output_bytes", 0) or len(result.output)
            record.observation = render("observation.j2", returncode=result.returncode, timed_out=result.timed_out,
                                        timeout=timeout,
                                        output=cut_middle(result.output, self.config.max_observation_chars))
            submitted = result.output.lstrip().splitlines()[:1] == [SUBMIT_MARKER]
        self.steps.append(record)
        self.writer.append(record)
        if self.on_step:
            self.on_step(record)
        if record.decision and record.decision.get("kind") == "quit":
            raise Interrupted("the user quit")
        if submitted:
            raise Submitted("the agent submitted")
        self.context.completed(self.steps)  # may launch a summary job (not after the last step)
        if self.format_errors >= self.config.max_format_errors:
            raise TooManyFormatErrors(f"{self.format_errors} format errors in a row")
