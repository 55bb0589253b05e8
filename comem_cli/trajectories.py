"""One reader for every recorded trajectory format, producing one plain model for training and reports.

Formats read:

- **comem run directories**: a folder holding `trajectory.jsonl` (one `rollouts.StepRecord` per
  line) and `meta.json` (`prompts.system`, `prompts.task`, `status`). A benchmark output may hold
  many run directories at any depth; `discover` walks it. A truncated or corrupt line (the last
  line of a killed run) is skipped by `rollouts.read_steps`.
  `resolved` is taken from `meta.json`'s `resolved` key when it is a boolean, otherwise from a
  `report.json` or `eval.json` in the run directory holding a boolean `resolved` (at the top
  level, or under the run's `instance_id`, or under the single key of a one-entry object, which
  is the SWE-bench harness layout). Otherwise it is unknown (None).
- **mini-swe-agent trajectories** (`*.traj.json`, format 1 / 1.1): `messages` is the OpenAI-format
  conversation: the system prompt, the task (first user message), then each assistant reply
  followed by the user message(s) that answered it (the observation). Every assistant reply is one
  step; its action is its single ```bash (or ```mswea_bash_command) block, None when it has zero
  or several (a format error, answered by an error message which is that step's observation).
  `exit_status` is `info.exit_status`; `resolved` comes from the sibling
  `<instance>.report.json` (or a `report.json` in the same folder), read as above.

Any of these files may be gzip-compressed (`trajectory.jsonl.gz`, `meta.json.gz`, `*.traj.json.gz`,
`*.report.json.gz`): the bundled sample (`resources.bundled_trajectories()`) is stored that way.

Files that cannot be read (bad JSON, missing keys, no steps) raise `ValueError` with a one-line
reason in `load_trajectory`; `discover` collects them as skipped and never crashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel

from comem_cli.rollouts import GZ, META, TRAJECTORY, read_run, read_text, stored

MINI_SUFFIX = ".traj.json"
MINI_SUFFIXES = (MINI_SUFFIX, MINI_SUFFIX + GZ)
EVAL_FILES = ("report.json", "eval.json")  # evaluation results next to a comem run's trajectory
_MINI_BLOCK = re.compile(r"```(?:bash|mswea_bash_command)[ \t]*\n(.*?)\n?```", re.DOTALL)


class Step(BaseModel):
    """One step of a trajectory: the model's reply, the command parsed from it, what it was shown next."""

    response: str
    action: str | None = None  # None when the reply had a format error: never a training target
    observation: str = ""


class Trajectory(BaseModel):
    id: str  # unique within one `discover` call (a run dir name or an instance id)
    source: Literal["comem", "mini-swe-agent"]
    system: str
    task: str
    steps: list[Step]
    resolved: bool | None = None
    exit_status: str | None = None
    path: str
    task_id: str = ""  # what train/eval splits group by: the instance id, else a hash of the task text


def _task_hash(task: str) -> str:
    return "task-" + hashlib.sha1(task.encode("utf-8", "replace")).hexdigest()[:12]


