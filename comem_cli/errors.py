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


class Interrupted(RunEnded):
    status = "interrupted"


class FormatError(Exception):
    """The model's reply had no (or more than one) bash block. Not fatal: the model is told why."""


EXIT_STATUSES = (
    "submitted", "step_limit", "cost_limit", "time_limit", "format_error",
    "context_overflow", "api_error", "environment_error", "interrupted",
)
