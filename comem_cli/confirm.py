"""`comem fix --confirm`: a human in the loop before every command.

Before each command runs, the thought and the command are shown and the user picks: run it, edit
it, reply to the model instead, switch to automatic for the rest of the run, or quit (the run ends
as `interrupted`; the patch so far is kept). Each decision lands in the step's `decision` field of
the trajectory. The memory pipeline works in its own threads, so it keeps summarizing while the
user reads.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from comem_cli.errors import UserError
from comem_cli.rollouts import StepRecord
from comem_cli.templates import render

CHOICES = {"r": "run", "e": "edit", "m": "reply", "a": "auto", "q": "quit"}
PROMPT = "[r]un  [e]dit  [m]essage the model instead  [a]uto for the rest  [q]uit > "


def require_terminal() -> None:
    """`--confirm` asks questions: without a terminal on stdin it is a one-line error."""
    if not sys.stdin.isatty():
        raise UserError("--confirm needs a terminal on standard input (it asks before each command); run it interactively")


def thought_of(response: str) -> str:
    """The reply without its ```bash block: what the model says it is doing."""
    head = response.split("```bash", 1)[0].strip()
    return head.removeprefix("THOUGHT:").strip() or "(no thought given)"


class Confirmer:
    """The `Agent.confirm` hook: asks, records the decision, returns whether the command runs."""

    def __init__(self, console, ask: Callable[[str], str] = input):
        self.console = console
        self.ask = ask
        self.auto = False

    def _read(self, prompt: str) -> str | None:
        try:
            return self.ask(prompt)
        except EOFError:  # Ctrl-D: the same as quitting
            return None

    def show(self, record: StepRecord) -> None:
        """The whole thought and the whole command, control characters written out (`plain`): what is
        shown is exactly what will run, nothing hidden, overwritten or restyled by escape sequences."""
        from rich.text import Text

        from comem_cli.ui import plain

        self.console.print(Text.assemble("\n", (f"step {record.step}", "bold"), " ", (plain(thought_of(record.response)), "dim")))
        self.console.print(Text("$ " + plain(record.action), "bold cyan"))

    def __call__(self, record: StepRecord) -> bool:
        if self.auto:
            return True
        self.show(record)
        asked = time.time()
        while True:
            answer = self._read(PROMPT)
            kind = "quit" if answer is None else CHOICES.get(answer.strip().lower()[:1])
            if kind:
                break
            self.console.print("[red]type r, e, m, a or q[/red]")
        decision = {"kind": kind, "asked": asked, "answered": time.time()}
        run_it = kind in ("run", "auto")
        if kind == "edit":
            new = (self._read("new command (one line; empty keeps it) > ") or "").strip()
            if new and new != record.action:
                decision.update(original=record.action, command=new)
                record.action = new
            else:
                decision["kind"] = "run"
            run_it = True
        elif kind == "reply":
            message = (self._read("message to the model > ") or "").strip() or "Do not run that; try something else."
            decision["message"] = message
            record.observation = render("user_reply.j2", message=message)
        elif kind == "auto":
            self.auto = True
            self.console.print("[dim]automatic for the rest of the run[/dim]")
        elif kind == "quit":  # what a resumed run's model is shown for this step
            record.observation = render("user_reply.j2", message="The user stopped the run here; this command was not run.")
        record.decision = decision
        return run_it