def _resolved_from(data: Any, key: str | None = None) -> bool | None:
    """A `resolved` boolean from an evaluation report: top level, under `key`, or under a single key."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("resolved"), bool):
        return data["resolved"]
    if key is not None and isinstance(data.get(key), dict) and isinstance(data[key].get("resolved"), bool):
        return data[key]["resolved"]
    if len(data) == 1:
        (only,) = data.values()
        if isinstance(only, dict) and isinstance(only.get("resolved"), bool):
            return only["resolved"]
    return None


def _resolved_from_files(candidates: Iterable[Path], key: str | None) -> bool | None:
    for given in candidates:
        path = stored(given)
        if path is None:
            continue
        try:
            value = _resolved_from(json.loads(read_text(path)), key)
        except (OSError, ValueError, EOFError):
            continue  # an unreadable report leaves `resolved` unknown; the trajectory still counts
        if value is not None:
            return value
    return None


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise ValueError(f"message content of type {type(content).__name__}")


def mini_action(reply: str) -> str | None:
    """The action of a mini-swe-agent reply: its single bash block, or None (a format error)."""
    blocks = _MINI_BLOCK.findall(reply)
    if len(blocks) != 1 or not blocks[0].strip():
        return None
    return blocks[0].strip()


def load_comem_run(run_dir: Path) -> Trajectory:
    run_dir = Path(run_dir)
    try:
        run = read_run(run_dir)
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from None
    prompts = run.meta.get("prompts")
    if stored(run_dir / META) is None:
        raise ValueError(f"no {META} (the system prompt and task are needed)")
    if not isinstance(prompts, dict) or not isinstance(prompts.get("system"), str) or not isinstance(prompts.get("task"), str):
        raise ValueError(f"{META} has no prompts.system / prompts.task")
    if not run.steps:
        detail = f" ({run.skipped_lines} unreadable lines)" if run.skipped_lines else ""
        raise ValueError(f"no steps in {TRAJECTORY}{detail}")
    steps = [Step(response=s.response, action=s.action, observation=s.observation) for s in run.steps]
    meta = run.meta
    instance = meta.get("instance_id") if isinstance(meta.get("instance_id"), str) else None
    resolved = meta.get("resolved") if isinstance(meta.get("resolved"), bool) else None
    if resolved is None:
        resolved = _resolved_from_files((run_dir / name for name in EVAL_FILES), instance)
    status = meta.get("status")
    return Trajectory(
        id=run_dir.name, source="comem", system=prompts["system"], task=prompts["task"], steps=steps,
        resolved=resolved, exit_status=status if isinstance(status, str) else None, path=str(run_dir),
        task_id=instance or _task_hash(prompts["task"]),
    )


def load_mini_swe_agent(path: Path) -> Trajectory:
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except (OSError, EOFError) as e:  # EOFError: a truncated .gz
        raise ValueError(f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    except ValueError as e:
        raise ValueError(f"not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(data, dict):
        raise ValueError("not a mini-swe-agent trajectory (top level is not an object)")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("no `messages` list")
    system, task, steps = "", None, []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"message {i} has no role")
        role, content = message["role"], _text(message.get("content"))
        if role == "system" and task is None:
            system = content
        elif task is None:
            if role == "user":
                task = content
            # anything else before the task (none in practice) is not part of a step
        elif role == "assistant":
            steps.append(Step(response=content, action=mini_action(content), observation=""))
        elif steps:  # user / tool messages answer the last reply
            previous = steps[-1]
            previous.observation = f"{previous.observation}\n{content}" if previous.observation else content
    if task is None:
        raise ValueError("no user message (the task)")
    if not steps:
        raise ValueError("no assistant steps")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    name = next((path.name[: -len(suffix)] for suffix in MINI_SUFFIXES if path.name.endswith(suffix)), path.stem)
    instance = data.get("instance_id") if isinstance(data.get("instance_id"), str) else name
    resolved = _resolved_from_files([path.with_name(f"{name}.report.json"), path.with_name("report.json")], instance)
    status = info.get("exit_status")
    return Trajectory(
        id=instance, source="mini-swe-agent", system=system, task=task, steps=steps, resolved=resolved,
        exit_status=status if isinstance(status, str) else None, path=str(path), task_id=instance,
    )


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    """A comem run directory (or its trajectory.jsonl) or a mini-swe-agent `.traj.json` (either maybe gzipped).

    Raises ValueError with a one-line reason when the path is not a readable trajectory.
    """
    path = Path(path)
    if path.is_dir():
        if stored(path / TRAJECTORY) is not None:
            return load_comem_run(path)
        raise ValueError(f"not a comem run directory (no {TRAJECTORY})")
    if path.name in (TRAJECTORY, TRAJECTORY + GZ):
        return load_comem_run(path.parent)
    if path.is_file():
        return load_mini_swe_agent(path)
    raise ValueError("does not exist")


def _candidates(root: Path) -> list[Path]:
    """comem run dirs and *.traj.json(.gz) files under `root` (sorted; hidden folders are not entered)."""
    if stored(root / TRAJECTORY) is not None:
        return [root]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if TRAJECTORY in files or TRAJECTORY + GZ in files:
            found.append(Path(folder))
            dirs[:] = []  # a run directory does not hold other runs
            continue
        found.extend(Path(folder) / f for f in sorted(files) if f.endswith(MINI_SUFFIXES))
    return found


def discover(paths: Iterable[str | os.PathLike]) -> tuple[list[Trajectory], list[tuple[Path, str]]]:
    """Every trajectory under `paths` (files or folders, walked recursively).

    Returns (loaded, skipped): skipped pairs a path with a one-line reason. Never raises for bad
    data. A path given twice is read once; ids are made unique by suffixing `-2`, `-3`...
    """
    loaded: list[Trajectory] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    ids: dict[str, int] = {}
    for given in paths:
        given = Path(given)
        if not given.exists():
            skipped.append((given, "does not exist"))
            continue
        candidates = _candidates(given) if given.is_dir() else [given]
        if not candidates:
            skipped.append((given, f"no trajectories found (no {TRAJECTORY} run folders or *{MINI_SUFFIX} files)"))
            continue
        for candidate in candidates:
            key = candidate.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                trajectory = load_trajectory(candidate)
            except ValueError as e:
                skipped.append((candidate, str(e).splitlines()[0] if str(e) else "unreadable"))
                continue
            except Exception as e:  # defensive: bad data must never end a training run
                skipped.append((candidate, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")))
                continue
            count = ids.get(trajectory.id, 0) + 1
            ids[trajectory.id] = count
            if count > 1:
                trajectory.id = f"{trajectory.id}-{count}"
            loaded.append(trajectory)
    return loaded, skipped
