"""`--serving endpoint`: real OpenAI-compatible servers (`--api-base` / `--memory-api-base`).

Sent the real prompts with `max_tokens` = the recorded reply length (and vLLM's `min_tokens` /
`ignore_eos` to force it), through comem's one LLM call helper (comem_cli/llm.py). Real threads, the real `MemoryContext`, wall-clock
time (latency/realtime.py drives it); pre-warm requests go through the pipeline's own hook
with `comem_cli.models.LitellmModel.prewarm`. Another serving backend plugs in the same way: an
object with `generate(messages, n_tokens)` for the main and the memory server.
"""

from __future__ import annotations

from comem_cli.errors import UserError


class EndpointModel:
    """An OpenAI-compatible server through litellm; the reply length is forced to the recorded one."""

    def __init__(self, model: str, api_base: str | None):
        from comem_cli.config import ModelConfig

        self.config = ModelConfig(name=model if "/" in model else f"openai/{model}", api_base=api_base)
        from comem_cli.llm import CallFailed

        try:  # first-call overheads (imports, connections) off the clock; an unreachable server is bad input
            self.generate([{"role": "user", "content": "ping"}], 1)
        except CallFailed as e:
            raise UserError(f"--serving endpoint: {self.config.name} at {api_base} does not answer: {str(e)[:160]}") from None

    def generate(self, messages: list[dict[str, str]], n_tokens: int) -> None:
        from comem_cli.llm import complete

        n = max(n_tokens, 1)
        complete(messages, model=self.config.name, api_base=self.config.api_base, max_tokens=n,
                 timeout_s=self.config.timeout_s, extra_body={"min_tokens": n, "ignore_eos": True})
