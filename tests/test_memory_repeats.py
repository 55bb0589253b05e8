"""The no-repeat rule of the local memory engines (`memory/repeats.py`), against its definition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comem_cli.memory.repeats import ReplyRepeats, repeated_ngrams


def _by_definition(reply: list[int], n: int) -> set[int]:
    """The tokens t for which reply + [t] ends with an n-token sequence that occurred earlier in it."""
    if len(reply) < n - 1:
        return set()
    tail = reply[len(reply) - n + 1:]
    return {reply[i + n - 1] for i in range(len(reply) - n + 1) if reply[i:i + n - 1] == tail}


@settings(max_examples=300, deadline=None)
@given(reply=st.lists(st.integers(0, 3), max_size=40), n=st.integers(2, 5), chunk=st.integers(1, 6))
def test_banned_is_the_definition_however_the_reply_grows(reply, n, chunk):
    repeats = ReplyRepeats(n)
    for end in list(range(0, len(reply), chunk)) + [len(reply)]:  # engines call it once per token or per chunk
        assert repeats.banned(reply[:end]) == _by_definition(reply[:end], n)


def test_a_list_that_loops_is_stopped_and_a_new_item_is_not():
    a, comma, b = 5, 1, 6
    repeats = ReplyRepeats(3)
    assert repeats.banned([a, comma, b, comma]) == set()
    assert repeats.banned([a, comma, b, comma, a, comma]) == {b}  # "a , b" again: the loop; any other item may come
    with pytest.raises(ValueError):
        ReplyRepeats(1)


def test_repeated_ngrams_counts_sequences_seen_before():
    assert repeated_ngrams([1, 2, 1, 2, 1], 2) == 2  # "1 2" and "2 1" come back once each
    assert repeated_ngrams([1, 2, 3, 4], 2) == 0 and repeated_ngrams([1], 2) == 0
