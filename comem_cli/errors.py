"""Exceptions that carry control flow and user-facing errors.

Two families:
- `UserError`: bad input (missing repo, no Docker, unknown issue...). The CLI prints its one-line
  message and exits with status 2, never a traceback.
- `RunEnded` and subclasses: raised inside the agent loop to end a run with a named exit status
  (the mini-swe-agent style: control flow by exceptions, the loop stays flat).
"""


class UserError(Exception):
    """Bad input or environment. `str(err)` is a complete one-line message for the user."""

    exit_code = 2


class RunEnded(Exception):
    """Ends the agent loop. `status` is what lands in meta.json as the run's exit status."""

    status = "error"


class Submitted(RunEnded):
    status = "submitted"


class StepLimit(RunEnded):
    status = "step_limit"


class CostLimit(RunEnded):
    status = "cost_limit"


class TimeLimit(RunEnded):
    status = "time_limit"


class TooManyFormatErrors(RunEnded):
    status = "format_error"


class ContextOverflow(RunEnded):
    status = "context_overflow"


class ApiError(RunEnded):
    status = "api_error"


class EnvironmentFailure(RunEnded):
    status = "environment_error"


class SandboxTimeout(EnvironmentFailure):
    """A command comem runs in the sandbox itself (set-up, taking the patch) ran out of time:
    told apart from a failure so that the message names the time limit, not the tool."""


class Interrupted(RunEnded):
    status = "interrupted"


class FormatError(Exception):
    """The model's reply had no (or more than one) bash block. Not fatal: the model is told why."""


# Every exit status a run can end with (meta.json's `status`), in one place: the classes above.
EXIT_STATUSES = tuple(cls.status for cls in (
    Submitted, StepLimit, CostLimit, TimeLimit, TooManyFormatErrors, ContextOverflow, ApiError, EnvironmentFailure,
    Interrupted,
))
# The statuses of a run that is over for good: a resumed benchmark keeps it (an interrupted run is redone).
FINAL_STATUSES = frozenset(EXIT_STATUSES) - {Interrupted.status}
