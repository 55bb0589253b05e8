"""The no-repeat rule (`memory.repeats`) inside the vLLM engine: a logits processor the engine
loads at start (`VLLMBackend` names it in `logits_processors`) and applies to the requests whose
sampling parameters ask for it (`extra_args={"no_repeat_in_reply": n}`).

Imported by the engine, in its own process; importing it imports vLLM.
"""

from __future__ import annotations

from typing import Any, Callable

from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from comem_cli.memory.repeats import ReplyRepeats

EXTRA_ARG = "no_repeat_in_reply"
QUALNAME = f"{__name__}:NoRepeatInReply"  # how the engine's arguments name it


class NoRepeatInReply(AdapterLogitsProcessor):
    """One `ReplyRepeats` per request that asks for it; its banned next tokens get -inf."""

    def is_argmax_invariant(self) -> bool:
        return False  # it changes greedy decoding: that is its job

    def new_req_logits_processor(self, params: Any) -> Callable[[list[int], Any], Any] | None:
        n = (params.extra_args or {}).get(EXTRA_ARG)
        if not n:
            return None
        repeats = ReplyRepeats(int(n))

        def ban(output_ids: list[int], logits: Any) -> Any:
            banned = repeats.banned(output_ids)
            if banned:
                logits[list(banned)] = float("-inf")
            return logits

        return ban
