"""Prompt caching the user can see: cache markers, cached-token counts, and what the cache saved.

comem's views only grow at their end between two summary swaps, so a provider's prompt cache can
serve every prefix it saw before. Some providers cache on their own (OpenAI, DeepSeek, vLLM...);
Anthropic-style providers only cache what the request marks with `cache_control` breakpoints, so
`mark_cache_control` puts one on the system prompt and one on the newest message (the whole view
then becomes the next call's cached prefix).

Cached-token counts are read from the response usage in the two shapes providers report:
OpenAI's `prompt_tokens_details.cached_tokens` and Anthropic's `cache_read_input_tokens`. The
saving is priced as litellm prices cache reads: (input price - cache-read price) per cached token.
"""

from __future__ import annotations

from typing import Any

EPHEMERAL = {"type": "ephemeral"}
_MARKED_PROVIDERS = ("anthropic", "bedrock", "vertex_ai", "vertex_ai_beta", "databricks")


def needs_markers(model: str) -> bool:
    """Whether `model`'s provider caches only what `cache_control` marks (Anthropic's Claude models)."""
    name = model.lower()
    provider = name.split("/", 1)[0] if "/" in name else ""
    if provider == "anthropic":
        return True
    return provider in _MARKED_PROVIDERS and "claude" in name


def _with_marker(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        parts = [{"type": "text", "text": content, "cache_control": EPHEMERAL}]
    elif isinstance(content, list) and content:
        parts = [dict(p) for p in content]
        parts[-1] = {**parts[-1], "cache_control": EPHEMERAL}
    else:
        return message
    return {**message, "content": parts}


def mark_cache_control(messages: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """A copy of `messages` with cache breakpoints on the system prompt and the last message, for
    providers that need them; `messages` itself unchanged (other providers get it as it is)."""
    if not messages or not needs_markers(model):
        return messages
    marked = list(messages)
    for i in {0, len(marked) - 1}:
        if i == 0 and marked[0].get("role") != "system" and len(marked) > 1:
            continue
        marked[i] = _with_marker(marked[i])
    return marked


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def cached_tokens(usage: Any) -> int:
    """Prompt tokens served from the provider's cache, from a response's usage (0 when not reported)."""
    details = _get(usage, "prompt_tokens_details")
    for value in (_get(details, "cached_tokens"), _get(usage, "cache_read_input_tokens")):
        if isinstance(value, (int, float)) and value > 0:
            return int(value)
    return 0


def cache_saving(litellm, model: str, tokens: int) -> float:
    """Dollars the cache saved on `tokens` cached prompt tokens: (input - cache-read price) each.

    0 when litellm does not know the model's prices (the same rule as the cost: unknown is free).
    """
    if tokens <= 0:
        return 0.0
    try:
        info = litellm.get_model_info(model)
    except Exception:
        return 0.0
    full = info.get("input_cost_per_token") or 0.0
    read = info.get("cache_read_input_token_cost")
    if read is None:
        read = full  # no cache price known: no saving claimed
    return max(float(full) - float(read), 0.0) * tokens


def fraction(cached: int, prompt: int) -> float:
    return cached / prompt if prompt > 0 else 0.0


def summary_line(cached: int, prompt: int, saved: float) -> str:
    """`42% of 12,345 prompt tokens cached, $0.0123 saved` (the end-of-run table's row)."""
    return f"{100 * fraction(cached, prompt):.0f}% of {prompt:,} prompt tokens cached, ${saved:.4f} saved"


def cache_cell(cached: int, prompt: int, saved: float) -> str:
    """`cached 87% -$0.0012` (a step line's cache figure)."""
    return f"cached {100 * fraction(cached, prompt):.0f}%" + (f" -${saved:.4f}" if saved else "")
