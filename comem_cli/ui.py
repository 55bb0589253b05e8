"""Terminal output: one line per step while a run goes, a table at the end (rich)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from comem_cli.caching import cache_cell, summary_line
from comem_cli.rollouts import StepRecord

# Piped output (logs, CI) gets wide lines rather than tables squeezed to 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def print_step(step: StepRecord) -> None:
    action = (step.action or f"[red]format error[/red]: {step.format_error}").splitlines()[0]
    if len(action) > 90:
        action = action[:87] + "..."
    cmd = f"cmd {step.command.seconds:5.1f}s" if step.command else " " * 10
    waits = [e for e in step.memory if e.get("kind") == "wait"]
    wait = f" wait {sum(e['end'] - e['start'] for e in waits):.1f}s" if waits else ""
    summary = f" mem@{step.view.summary_cutoff}" if step.view.summary_cutoff is not None else ""
    cache = f" {cache_cell(step.cached_tokens, step.prompt_tokens, step.cache_saved)}" if step.cached_tokens else ""
    console.print(f"[dim]step {step.step:3d}[/dim] model {step.model.seconds:5.1f}s {cmd} "
                  f"[dim]{step.prompt_tokens:6d} tok{cache}{summary}{wait}[/dim]  [bold]$[/bold] {action}", no_wrap=True, overflow="ellipsis")


def run_table(outcome) -> Table:
    r = outcome.result
    table = Table(title="comem fix", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    style = "green" if r.status == "submitted" else "red"
    table.add_row("exit status", f"[{style}]{r.status}[/{style}]" + (f" ({r.message})" if r.message and r.status != "submitted" else ""))
    table.add_row("steps", str(len(r.steps)))
    table.add_row("tokens", f"{r.prompt_tokens:,} prompt / {r.completion_tokens:,} completion")
    table.add_row("cost", f"${r.cost:.4f}")
    table.add_row("prompt cache", summary_line(r.cached_tokens, r.prompt_tokens, r.cache_saved))
    table.add_row("wall time", f"{r.wall_s:.1f} s")
    mem = r.memory or {}
    if mem.get("arm") not in (None, "full", "mask"):
        table.add_row("memory", f"{mem.get('summaries', 0)} summaries, {mem.get('memory_s', 0):.1f} s of memory-model time")
        table.add_row("hidden", f"{100 * mem.get('hidden_fraction', 0):.0f}% of memory time behind agent work")
        table.add_row("waits", f"{mem.get('waits', 0)} ({mem.get('wait_s', 0):.1f} s)")
    elif mem.get("arm"):
        table.add_row("memory", mem["arm"])
    patch_lines = r.patch.count("\n")
    table.add_row("patch", f"{patch_lines} lines -> {Path(outcome.run_dir) / 'patch.diff'}")
    if outcome.branch:
        table.add_row("branch", f"[cyan]{outcome.branch}[/cyan] ({outcome.commit[:10]})")
    elif outcome.apply_error:
        table.add_row("branch", f"[red]not created[/red]: {outcome.apply_error}")
    else:
        table.add_row("branch", "none (--no-apply or empty patch)")
    table.add_row("run dir", str(outcome.run_dir))
    return table
