"""Terminal output: a line per step while a run goes (and, unless quiet, the command's output under
it), a table at the end (rich). Every text that came from a model, a command or a provider passes
through `plain` before it reaches the terminal."""

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


# Characters a terminal acts on instead of showing: C0 and C1 controls (ESC starts every escape
# sequence: colours, hidden text, cursor moves, clearing the screen, the window title) and the
# bidirectional-text controls that reorder what is displayed. Newline and tab are kept.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")

OUTPUT_HEAD, OUTPUT_TAIL = 8, 8  # lines of a command's output shown under its step line


def _written_out(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(text: str) -> str:
    """`text` safe to show a person: each control character written out (`\\x1b`, `\\x0d`) rather than
    sent to the terminal, so that nothing shown can hide, overwrite or restyle what follows it; a
    reviewer sees the whole command that will run. Windows line ends become newlines. The one
    sanitizer for the step line, the --confirm prompt, the output under a step and the final table;
    printed as a rich `Text`, it is never read as markup either."""
    return _CONTROLS.sub(_written_out, text.replace("\r\n", "\n"))


def step_line(step: StepRecord) -> Text:
    """Timings, tokens and the command's first line, for one step."""
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
    return Text.assemble((f"step {step.step:3d}", "dim"), f" model {step.model.seconds:5.1f}s {cmd} ",
                         (f"{step.prompt_tokens:6d} tok{cache}{summary}{wait}", "dim"), "  ", ("$", "bold"), " ", action)


def _check_note(check: dict) -> str:
    missing = check.get("missing") or []
    return f"check {check.get('verdict')}" + (f", added: {plain(', '.join(missing))}" if missing else "")


def swap_lines(step: StepRecord) -> list[Text]:
    """A summary that replaced earlier steps in the prompt from this step on, as one line saying which
    steps it covers and what its swap-time check said (the schedule records a job among the step's
    memory events when it is first used); a summary the check rejected, as one line saying why."""
    lines = []
    for event in step.memory:
        if event.get("kind") == "job" and event.get("cutoff"):
            covered = "step 0" if event["cutoff"] == 1 else f"steps 0-{event['cutoff'] - 1}"
            note = f", {_check_note(event['check'])}" if event.get("check") else ""
            lines.append(Text(f"memory: {covered} now a summary ({event.get('summary_tokens', 0)} tokens{note})", "magenta"))
    for check in step.memory:  # recorded when it was made; the job it rejected is never used
        if check.get("kind") == "summary_check" and check.get("summary_check") == "rejected":
            lines.append(Text(f"memory: summary {check.get('job')} rejected, not used: {plain(check.get('reason', ''))}", "yellow"))
    return lines


def command_output(step: StepRecord) -> str | None:
    """What the command printed, as the model was shown it (a long output already cut to its head and
    tail): the `<output>` part of the observation. None when no command ran (a reply, a format error)."""
    start, end = step.observation.find("<output>\n"), step.observation.rfind("\n</output>")
    if step.command is None or start < 0 or end < start:
        return None
    return step.observation[start + len("<output>\n"):end]


def output_block(step: StepRecord) -> Text | None:
    """The command's output to show under its step line: head and tail lines, dimmed, the number of
    lines left out between them, and the exit status when it is not 0."""
    output = command_output(step)
    if output is None:
        return None
    lines = plain(output).splitlines() or ["(no output)"]
    if len(lines) > OUTPUT_HEAD + OUTPUT_TAIL + 1:
        lines = lines[:OUTPUT_HEAD] + [f"[... {len(lines) - OUTPUT_HEAD - OUTPUT_TAIL} lines elided ...]"] + lines[-OUTPUT_TAIL:]
    if step.timed_out:
        lines.append("(stopped: timed out)")
    elif step.returncode:
        lines.append(f"(exit {step.returncode})")
    return Text("\n".join("    " + line for line in lines), "dim")


def print_step(step: StepRecord, quiet: bool = False) -> None:
    """A finished step: its line; unless `quiet`, a summary swapped in at it before that line and the
    command's output under it."""
    if not quiet:
        for line in swap_lines(step):
            console.print(line, no_wrap=True, overflow="ellipsis")
    console.print(step_line(step), no_wrap=True, overflow="ellipsis")
    block = None if quiet else output_block(step)
    if block is not None:
        console.print(block, no_wrap=True, overflow="ellipsis")


def run_table(outcome) -> Table:
    r = outcome.result
    table = Table(title="comem fix", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    style = "green" if r.status == "submitted" else "red"
    table.add_row("exit status", Text.assemble((r.status, style), f" ({plain(r.message)})" if r.message and r.status != "submitted" else ""))
    table.add_row("steps", str(len(r.steps)))
    table.add_row("tokens", f"{r.prompt_tokens:,} prompt / {r.completion_tokens:,} completion")
    mem = r.memory or {}
    main_memory = mem.get("memory_backend") == "main"  # the main model wrote the summaries: its bill too
    if main_memory:
        memory_cost = float(mem.get("memory_cost", 0.0))
        table.add_row("cost", f"${r.cost + memory_cost:.4f} (agent ${r.cost:.4f} + memory ${memory_cost:.4f})")
        table.add_row("memory tokens", f"{mem.get('memory_prompt_tokens', 0):,} prompt / "
                                       f"{mem.get('memory_completion_tokens', 0):,} completion")
    else:
        table.add_row("cost", f"${r.cost:.4f}")
    table.add_row("prompt cache", summary_line(r.cached_tokens, r.prompt_tokens, r.cache_saved))
    table.add_row("wall time", f"{r.wall_s:.1f} s")
    if mem.get("arm") not in (None, "full", "mask"):
        made = f"{mem.get('summaries', 0)} summaries, {mem.get('memory_s', 0):.1f} s of memory-model time"
        table.add_row("memory", f"main model: {made}" if main_memory else made)
        hidden = mem.get("hidden_fraction")  # None: no memory-model time to hide (e.g. no summary launched)
        table.add_row("hidden", "-" if hidden is None else f"{100 * hidden:.0f}% of memory time behind agent work")
        table.add_row("waits", f"{mem.get('waits', 0)} ({mem.get('wait_s', 0):.1f} s)")
        checks = mem.get("summary_checks") or {}
        if any(checks.values()):
            table.add_row("checks", ", ".join(f"{checks.get(v, 0)} {v}" for v in ("passed", "patched", "rejected"))
                          + " (summaries checked against the agent's later steps)")
    elif mem.get("arm"):
        table.add_row("memory", mem["arm"])
    patch_lines = r.patch.count("\n")
    table.add_row("patch", Text(f"{patch_lines} lines -> {plain(str(Path(outcome.run_dir) / 'patch.diff'))}"))
    for note in getattr(r, "patch_notes", None) or []:
        table.add_row("patch note", Text(plain(note), "yellow"))
    left_out = getattr(outcome, "left_out", None) or []
    if left_out:
        shown = ", ".join(plain(name) for name in left_out[:8]) + (f" (+{len(left_out) - 8} more)" if len(left_out) > 8 else "")
        table.add_row("left out", Text(f"{shown}: untracked files that look like secrets, not copied "
                                       "(--include-untracked-secrets to copy them)", "yellow"))
    if outcome.branch:
        table.add_row("branch", Text.assemble((plain(outcome.branch), "cyan"), f" ({outcome.commit[:10]})"))
    elif outcome.apply_error:
        table.add_row("branch", Text.assemble(("not created", "red"), f": {plain(outcome.apply_error)}"))
    else:
        table.add_row("branch", "none (--no-apply or empty patch)")
    table.add_row("run dir", Text(plain(str(outcome.run_dir))))
    return table
