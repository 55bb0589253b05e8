"""Context strategies ("arms") that decide what the main model sees at each step.

`full` sends everything verbatim; `mask` elides old observations. The summarizing arms (`sync`,
`comem`) are built on the same interface: prepare(steps) -> (view, events), completed(steps), close().
"""

from __future__ import annotations

from typing import Any

from comem_cli.views import View, build_view


class FullContext:
    """Arm `full`: every step verbatim (the prompt grows linearly with the run)."""

    arm = "full"

    def __init__(self, system: str, task: str):
        self.system, self.task = system, task

    def prepare(self, steps) -> tuple[View, list[dict[str, Any]]]:
        return build_view(self.system, self.task, steps), []

    def completed(self, steps) -> None:
        pass

    def close(self) -> dict[str, Any]:
        return {"arm": self.arm}


class MaskContext(FullContext):
    """Arm `mask`: observations older than `window` steps become a one-line placeholder.

    The cut moves in blocks of `window` steps (not every step), so the prompt prefix only changes
    every `window` steps, which keeps prefix caches useful.
    """

    arm = "mask"

    def __init__(self, system: str, task: str, window: int = 5):
        super().__init__(system, task)
        self.window = window

    def prepare(self, steps) -> tuple[View, list[dict[str, Any]]]:
        n = len(steps)
        mask_before = max(0, (n - self.window) // max(self.window, 1) * max(self.window, 1)) if self.window else n
        return build_view(self.system, self.task, steps, mask_before=mask_before), []
