"""Where the files shipped next to the code live: prompts/, sandbox/, examples/, and the bundled data.

In a source checkout (editable install) prompts/, sandbox/ and examples/ sit at the repository
root; in a wheel they are packaged inside comem_cli/ (see pyproject's force-include). The data
(comem_cli/data/) is part of the package in both.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"comem resource folder {name!r} is missing from the installation")


def bundled_trajectories() -> Path:
    """The sample of real recorded runs shipped with comem: 32 mini-swe-agent runs on SWE-bench
    Verified with their evaluation reports, gzipped (source and licence in its README and LICENSE).
    The default of `comem bench latency --trajectories` and `comem train-memory --rollouts`."""
    path = PACKAGE / "data" / "trajectories"
    if not path.is_dir():
        raise FileNotFoundError(f"comem's bundled trajectories are missing from the installation ({path})")
    return path


def default_trajectories() -> list[Path]:
    """The trajectories `comem bench latency` and `comem bench memory` replay without --trajectories
    (the one place that says so): the bundled sample of real mini-swe-agent runs."""
    return [bundled_trajectories()]
