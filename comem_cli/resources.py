"""Where the files shipped next to the code live: prompts/, sandbox/, examples/.

In a source checkout (editable install) they sit at the repository root; in a wheel they are
packaged inside comem_cli/ (see pyproject's force-include).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"comem resource folder {name!r} is missing from the installation")
