"""Terminal output: one line per step while a run goes, a table at the end (rich)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from comem_cli.caching import cache_cell, summary_line
from comem_cli.rollouts import StepRecord

# Piped output (logs, CI) gets wide lines rather than tables squeezed to 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)  # warnings that must not mix with the run's output


# Terminal escape sequences (CSI, OSC, other ESC sequences) and control characters: text from the
# model or a provider is shown as text, never interpreted by the user's terminal (nor as rich markup).
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> str:
    """`text` without terminal escape sequences and control characters (newlines and tabs kept)."""
    return _ESCAPES.sub("", text)


def print_step(step: StepRecord) -> None:
    if step.action is not None:
        action = Text((plain(step.action).splitlines() or [""])[0])
    else:
        action = Text.assemble(("format error", "red"), ": " + (plain(step.format_error or "").splitlines() or [""])[0])
    if len(action.plain) > 90:
        action.truncate(87)
        action.append("...")
    cmd = f"cmd {step.command.seconds:5.1f}s" if step.command else " " * 10
    waits = [e for e in step.memory if e.get("kind") == "wait"]
    wait = f" wait {sum(e['end'] - e['start'] for e in waits):.1f}s" if waits else ""
    summary = f" mem@{step.view.summary_cutoff}" if step.view.summary_cutoff is not None else ""
    cache = f" {cache_cell(step.cached_tokens, step.prompt_tokens, step.cache_saved)}" if step.cached_tokens else ""
    line = Text.assemble((f"step {step.step:3d}", "dim"), f" model {step.model.seconds:5.1f}s {cmd} ",
                         (f"{step.prompt_tokens:6d} tok{cache}{summary}{wait}", "dim"), "  ", ("$", "bold"), " ", action)
    console.print(line, no_wrap=True, overflow="ellipsis")


def run_table(outcome) -> Table:
    r = outcome.result
    table = Table(title="comem fix", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    style = "green" if r.status == "submitted" else "red"
    table.add_row("exit status", Text.assemble((r.status, style), f" ({plain(r.message)})" if r.message and r.status != "submitted" else ""))
    table.add_row("steps", str(len(r.steps)))
    table.add_row("tokens", f"{r.prompt_tokens:,} prompt / {r.completion_tokens:,} completion")
    table.add_row("cost", f"${r.cost:.4f}")
    table.add_row("prompt cache", summary_line(r.cached_tokens, r.prompt_tokens, r.cache_saved))
    table.add_row("wall time", f"{r.wall_s:.1f} s")
    mem = r.memory or {}
    if mem.get("arm") not in (None, "full", "mask"):
        table.add_row("memory", f"{mem.get('summaries', 0)} summaries, {mem.get('memory_s', 0):.1f} s of memory-model time")
        hidden = mem.get("hidden_fraction")  # None: no memory-model time to hide (e.g. no summary launched)
        table.add_row("hidden", "-" if hidden is None else f"{100 * hidden:.0f}% of memory time behind agent work")
        table.add_row("waits", f"{mem.get('waits', 0)} ({mem.get('wait_s', 0):.1f} s)")
    elif mem.get("arm"):
        table.add_row("memory", mem["arm"])
    patch_lines = r.patch.count("\n")
    table.add_row("patch", f"{patch_lines} lines -> {Path(outcome.run_dir) / 'patch.diff'}")
    for note in getattr(r, "patch_notes", None) or []:
        table.add_row("patch note", Text(plain(note), "yellow"))
    left_out = getattr(outcome, "left_out", None) or []
    if left_out:
        shown = ", ".join(left_out[:8]) + (f" (+{len(left_out) - 8} more)" if len(left_out) > 8 else "")
        table.add_row("left out", Text(f"{shown}: untracked files that look like secrets, not copied "
                                       "(--include-untracked-secrets to copy them)", "yellow"))
    if outcome.branch:
        table.add_row("branch", f"[cyan]{outcome.branch}[/cyan] ({outcome.commit[:10]})")
    elif outcome.apply_error:
        table.add_row("branch", Text.assemble(("not created", "red"), f": {plain(outcome.apply_error)}"))
    else:
        table.add_row("branch", "none (--no-apply or empty patch)")
    table.add_row("run dir", str(outcome.run_dir))
    return table
