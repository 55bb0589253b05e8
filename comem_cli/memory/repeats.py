"""The rule every local memory engine decodes with: a reply never repeats an n-token sequence of
its own (I/O-free; the engines' adapters are `hf.NoRepeatInReply` and `vllm_guard`).

Small models loop inside a list ("qop_int, qop_int, ...") until the token cap and never write the
sections after it. Unlike transformers' `no_repeat_ngram_size`, which counts the prompt too, only
the reply is looked at: a summary may still copy any name, path or line of the transcript.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["REPLY_NGRAM", "ReplyRepeats", "repeated_ngrams"]

REPLY_NGRAM = 8  # long enough for the headings' and list items' own patterns ("\n- step 12: `")


class ReplyRepeats:
    """The n-token sequences one reply has written, indexed as the reply grows."""

    def __init__(self, n: int = REPLY_NGRAM):
        if n < 2:
            raise ValueError(f"a reply's repeats are counted over at least 2 tokens, got n={n}")
        self.n = n
        self._follows: dict[tuple[int, ...], set[int]] = {}  # (n-1 tokens) -> the tokens that followed them
        self._indexed = 0  # how much of the reply is indexed

    def banned(self, reply: Sequence[int]) -> set[int]:
        """The next tokens that would repeat an n-token sequence of `reply` (the reply so far: the
        same sequence, longer by the tokens generated since the last call)."""
        n = self.n
        for end in range(max(n, self._indexed + 1), len(reply) + 1):
            self._follows.setdefault(tuple(reply[end - n:end - 1]), set()).add(reply[end - 1])
        self._indexed = len(reply)
        if len(reply) < n - 1:
            return set()
        return self._follows.get(tuple(reply[len(reply) - n + 1:]), set())


def repeated_ngrams(tokens: Sequence[int], n: int = REPLY_NGRAM) -> int:
    """How many n-token sequences of `tokens` occurred earlier in them (0 for a reply decoded under
    the rule)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))
