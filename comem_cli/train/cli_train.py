"""`comem train-memory`: recorded runs -> samples (docs/design.md, section 6) -> (SFT warm-up) -> GRPO -> a checkpoint.

The checkpoint (`OUTPUT/final`, a plain Hugging Face directory, LoRA merged) is what
`--memory-model OUTPUT/final` loads in every memory backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comem_cli.errors import UserError


def prompt_bound(base_model: str | None, max_prompt_tokens: int | None, max_summary_tokens: int):
    """(most prompt tokens, token counter): --max-prompt-tokens, else the base model's context minus
    the summary's length; the base model's tokenizer counts when it loads, else ~4 characters a token."""
    from comem_cli.views import estimate_tokens

    context, count = None, estimate_tokens
    if base_model:
        try:
            from transformers import AutoConfig, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(base_model)
            count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
            config = AutoConfig.from_pretrained(base_model)
            context = getattr(config, "max_position_embeddings", None) or getattr(config, "max_seq_len", None)
        except Exception:  # not loadable here (e.g. a hub id offline): the estimate and the flag only
            pass
    if max_prompt_tokens is None and context:
        max_prompt_tokens = int(context) - max_summary_tokens - 16
        if max_prompt_tokens < 64:
            raise UserError(f"--max-summary-tokens {max_summary_tokens} leaves no room for a prompt in "
                            f"{base_model}'s context of {context} tokens")
    return max_prompt_tokens, count


def load_samples(rollouts: list[Path] | None, *, k: int, only_resolved: bool, max_history_tokens: int | None,
                 max_per_trajectory: int | None, eval_fraction: float, seed: int, console,
                 max_prompt_tokens: int | None = None, count_tokens=None):
    """Samples from `rollouts` (files or folders); none given: the bundled sample of real runs."""
    from comem_cli.resources import bundled_trajectories
    from comem_cli.train.samples import build_samples, split_by_task
    from comem_cli.trajectories import discover

    rollouts = list(rollouts or []) or [bundled_trajectories()]
    trajectories, skipped = discover(rollouts)
    console.print(f"read {len(trajectories)} trajectories" + (f", skipped {len(skipped)}" if skipped else ""))
    for path, reason in skipped[:10]:
        console.print(f"  [yellow]skipped[/yellow] {path}: {reason}")
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more")
    if only_resolved:
        trajectories = [t for t in trajectories if t.resolved]
        console.print(f"{len(trajectories)} of them resolved their task (--only-resolved)")
    cuts: dict[str, int] = {}
    extra = {"count_tokens": count_tokens} if count_tokens else {}
    samples = build_samples(trajectories, k, max_history_tokens=max_history_tokens, seed=seed,
                            max_per_trajectory=max_per_trajectory, max_prompt_tokens=max_prompt_tokens, report=cuts, **extra)
    if max_prompt_tokens is not None:
        console.print(f"prompts bounded to {max_prompt_tokens:,} tokens: {cuts['task_cut']} samples with the task cut, "
                      f"{cuts['history_capped']} with old steps dropped, {cuts['too_long']} left out (too long)")
    if not samples:
        raise UserError("no usable training samples in " + ", ".join(map(str, rollouts))
                        + (" (--only-resolved left none)" if only_resolved else ""))
    train, evaluation = split_by_task(samples, eval_fraction=eval_fraction, seed=seed)
    eval_tasks = {s.task_id for s in evaluation}
    train_trajectories = [t for t in trajectories if t.task_id not in eval_tasks]
    return samples, train, evaluation, train_trajectories


def stats_table(samples, train, evaluation):
    from rich.table import Table

    from comem_cli.train.samples import sample_stats

    stats = sample_stats(samples)
    table = Table(title="train-memory samples", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("samples", f"{stats['samples']} ({len(train)} train / {len(evaluation)} eval, split by task)")
    table.add_row("trajectories / tasks", f"{stats['trajectories']} / {stats['tasks']}")
    table.add_row("by lag", ", ".join(f"j={lag}: {n}" for lag, n in stats["by_lag"].items()))
    table.add_row("from resolved runs", str(stats["from_resolved_runs"]))
    for key in ("history_steps", "history_tokens", "raw_tail_tokens"):
        v = stats[key]
        table.add_row(key.replace("_", " "), ", ".join(f"{name} {value:,.0f}" for name, value in v.items()))
    table.add_row("history capped", str(stats["history_capped"]))
    table.add_row("task cut", str(stats.get("task_cut", 0)))
    table.add_row("target programs", ", ".join(f"{p} {n}" for p, n in stats["target_programs"].items()))
    return table


def train_memory_command(o: dict[str, Any]) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from comem_cli.train.policy import PolicyError
    from comem_cli.ui import console

    if o["stage"] not in (None, "sft", "grpo"):
        raise UserError(f"--stage must be sft or grpo (got {o['stage']!r})")
    max_prompt_tokens, count_tokens = prompt_bound(o["base_model"], o.get("max_prompt_tokens"), o["max_summary_tokens"])
    samples, train, evaluation, train_trajectories = load_samples(
        o["rollouts"], k=o["k"], only_resolved=o["only_resolved"], max_history_tokens=o["max_history_tokens"],
        max_per_trajectory=o["max_per_trajectory"], eval_fraction=o["eval_fraction"], seed=o["seed"], console=console,
        max_prompt_tokens=max_prompt_tokens, count_tokens=count_tokens)
    console.print(stats_table(samples, train, evaluation))
    if o["dry_run"]:
        return 0
    if not o["base_model"]:
        raise UserError("--base-model is required to train (a hub id or a local model directory)")
    from comem_cli.train.sft import recorded_summaries

    recorded = [] if o["teacher"] else recorded_summaries(train_trajectories)
    if recorded:
        console.print(f"{len(recorded)} summaries recorded in comem runs (training tasks only) for the SFT warm-up")
    stages = [o["stage"]] if o["stage"] else (["sft"] if o["teacher"] or recorded else []) + ["grpo"]
    if "sft" in stages and not (o["teacher"] or recorded):
        raise UserError("--stage sft needs --teacher MODEL or comem runs with recorded summaries")
    if "grpo" in stages and not o["policy_model"]:
        raise UserError("GRPO needs --policy-model (a litellm model name, with --policy-api-base, or a local model directory)")
    output = Path(o["output"])
    base = o["base_model"]
    if o.get("threads"):
        import torch

        torch.set_num_threads(o["threads"])

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeRemainingColumn(), console=console)
    try:
        with progress:
            if "sft" in stages:
                from comem_cli.train.sft import teacher_summaries, train_sft

                pairs = recorded
                if o["teacher"]:
                    task = progress.add_task("teacher summaries", total=len(train))
                    pairs = teacher_summaries(train, o["teacher"], o["teacher_api_base"], max_tokens=o["max_summary_tokens"],
                                              on_progress=lambda done, total: progress.update(task, completed=done, total=total))
                task = progress.add_task("SFT", total=o["steps"])
                report = train_sft(pairs, base_model=base, output_dir=output / "sft", lr=max(o["lr"], 1e-5),
                                   steps=o["steps"], lora=o["lora"], save_every=o["save_every"], resume=o["resume"],
                                   seed=o["seed"], on_log=lambda r: progress.update(task, completed=r.get("step", 0),
                                                                                     description=f"SFT loss {r.get('loss', 0):.3f}"))
                base = str(output / "sft" / "final")
            if "grpo" in stages:
                from comem_cli.train.grpo import train_grpo
                from comem_cli.train.policy import make_policy

                policy = make_policy(o["policy_model"], o["policy_api_base"])
                task = progress.add_task("GRPO", total=o["steps"])

                def on_log(r: dict) -> None:
                    progress.update(task, completed=r.get("step", 0),
                                    description=f"GRPO reward {r.get('reward_mean', 0):.3f} ± {r.get('reward_std', 0):.3f}")

                report = train_grpo(train, evaluation, base_model=base, policy=policy, output_dir=output,
                                    group_size=o["group_size"], lr=o["lr"], kl=o["kl"],
                                    max_summary_tokens=o["max_summary_tokens"], steps=o["steps"], lora=o["lora"],
                                    save_every=o["save_every"], resume=o["resume"], seed=o["seed"], on_log=on_log)
    except PolicyError as e:
        raise UserError(f"training stopped, the previous checkpoint is intact: {e}") from None
    except ImportError as e:
        raise UserError(f"training needs the train extra ({e.name or e} is missing): pip install 'comem[train]'") from None
    console.print(f"[bold]checkpoint[/bold] {output / 'final'}  (use: --memory-model {output / 'final'})")
    before, after = report.get("eval_reward_before"), report.get("eval_reward_after")
    if before is not None and after is not None:
        console.print(f"held-out reward: {before:.3f} -> {after:.3f}")
    console.print(f"report {output / 'train_report.json'} · curve {output / 'reward_curve.png'}")
    return 0
