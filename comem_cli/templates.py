"""Prompt templates (Jinja2 files under prompts/), rendered with strict undefined variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from comem_cli.resources import resource_dir


@lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("prompts"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(name: str, **context: Any) -> str:
    return _env().get_template(name).render(**context).strip()
