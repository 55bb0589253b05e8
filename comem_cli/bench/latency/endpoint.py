"""`--serving endpoint`: real OpenAI-compatible servers (`--api-base` / `--memory-api-base`).

Sent the real prompts with `max_tokens` = the recorded reply length (and vLLM's `min_tokens` /
`ignore_eos` to force it), through litellm. Real threads, the real `MemoryContext`, wall-clock
time (bench/latency/realtime.py drives it); pre-warm requests go through the pipeline's own hook
with `comem_cli.models.LitellmModel.prewarm`. Another serving backend plugs in the same way: an
object with `generate(messages, n_tokens)` for the main and the memory server.
"""

from __future__ import annotations

from typing import Any

from comem_cli.errors import UserError


class EndpointModel:
    """An OpenAI-compatible server through litellm; the reply length is forced to the recorded one."""

    def __init__(self, model: str, api_base: str | None):
        from comem_cli.config import ModelConfig

        self.config = ModelConfig(name=model if "/" in model else f"openai/{model}", api_base=api_base)
        try:  # first-call overheads (imports, connections) off the clock; an unreachable server is bad input
            self.generate([{"role": "user", "content": "ping"}], 1)
        except Exception as e:
            from comem_cli.models import short

            raise UserError(f"--serving endpoint: {self.config.name} at {api_base} does not answer: {short(e, 160)}") from None

    def generate(self, messages: list[dict[str, str]], n_tokens: int) -> None:
        from comem_cli.models import import_litellm

        litellm = import_litellm()
        kwargs: dict[str, Any] = {"api_base": self.config.api_base, "api_key": "none"} if self.config.api_base else {}
        litellm.completion(model=self.config.name, messages=messages, max_tokens=max(n_tokens, 1), temperature=0.0,
                           timeout=self.config.timeout_s, num_retries=0,
                           extra_body={"min_tokens": max(n_tokens, 1), "ignore_eos": True}, **kwargs)
