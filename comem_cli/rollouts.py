"""The trajectory format: what every step records, written step by step, read back for bench/train/report.

A run directory holds:
- `trajectory.jsonl`: one `StepRecord` per line, appended and flushed (fsync) as each step ends, so
  a killed run keeps every finished step;
- `meta.json`: the run's config, prompts (system + task, enough to rebuild every view), exit status
  and totals, written atomically at start and at the end;
- `patch.diff`: the final patch.

Recorded runs may also be stored gzip-compressed (`trajectory.jsonl.gz`, `meta.json.gz`); every
reader here takes either (`open_text`, `stored`).

Timestamps are wall-clock seconds since the epoch (time.time()), so timelines from several
threads and processes line up.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field, ValidationError

TRAJECTORY = "trajectory.jsonl"
META = "meta.json"
PATCH = "patch.diff"
GZ = ".gz"


def open_text(path: str | os.PathLike) -> IO[str]:
    """A text file for reading, gunzipped on the fly when its name ends in .gz (bad bytes replaced)."""
    if str(path).endswith(GZ):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_text(path: str | os.PathLike) -> str:
    """The whole text of a plain or gzip-compressed file. Raises OSError (bad gzip data: BadGzipFile)."""
    with open_text(path) as f:
        return f.read()


def stored(path: str | os.PathLike) -> Path | None:
    """`path` if it is a file, else its compressed twin `path.gz` if that is one, else None."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + GZ)):
        if candidate.is_file():
            return candidate
    return None


class Span(BaseModel):
    """A wall-clock interval."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


class ViewInfo(BaseModel):
    """Enough to rebuild the view that was sent: summary cut-off, raw tail range, masked steps."""

    summary_cutoff: int | None = None  # steps 0..cutoff-1 are covered by this summary
    raw_start: int = 0  # steps raw_start..raw_end-1 were shown verbatim
    raw_end: int = 0
    masked: list[int] = Field(default_factory=list)  # steps whose observation was replaced by a placeholder
    n_messages: int = 0
    prompt_tokens: int = 0  # as counted by the provider when known, else estimated


class StepRecord(BaseModel):
    """One main-model call and the command it chose (docs/design.md, section 5)."""

    step: int
    view: ViewInfo
    response: str
    action: str | None = None  # the bash command; None when the reply had a format error
    format_error: str | None = None
    observation: str = ""  # the message the model was shown next (output already cut head + tail)
    returncode: int | None = None
    timed_out: bool = False
    output_chars: int = 0  # length of the raw command output before cutting
    model: Span
    command: Span | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    memory: list[dict[str, Any]] = Field(default_factory=list)  # memory jobs / waits / events seen at this step
    cached_tokens: int = 0  # prompt tokens the provider served from its cache
    cache_saved: float = 0.0  # dollars the cache saved at this step
    decision: dict[str, Any] | None = None  # `fix --confirm`: what the user chose before the command ran


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see either the old or the new content, never half of it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


class RunWriter:
    """Appends steps to trajectory.jsonl (flushed and fsynced per step) and keeps meta.json current."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / TRAJECTORY, "a", encoding="utf-8")

    def append(self, step: StepRecord) -> None:
        self._file.write(step.model_dump_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.run_dir / META, meta)

    def write_patch(self, patch: str) -> None:
        """The patch's bytes exactly (the text is decoded with surrogateescape: see Sandbox.diff)."""
        atomic_write_bytes(self.run_dir / PATCH, patch.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self._file.close()


class RunRecord(BaseModel):
    """A run read back from disk."""

    path: Path
    meta: dict[str, Any]
    steps: list[StepRecord]
    skipped_lines: int = 0  # corrupt or partial lines (e.g. the last line of a killed run)


def read_steps(path: Path) -> tuple[list[StepRecord], int]:
    """Steps of a trajectory.jsonl, skipping (and counting) lines that do not parse."""
    steps, skipped = [], 0
    with open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                steps.append(StepRecord.model_validate_json(line))
            except (ValidationError, ValueError):
                skipped += 1
    return steps, skipped


def read_run(run_dir: Path) -> RunRecord:
    """Read a comem run directory (plain or gzipped files). Raises ValueError with a one-line reason if it is not one."""
    run_dir = Path(run_dir)
    traj = stored(run_dir / TRAJECTORY)
    if traj is None:
        raise ValueError(f"{run_dir}: no {TRAJECTORY}")
    meta_file = stored(run_dir / META)
    try:
        meta = json.loads(read_text(meta_file)) if meta_file is not None else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file}: not valid JSON ({e.msg})") from None
    try:
        steps, skipped = read_steps(traj)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # a damaged .gz
        raise ValueError(f"{traj}: unreadable ({e})") from None
    return RunRecord(path=run_dir, meta=meta, steps=steps, skipped_lines=skipped)
